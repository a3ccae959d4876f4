"""The `s2s-job` command: each command parses its options, builds a config and calls the library."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Literal, Optional

import typer

from s2s.config import DecodeConfig, ExportConfig, ModelConfig, TrainConfig, TranslateConfig
from s2s.glossary import read_glossary

# every option's default is the settings' own (s2s/config.py): read from them, never typed again here
MODEL, TRAIN, EXPORT, EVALUATE_DECODE = ModelConfig(), TrainConfig(), ExportConfig(), DecodeConfig()
TRANSLATE = TranslateConfig(input="", output="")  # only its defaults are read
# the decoding options evaluate and translate share, declared once (each command reads its own defaults)
NoRepeatNgramSize = Annotated[int, typer.Option(help="Never produce an n-gram of this size twice in one output (0: off).")]
RepetitionPenalty = Annotated[float, typer.Option(help="> 1: tokens already in the output become less likely (their log-prob times this).")]
MinDecodingLength = Annotated[int, typer.Option(help="No end of sentence before this many output tokens.")]
MaxLengthA = Annotated[float, typer.Option(help="Output limit per sentence: a x source tokens + b ...")]
MaxLengthB = Annotated[int, typer.Option(help="... and never more than --max-decoding-length.")]
SamplingTopk = Annotated[int, typer.Option(help="Sample each token among the k most likely (greedy only; 1: no sampling, 0: among all).")]
SamplingTopp = Annotated[float, typer.Option(help="... and among the fewest whose probabilities reach this.")]
SamplingTemperature = Annotated[float, typer.Option(help="... after dividing the log-probs by this.")]
SamplingSeed = Annotated[int, typer.Option(help="Seeds the draws, with each sentence's own text: the same seed gives the same sample.")]
TargetPrefix = Annotated[str, typer.Option(help="Every translation starts with this text (forced).")]
CheckRows = Annotated[bool, typer.Option(help="Check each translation (copy, unknown pieces, a loop, a length far outside the training data's) and decode a flagged one once more with a remedy.")]
GLOSSARY_HELP = ("A UTF-8 file of 'source term<TAB>target term' lines: where a text holds a source term (any case, whole words), "
                 "its translation must hold the target term (constrained beam search; --beam-size 2 or more).")
app = typer.Typer(add_completion=False, no_args_is_help=True, help="Train, export and run an LSTM translator on Ray.")


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"s2s-job {version('s2s-job')}")
        raise typer.Exit()


@app.callback()
def _options(version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                                   help="Print the version and exit.")] = False) -> None:
    """Train, export and run an LSTM translator on Ray."""


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def train(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="The run directory, where the run writes tokenizers, checkpoints and metrics: a folder or s3://...")] = TRAIN.run_dir,
    data: Annotated[str, typer.Option(help="Parquet or TSV (with header) of sentence pairs; a path or s3://...")] = TRAIN.data,
    source_column: Annotated[str, typer.Option(help="Column with source sentences.")] = TRAIN.source_column,
    target_column: Annotated[str, typer.Option(help="Column with target sentences.")] = TRAIN.target_column,
    workers: Annotated[int, typer.Option(help="Ray Train workers (DDP processes); more than the CPUs is allowed.")] = TRAIN.workers,
    cpus: Annotated[float, typer.Option(help="CPUs the workers share (0: all the Ray cluster has).")] = TRAIN.cpus,
    gpu: Annotated[Optional[bool], typer.Option("--gpu/--cpu", help="Force GPUs (nccl) or CPUs (gloo); default: GPUs when Ray has them.")] = TRAIN.use_gpu,
    src_vocab_size: Annotated[int, typer.Option(help="Source SentencePiece vocabulary.")] = MODEL.src_vocab_size,
    tgt_vocab_size: Annotated[int, typer.Option(help="Target SentencePiece vocabulary.")] = MODEL.tgt_vocab_size,
    emb_dim: Annotated[int, typer.Option(help="Embedding size.")] = MODEL.emb_dim,
    hidden_size: Annotated[int, typer.Option(help="LSTM hidden size (encoder output, decoder state).")] = MODEL.hidden_size,
    encoder_layers: Annotated[int, typer.Option(help="Bidirectional encoder layers.")] = MODEL.encoder_layers,
    decoder_layers: Annotated[int, typer.Option(help="Decoder LSTM layers.")] = MODEL.decoder_layers,
    dropout: Annotated[float, typer.Option(help="Dropout.")] = MODEL.dropout,
    batch_tokens: Annotated[int, typer.Option(help="Tokens per step, all workers together (rows x longer side, padded).")] = TRAIN.batch_tokens,
    lr: Annotated[float, typer.Option(help="Adam peak learning rate.")] = TRAIN.lr,
    warmup_steps: Annotated[int, typer.Option(help="Linear warm-up steps.")] = TRAIN.warmup_steps,
    label_smoothing: Annotated[float, typer.Option(help="Label smoothing.")] = TRAIN.label_smoothing,
    average_last: Annotated[float, typer.Option(help="Average the weights over this last share of the run (0: off).")] = TRAIN.average_last,
    epochs: Annotated[int, typer.Option(help="Maximum epochs (the time bound usually ends a run first).")] = TRAIN.epochs,
    max_steps: Annotated[int, typer.Option(help="Stop after this many steps (0: no bound).")] = TRAIN.max_steps,
    max_minutes: Annotated[float, typer.Option(help="Stop training after this many minutes (0: no bound).")] = TRAIN.max_minutes,
    patience: Annotated[int, typer.Option(help="Early stop after this many epochs without better valid BLEU (0: never).")] = TRAIN.patience,
    log_every: Annotated[int, typer.Option(help="Steps between progress lines.")] = TRAIN.log_every,
    bf16: Annotated[Optional[bool], typer.Option("--bf16/--fp32", help="bfloat16 autocast; default: on GPU and on CPUs with native bf16.")] = TRAIN.bf16,
    seed: Annotated[int, typer.Option(help="Random seed.")] = TRAIN.seed,
    resume: Annotated[bool, typer.Option(help="Continue the run in RUN_DIR from its last checkpoint.")] = TRAIN.resume,
    verbose: Annotated[bool, typer.Option(help="Also show Ray Train's own log lines (its worker group's start-up).")] = TRAIN.verbose,
) -> None:
    """Train an English->French (or any pair) LSTM translator with DDP under Ray Train."""
    from s2s.train import train as run_training

    try:
        model = ModelConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, emb_dim=emb_dim, hidden_size=hidden_size,
                            encoder_layers=encoder_layers, decoder_layers=decoder_layers, dropout=dropout)
        cfg = TrainConfig(run_dir=run_dir, data=data, source_column=source_column, target_column=target_column, model=model,
                          workers=workers, cpus=cpus, use_gpu=gpu, batch_tokens=batch_tokens, lr=lr, warmup_steps=warmup_steps,
                          label_smoothing=label_smoothing, average_last=average_last, epochs=epochs, max_steps=max_steps, max_minutes=max_minutes,
                          patience=patience, log_every=log_every, bf16=bf16, seed=seed, resume=resume,
                          verbose=verbose)
        summary = run_training(cfg)
    except (ValueError, FileExistsError, FileNotFoundError) as e:  # DataError is a ValueError
        _fail(str(e))
    typer.echo(json.dumps(summary["best"], indent=2))


@app.command()
def evaluate(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory (or s3://...).")],
    split: Annotated[Literal["valid", "test"], typer.Option(help="The split to score.")] = "test",
    beam_size: Annotated[int, typer.Option(help="Beam size (1: greedy).")] = EVALUATE_DECODE.beam_size,
    length_penalty: Annotated[float, typer.Option(help="Beam ranking: score / length**length_penalty.")] = EVALUATE_DECODE.length_penalty,
    no_repeat_ngram_size: NoRepeatNgramSize = EVALUATE_DECODE.no_repeat_ngram_size,
    repetition_penalty: RepetitionPenalty = EVALUATE_DECODE.repetition_penalty,
    min_decoding_length: MinDecodingLength = EVALUATE_DECODE.min_decoding_length,
    max_length_a: MaxLengthA = EVALUATE_DECODE.max_length_a,
    max_length_b: MaxLengthB = EVALUATE_DECODE.max_length_b,
    sampling_topk: SamplingTopk = EVALUATE_DECODE.sampling_topk,
    sampling_topp: SamplingTopp = EVALUATE_DECODE.sampling_topp,
    sampling_temperature: SamplingTemperature = EVALUATE_DECODE.sampling_temperature,
    sampling_seed: SamplingSeed = EVALUATE_DECODE.sampling_seed,
    target_prefix: TargetPrefix = EVALUATE_DECODE.target_prefix,
    check_rows: CheckRows = EVALUATE_DECODE.check_rows,
    glossary: Annotated[Optional[str], typer.Option(help=GLOSSARY_HELP)] = None,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = "best",
    samples: Annotated[int, typer.Option(help="Sample translations to show.")] = 5,
    attention: Annotated[int, typer.Option(help="Draw attention maps of this many samples into RUN_DIR/attention/.")] = 0,
) -> None:
    """Score a run's checkpoint on its test split (BLEU, chrF, multi-reference) and write eval.json."""
    from s2s.evaluate import evaluate_run

    try:
        decode = DecodeConfig(beam_size=beam_size, length_penalty=length_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
                              repetition_penalty=repetition_penalty, min_decoding_length=min_decoding_length, max_length_a=max_length_a,
                              max_length_b=max_length_b, sampling_topk=sampling_topk, sampling_topp=sampling_topp,
                              sampling_temperature=sampling_temperature, sampling_seed=sampling_seed, target_prefix=target_prefix,
                              check_rows=check_rows, glossary=read_glossary(glossary) if glossary else ())
        result = evaluate_run(run_dir, split, decode, checkpoint, samples, attention)
    except (ValueError, FileNotFoundError) as e:
        _fail(str(e))
    typer.echo(json.dumps(result, indent=2, ensure_ascii=False))


@app.command()
def export(
    run_dir: Annotated[str, typer.Argument(metavar="RUN_DIR", help="A training run directory (or s3://...).")],
    output: Annotated[str, typer.Option("--output", "-o", help="Model directory to write (or s3://...).")] = "models/eng-fra",
    quantize: Annotated[Optional[Literal["int8"]], typer.Option(help="int8: add an onnxruntime dynamic-quantized variant.")] = EXPORT.quantize,
    exporter: Annotated[Literal["torchscript", "dynamo"], typer.Option(help="torch.onnx exporter (dynamo: fp32 only).")] = EXPORT.exporter,
    checkpoint: Annotated[str, typer.Option(help="best or last.")] = EXPORT.checkpoint,
    parity_sentences: Annotated[int, typer.Option(help="Held-out sentences the parity gate decodes.")] = EXPORT.parity_sentences,
    tolerance: Annotated[float, typer.Option(help="Max |delta log-prob| per step between PyTorch and onnxruntime; twice PyTorch's own difference between batch sizes where that is larger.")] = EXPORT.tolerance,
    vmap: Annotated[bool, typer.Option(help="Also export a vocabulary map for shortlist decoding (translate --use-vmap).")] = EXPORT.vmap,
    fp16: Annotated[bool, typer.Option(help="Also export an fp16 variant, the GPU default where it passes its gate.")] = EXPORT.fp16,
    overwrite: Annotated[bool, typer.Option(help="Replace an existing model directory.")] = EXPORT.overwrite,
) -> None:
    """Export a run's checkpoint to ONNX (encoder + single-step decoder), behind a parity gate."""
    from s2s.export.convert import ParityError, export_run

    try:
        cfg = ExportConfig(exporter=exporter, checkpoint=checkpoint, parity_sentences=parity_sentences, tolerance=tolerance,
                           quantize=quantize, vmap=vmap, fp16=fp16, overwrite=overwrite)
        manifest = export_run(run_dir, output, cfg)
    except ParityError as e:
        _fail(str(e), code=1)
    except (ValueError, FileExistsError, FileNotFoundError) as e:
        _fail(str(e))
    gate = manifest["parity"]
    typer.echo(f"wrote {output}: parity passed on {gate['sentences']} sentences at batch sizes {gate['batch_sizes']} "
               f"(max |delta log-prob| {gate['max_abs_logprob_diff']:.1e} of {gate['gate_tolerance']:.1e} allowed; greedy {gate['greedy']}; beam {gate['beam4']}); "
               f"CPU default variant {manifest['default_cpu_variant']}")
    if "int8" in manifest["variants"]:
        g8 = manifest["variants"]["int8"]["parity"]
        typer.echo(f"int8 variant: parity passed (mean |delta log-prob| {g8['mean_abs_logprob_diff']:.3f} of {g8['mean_tolerance']} allowed; "
                   f"greedy {g8['greedy']}; beam {g8['beam4']})")
    elif "int8_rejected" in manifest:
        typer.echo("int8 variant: left out, it failed its parity gate (the manifest's int8_rejected says where); fp32 only", err=True)
    if "fp16" in manifest["variants"]:
        g16 = manifest["variants"]["fp16"]["parity"]
        typer.echo(f"fp16 variant: parity passed on {g16['provider']} (mean |delta log-prob| {g16['mean_abs_logprob_diff']:.4f} of "
                   f"{g16['mean_tolerance']} allowed; greedy {g16['greedy']}; beam {g16['beam4']}); GPU default variant {manifest['default_gpu_variant']}")
    elif "fp16_rejected" in manifest:
        typer.echo("fp16 variant: left out, it failed its parity gate (the manifest's fp16_rejected says where); GPUs run fp32", err=True)


@app.command()
def translate(
    input: Annotated[str, typer.Argument(metavar="INPUT", help="Parquet file, folder of shards, or glob; local or s3://, gs://. "
                                            "Or a .txt file (one sentence per line), or - for stdin: translated in this process.")],
    output: Annotated[Optional[str], typer.Option("--output", "-o", help="Output folder (default: outputs/<input name>): local, POSIX or s3://; for text "
                                                       "input a text file, or - for stdout (the default with stdin).")] = None,
    model: Annotated[str, typer.Option(help="Exported model directory.")] = TRANSLATE.model,
    text_column: Annotated[Optional[str], typer.Option(help="Column with the text to translate (string, or binary holding UTF-8); "
                                                            "default: text, or src where there is no text column.", show_default=False)] = TRANSLATE.text_column,
    id_column: Annotated[Optional[str], typer.Option(help="Column with row ids, unique and never null (default: add row_id = file#row).")] = TRANSLATE.id_column,
    allow_duplicate_ids: Annotated[bool, typer.Option(help="Accept an --id-column with duplicate or null values.")] = TRANSLATE.allow_duplicate_ids,
    reference_column: Annotated[Optional[str], typer.Option(help="Column with references (string or list): adds BLEU/chrF to _run.json.")] = TRANSLATE.reference_column,
    target_prefix_column: Annotated[Optional[str], typer.Option(help="Column with each row's forced start of its translation (null or empty: --target-prefix).")] = TRANSLATE.target_prefix_column,
    result_prefix: Annotated[str, typer.Option(help="Write the results as <prefix>translation, <prefix>score, ... (for inputs "
                                                    "that have columns of those names).")] = TRANSLATE.result_prefix,
    beam_size: Annotated[int, typer.Option(help="Beam size (1: greedy).")] = TRANSLATE.decode.beam_size,
    nbest: Annotated[int, typer.Option(help="Hypotheses per row; > 1 adds an nbest list column.")] = TRANSLATE.decode.nbest,
    length_penalty: Annotated[float, typer.Option(help="Beam ranking: score / length**length_penalty.")] = TRANSLATE.decode.length_penalty,
    max_batch_tokens: Annotated[int, typer.Option(help="Padded source tokens per decoding sub-batch.")] = TRANSLATE.decode.max_batch_tokens,
    max_input_tokens: Annotated[int, typer.Option(help="Longer inputs are refused (or truncated with --truncate).")] = TRANSLATE.decode.max_input_tokens,
    truncate: Annotated[bool, typer.Option(help="Truncate inputs over --max-input-tokens instead of refusing them.")] = TRANSLATE.decode.truncate_long_input,
    max_decoding_length: Annotated[int, typer.Option(help="Hard cap on output tokens.")] = TRANSLATE.decode.max_decoding_length,
    no_repeat_ngram_size: NoRepeatNgramSize = TRANSLATE.decode.no_repeat_ngram_size,
    repetition_penalty: RepetitionPenalty = TRANSLATE.decode.repetition_penalty,
    min_decoding_length: MinDecodingLength = TRANSLATE.decode.min_decoding_length,
    max_length_a: MaxLengthA = TRANSLATE.decode.max_length_a,
    max_length_b: MaxLengthB = TRANSLATE.decode.max_length_b,
    sampling_topk: SamplingTopk = TRANSLATE.decode.sampling_topk,
    sampling_topp: SamplingTopp = TRANSLATE.decode.sampling_topp,
    sampling_temperature: SamplingTemperature = TRANSLATE.decode.sampling_temperature,
    sampling_seed: SamplingSeed = TRANSLATE.decode.sampling_seed,
    target_prefix: TargetPrefix = TRANSLATE.decode.target_prefix,
    check_rows: CheckRows = TRANSLATE.decode.check_rows,
    return_token_scores: Annotated[bool, typer.Option(help="Add a token_scores column: each output subword's log-prob.")] = TRANSLATE.decode.return_token_scores,
    return_alignment: Annotated[bool, typer.Option(help="Add an alignment column: for each output subword, the position of the source subword it attended to most.")] = TRANSLATE.decode.return_alignment,
    glossary: Annotated[Optional[str], typer.Option(help=GLOSSARY_HELP + " Adds terms_required and terms_met columns.")] = None,
    use_vmap: Annotated[bool, typer.Option(help="Project each step onto the vocabulary-map shortlist (fp32: faster; int8: slower here).")] = TRANSLATE.decode.use_vmap,
    executor: Annotated[Literal["ray", "local"], typer.Option(help="ray: Ray Data actors, on the cluster at RAY_ADDRESS or a local one; local: in this "
                                               "process, without Ray (small inputs).")] = TRANSLATE.executor,
    actors: Annotated[int, typer.Option(help="Translate actors (0: as many as fit, leaving room for I/O tasks).")] = TRANSLATE.actors,
    cpus_per_actor: Annotated[float, typer.Option(help="CPUs per actor, also its onnxruntime threads (0: one 1-thread actor per core, less half a CPU per node for I/O).")] = TRANSLATE.cpus_per_actor,
    gpus_per_actor: Annotated[Optional[float], typer.Option(help="GPUs per actor (default: half or all of a GPU where the cluster has or can add GPU nodes, else none; 0: CPUs only).", show_default=False)] = TRANSLATE.gpus_per_actor,
    device: Annotated[Literal["auto", "cpu", "cuda"], typer.Option(help="Where actors decode (cuda is refused up front where no actor can have a GPU; an actor whose CUDA provider does not load fails the run).")] = TRANSLATE.device,
    variant: Annotated[Literal["auto", "fp32", "int8", "fp16"], typer.Option(help="Model variant; auto: the model's default for the provider that loads (its CPU default on CPUs, its GPU default on CUDA).")] = TRANSLATE.variant,
    rows_per_shard: Annotated[int, typer.Option(help="Rows per shard: one part file and one resume step.")] = TRANSLATE.rows_per_shard,
    date: Annotated[Optional[str], typer.Option(help="Fills {date} in the input and output paths (e.g. 2026-11-21).")] = None,
    partition: Annotated[Optional[str], typer.Option(help="Fills {partition} in the input and output paths.")] = None,
    max_error_rate: Annotated[float, typer.Option(help="Exit 1 when more than this share of rows has an error.")] = TRANSLATE.max_error_rate,
    overwrite: Annotated[bool, typer.Option(help="Empty a non-empty output folder first.")] = TRANSLATE.overwrite,
    resume: Annotated[bool, typer.Option(help="Finish an earlier run in the output folder: verified parts are kept; parts of "
                                              "input files that changed are redone, new files translated.")] = TRANSLATE.resume,
    lease_seconds: Annotated[float, typer.Option(help="How long the output folder's lease lasts without renewal.")] = TRANSLATE.lease_seconds,
    json_summary: Annotated[bool, typer.Option("--json", help="Print the run's summary (_run.json) on stdout, for scripts.")] = False,
    verbose: Annotated[bool, typer.Option(help="Also show Ray Data's own progress reports and logs.")] = TRANSLATE.verbose,
) -> None:
    """Translate a Parquet corpus with onnxruntime in Ray Data actors; write Parquet parts, _run.json and _SUCCESS.

    A text file (one sentence per line) or stdin is translated line by line into a text file or stdout.
    Exit codes: 0 done, 1 error rate over --max-error-rate, 2 bad invocation, 3 the run failed (rerun with --resume)."""
    from s2s.cluster import what_failed
    from s2s.engine import DeviceError, ModelDirError
    from s2s.reference import EngineCheckError
    from s2s.lease import LeaseHeld, LeaseLost
    from s2s.textfile import is_text_path, text_output, translate_text
    from s2s.translate import JobError, default_output, fill_template, run_translate

    from s2s.status import one_line

    text_mode = is_text_path(input)
    try:
        values = {"date": date, "partition": partition}  # a scheduler's placeholders, in either mode
        input, output = fill_template(input, values), fill_template(output, values) if output else output
        decode = DecodeConfig(beam_size=beam_size, nbest=nbest, length_penalty=length_penalty, max_batch_tokens=max_batch_tokens,
                              max_input_tokens=max_input_tokens, truncate_long_input=truncate, max_decoding_length=max_decoding_length,
                              use_vmap=use_vmap, no_repeat_ngram_size=no_repeat_ngram_size, repetition_penalty=repetition_penalty,
                              min_decoding_length=min_decoding_length, max_length_a=max_length_a, max_length_b=max_length_b,
                              sampling_topk=sampling_topk, sampling_topp=sampling_topp, sampling_temperature=sampling_temperature,
                              sampling_seed=sampling_seed, target_prefix=target_prefix, check_rows=check_rows, return_token_scores=return_token_scores,
                              return_alignment=return_alignment, glossary=read_glossary(glossary) if glossary else ())
        if text_mode:
            if target_prefix_column:
                raise ValueError("--target-prefix-column needs a Parquet input; for text, --target-prefix applies to every line")
            if return_token_scores or return_alignment or nbest > 1:
                raise ValueError("--return-token-scores, --return-alignment and --nbest add columns: they need a Parquet input and output")
            target = text_output(input, output, overwrite)
            if json_summary and target == "-":
                raise ValueError("--json and translations on stdout would mix; pass --output FILE with --json")
            summary = translate_text(input, target, model, decode, variant, device, max_error_rate=max_error_rate)
        else:
            cfg = TranslateConfig(input=input, output=output or default_output(input), model=model, text_column=text_column, id_column=id_column,
                                  allow_duplicate_ids=allow_duplicate_ids, reference_column=reference_column, result_prefix=result_prefix,
                                  target_prefix_column=target_prefix_column,
                                  decode=decode, executor=executor, actors=actors, cpus_per_actor=cpus_per_actor,
                                  gpus_per_actor=gpus_per_actor, device=device, variant=variant, rows_per_shard=rows_per_shard,
                                  max_error_rate=max_error_rate, overwrite=overwrite, resume=resume, lease_seconds=lease_seconds,
                                  verbose=verbose)
            summary = run_translate(cfg)
    except (LeaseHeld, LeaseLost) as e:  # another live run, or this one lost the folder: the scheduler retries later
        _fail(str(e), code=3)
    except (JobError, ModelDirError, DeviceError, EngineCheckError, ValueError, FileNotFoundError) as e:
        _fail(str(e))
    except Exception as e:  # noqa: BLE001 - Ray, storage, a changed input or the machine failed: the scheduler's code
        _fail(f"run failed ({what_failed(e)}). " + ("Nothing was written; fix the cause and run again." if text_mode else
              "Committed parts are kept: rerun the same command with --resume once the cause is fixed."), code=3)
    if json_summary:  # stdout is for machines; every line for people goes to stderr
        typer.echo(json.dumps({k: v for k, v in summary.items() if k != "nothing_to_do"}, indent=2))
    where = "stdout" if summary["output"] == "-" else summary["output"]
    if not summary.get("nothing_to_do"):
        typer.echo(f"{one_line(summary)}; output in {where}" + ("" if text_mode else f" (s2s-job report {where})"), err=True)
    if summary["status"] == "failed_error_rate":
        where = f"{where}/_run.json" if not text_mode else (f"{where}.failed.json" if where != "stdout" else "the lines above")
        _fail(f"error rate {summary['error_rate']:.2%} is over --max-error-rate {summary['max_error_rate']:.2%} (status failed_error_rate; "
              f"see {where}). Rerunning gives the same answer unless --max-error-rate is raised.", code=1)
    if summary["status"] != "complete":
        _fail(f"run incomplete: {summary['shards_committed']} of {summary['shards_total']} shards committed; rerun with --resume.", code=3)


@app.command()
def plot(
    run_dirs: Annotated[list[str], typer.Argument(metavar="RUN_DIR", help="One or more training run directories (or s3://...), overlaid.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write.")] = Path("curves.png"),
    x: Annotated[str, typer.Option(help="Horizontal axis: step, or minutes (runs from one machine then compare per CPU-minute).")] = "step",
) -> None:
    """Draw training curves (loss, valid BLEU and chrF, tokens/s) of one run or several overlaid."""
    from s2s.plots import plot_curves
    from s2s.run_dir import working_copy

    try:
        typer.echo(f"wrote {plot_curves([working_copy(r) for r in run_dirs], output, x)}")
    except (FileNotFoundError, ValueError) as e:
        _fail(str(e))


@app.command()
def attention(
    text: Annotated[str, typer.Argument(metavar="TEXT", help="A source sentence.")],
    model: Annotated[str, typer.Option(help="Exported model directory.")] = TRANSLATE.model,
    output: Annotated[Path, typer.Option("--output", "-o", help="PNG to write.")] = Path("attention.png"),
) -> None:
    """Translate one sentence (greedy, onnxruntime) and draw its source-by-target attention map."""
    from s2s.engine import ModelDirError, load_translator
    from s2s.plots import draw_translation_attention

    try:
        translator = load_translator(model, device="cpu")
        result = translator.translate([text])[0]
        draw_translation_attention(translator, text, result, output)
    except (ModelDirError, ValueError) as e:
        _fail(str(e))
    typer.echo(f"{result.translation}\nwrote {output}")


@app.command()
def report(
    output_dirs: Annotated[list[str], typer.Argument(metavar="OUTPUT", help="One translate --output folder, or two to compare; local or s3://, gs://.")],
    html: Annotated[Optional[Path], typer.Option(help="Also write a self-contained HTML page for the (first) run here.")] = None,
) -> None:
    """Print a translate run's _run.json, or compare two runs side by side; --html writes a page."""
    from s2s.report import format_comparison, format_report, load_run, write_html

    if len(output_dirs) not in (1, 2):
        _fail("give one output folder, or two to compare")
    if html:
        try:
            typer.echo(f"wrote {write_html(output_dirs[0], html)}")
        except FileNotFoundError as e:
            _fail(str(e))
    try:
        runs = [load_run(d) for d in output_dirs]
    except FileNotFoundError as e:
        _fail(str(e))
    if len(runs) == 1:
        typer.echo(format_report(runs[0]))
    else:
        typer.echo(format_comparison(runs[0], runs[1], tuple(d.rstrip("/").rsplit("/", 1)[-1] for d in output_dirs)))


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def submit(
    ctx: typer.Context,
    address: Annotated[Optional[str], typer.Option(help="The cluster's Ray Jobs server, http://HEAD:8265 (default: RAY_ADDRESS).")] = None,
    working_dir: Annotated[Optional[str], typer.Option(help="A local folder uploaded as the job's working directory.")] = None,
) -> None:
    """Run an s2s-job command on a Ray cluster as a Ray job, stream its log, and exit with that command's own exit code.

    Usage: s2s-job submit [--address URL] -- s2s-job translate ... (0 done, 1 error rate, 2 bad invocation, 3 failed: retry)."""
    from s2s.submit import submit_job

    raise typer.Exit(submit_job(list(ctx.args), address=address, working_dir=working_dir))


def main() -> None:  # pragma: no cover
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("s2s").setLevel(logging.INFO)
    app()


if __name__ == "__main__":  # python -m s2s.cli
    main()
