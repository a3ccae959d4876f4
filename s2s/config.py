"""Every stage's settings, one frozen dataclass each, validated where it is made.

    ModelConfig      the network (s2s/model.py)
    TrainConfig      a training run (s2s/train.py)
    ExportConfig     checkpoint -> ONNX model directory (s2s/export/convert.py)
    DecodeConfig     the search, wherever it runs (s2s/translator.py)
    TranslateConfig  a translate job (s2s/translate.py)

The defaults here are the product's defaults: the CLI shows and passes them, and a library caller gets the
same. This module imports neither torch nor Ray, so that `s2s-job --help` and the translate driver stay light.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from s2s.data import BUNDLED_DATA
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID


@dataclass(frozen=True)
class ModelConfig:
    src_vocab_size: int = 4000  # source SentencePiece vocabulary
    tgt_vocab_size: int = 4000  # target SentencePiece vocabulary
    emb_dim: int = 256  # token embedding size, both sides
    hidden_size: int = 512  # decoder state and encoder output width (each encoder direction gets half)
    encoder_layers: int = 1  # stacked bidirectional LSTM layers
    decoder_layers: int = 1  # stacked LSTM cells in the decoder
    dropout: float = 0.1  # on embeddings, between layers and before the output projection
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID
    eos_id: int = EOS_ID

    def __post_init__(self) -> None:
        for name in ("src_vocab_size", "tgt_vocab_size", "emb_dim", "encoder_layers", "decoder_layers"):
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size < 2 or self.hidden_size % 2:
            raise ValueError(f"ModelConfig.hidden_size must be even (split over two directions), got {self.hidden_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ModelConfig.dropout must be in [0, 1), got {self.dropout}")


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/eng-fra"  # everything the run writes goes here: a local folder or s3://bucket/prefix
    data: str = str(BUNDLED_DATA)  # Parquet or TSV (with header) of sentence pairs; Parquet may be on s3://
    source_column: str = "en"
    target_column: str = "fr"
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab sizes are set from the trained tokenizers
    workers: int = 2  # Ray Train workers (DDP processes); may exceed the CPUs: each gets a fraction
    cpus: float = 0  # CPUs the workers share; 0: every CPU of the Ray cluster
    use_gpu: bool | None = None  # None: use GPUs when the Ray cluster has them (nccl), else CPU (gloo)
    valid_frac: float = 0.02  # share of source sentences held out for validation ...
    test_frac: float = 0.02  # ... and for the test split
    max_len: int = 80  # training pairs with more subwords on either side are skipped (counted)
    batch_tokens: int = 6000  # per optimizer step over all workers: rows x longer side, padded
    lr: float = 3e-3  # Adam peak learning rate
    warmup_steps: int = 300  # linear warm-up, then linear decay to lr * min_lr_ratio at the end of the run ...
    min_lr_ratio: float = 0.1  # ... the end being the step bound or the time bound, whichever comes first
    average_last: float = 0.0  # average the weights over this last share of the run (checkpoint averaging); 0: off
    clip_norm: float = 1.0  # gradient clipping (global L2 norm)
    label_smoothing: float = 0.1
    epochs: int = 12  # upper bound on passes over the train split
    max_steps: int = 0  # stop after this many optimizer steps (0: no bound)
    max_minutes: float = 50.0  # stop training after this many minutes of the loop (0: no bound)
    patience: int = 3  # stop after this many epochs without a better valid BLEU (0: never)
    log_every: int = 50  # steps between progress lines
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often, so a kill loses little
    seed: int = 1234
    bf16: bool | None = None  # autocast to bfloat16; None: on GPU, and on CPUs with native bf16 (2x faster here)
    resume: bool = False  # continue from the run's latest Ray Train checkpoint instead of starting over
    verbose: bool = False  # also Ray Train's own INFO lines (off: its worker-group start-up lines stay in Ray's log files)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.batch_tokens < self.max_len * self.workers:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold at least one max_len pair per worker")
        if not 0 < self.valid_frac + self.test_frac < 0.5:
            raise ValueError("valid_frac + test_frac must be between 0 and 0.5")
        for name in ("lr", "max_len", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.average_last < 1:
            raise ValueError(f"average_last must be in [0, 1), got {self.average_last}")
        if self.epochs < 1 or self.max_steps < 0 or self.max_minutes < 0 or self.patience < 0:
            raise ValueError("epochs must be >= 1; max_steps, max_minutes and patience >= 0")


@dataclass(frozen=True)
class ExportConfig:
    # Both torch.onnx exporters give graphs whose outputs are within 2e-6 of PyTorch here, with ONNX LSTM
    # ops, and they run equally fast in onnxruntime (decoder step at batch 64: 27.8 ms either way on the
    # dev CPU). The TorchScript exporter is the default because its graph is also right as a file: the
    # dynamo graph (half the nodes, 20 s to export instead of 2) stores value_info shapes that contradict
    # ONNX shape inference, so onnxruntime's int8 quantizer rejects it ("Inferred shape and existing shape
    # differ in dimension 0: (64) vs (256)"). `exporter="dynamo"` stays selectable for fp32 exports.
    exporter: str = "torchscript"
    opset: int = 18
    checkpoint: str = "best"  # best, last, or the path of a checkpoint.pt (a run trained without Ray Train, e.g. benchmarks/gpu_check.py)
    parity_sentences: int = 200  # held-out (valid) sentences the gate decodes
    batch_sizes: tuple[int, ...] = (1, 37)
    beam_size: int = 4
    tolerance: float = 1e-4  # max |delta log-prob| per step, or twice PyTorch's own noise across batch sizes (s2s/export/parity.py)
    quantize: str | None = None  # "int8": add an onnxruntime dynamic-quantized variant
    max_int8_bleu_loss: float = 0.5  # int8 becomes the CPU default only within this much valid BLEU
    # the int8 variant's own gate against PyTorch fp32 (s2s/export/parity.py, measured in docs/results.md): the
    # mean |delta log-prob| over the ranked tokens (quantization: about 0.04), ties where two candidates are
    # within 2 x int8_tolerance, and at most this share of outputs diverging beyond a tie (measured: 1%)
    int8_mean_tolerance: float = 0.1
    int8_tolerance: float = 0.25
    int8_max_divergent: float = 0.05
    # an fp16 variant for GPUs (float32 inputs and outputs, so the search is unchanged), behind its own gate with
    # the int8 gate's kind of tolerances; run where it is exported on the CUDA provider if one loads, else on the
    # CPU provider, which computes its half-precision weights in float32 (the GPU's own arithmetic is checked
    # where it runs, by benchmarks/gpu_check.py's parity step)
    fp16: bool = True
    # reference outputs every engine decodes when it loads (s2s/reference.py): this many held-out sentences, and the
    # fp32 variant's tolerance there (the export's own gate is 1e-4; a GPU's kernels, TF32 among them, differ more)
    reference_sentences: int = 32
    fp32_check_tolerance: float = 0.02
    check_max_other_picks: float = 0.02  # share of steps where an fp32 engine may pick another token than PyTorch clearly did
    fp16_mean_tolerance: float = 0.05
    fp16_tolerance: float = 0.25
    fp16_max_divergent: float = 0.05
    vmap: bool = True  # also export a vocabulary map (s2s/export/vmap.py) and the step graph without its projection
    vmap_per_source: int = 20  # target tokens kept per source token
    vmap_frequent: int = 1000  # most frequent target tokens, always kept
    max_input_tokens: int = 250
    max_decoding_length: int = 256
    overwrite: bool = False

    def __post_init__(self) -> None:
        if self.exporter not in ("torchscript", "dynamo"):
            raise ValueError(f"exporter must be torchscript or dynamo, got {self.exporter!r}")
        if self.quantize not in (None, "int8"):
            raise ValueError(f"quantize must be int8 or unset, got {self.quantize!r}")
        if self.quantize and self.exporter == "dynamo":
            raise ValueError("--quantize int8 needs the torchscript exporter: onnxruntime's quantizer rejects the dynamo graph's shapes")
        if self.checkpoint not in ("best", "last") and not self.checkpoint.endswith(".pt"):
            raise ValueError(f"checkpoint must be best, last or the path of a checkpoint .pt file, got {self.checkpoint!r}")
        if self.parity_sentences < 1 or not self.batch_sizes or self.tolerance <= 0:
            raise ValueError("parity_sentences >= 1, at least one batch size and a positive tolerance are required")


@dataclass(frozen=True)
class DecodeConfig:
    beam_size: int = 1  # 1 is greedy
    length_penalty: float = 1.0  # beams ranked by score / length**length_penalty
    nbest: int = 1  # hypotheses returned per input (<= beam_size)
    max_length_a: float = 1.5  # output limit per sentence: a * src_len + b ...
    max_length_b: int = 10
    max_decoding_length: int = 256  # ... and never more than this
    max_batch_tokens: int = 4096  # padded source tokens per sub-batch (rows x longest)
    max_input_tokens: int = 250  # longer inputs are refused, or truncated if truncate_long_input
    truncate_long_input: bool = False
    use_vmap: bool = False  # project onto the vocabulary-map shortlist (onnxruntime; CTranslate2's name)
    # steering the search (s2s.search.Constraints; CTranslate2's and fairseq's names); the defaults change nothing
    no_repeat_ngram_size: int = 0  # no n-gram of this size twice in one output (0: off)
    repetition_penalty: float = 1.0  # > 1: tokens already in the output become less likely
    min_decoding_length: int = 0  # no EOS before this many output tokens
    # random sampling instead of the argmax (greedy only; s2s.search.Sampling): topk 1 is no sampling, 0 all tokens
    sampling_topk: int = 1
    sampling_topp: float = 1.0
    sampling_temperature: float = 1.0
    sampling_seed: int = 0  # with the source text, seeds each sentence's draws: the same seed gives the same sample
    target_prefix: str = ""  # every translation starts with this text (a row's own prefix, where it has one, wins)
    return_token_scores: bool = False  # each output subword's log-prob, as a column
    return_alignment: bool = False  # for each output subword, the source subword it attended to most, as a column
    # each row checked before it is written (s2s.quality.row_flags) and, where flagged, decoded once more with a
    # remedy (s2s.translator.remedy); `flags` and `first_flags` columns say what was found after and before
    check_rows: bool = True
    # (source term, target term) pairs whose targets the output must use where the source holds the term
    # (s2s.glossary; read from --glossary terms.tsv); lexically constrained beam search, so beam_size >= 2
    glossary: tuple[tuple[str, str], ...] = ()

    def recorded(self) -> dict:
        """The settings as a run records them (fingerprint, _job.json, _run.json): a glossary as its term count and
        digest, not its thousands of terms."""
        import hashlib
        import json

        out = dataclasses.asdict(self)
        if self.glossary:
            digest = hashlib.sha256(json.dumps(self.glossary, ensure_ascii=False).encode()).hexdigest()
            out["glossary"] = {"terms": len(self.glossary), "sha256": digest}
        else:
            out["glossary"] = None
        return out

    def __post_init__(self) -> None:
        if self.glossary and self.beam_size < 2:
            raise ValueError(f"a glossary constrains a beam search: pass --beam-size 2 or more (4 is a good start), not {self.beam_size}")
        if self.sampling_topk < 0 or not 0 < self.sampling_topp <= 1 or self.sampling_temperature <= 0:
            raise ValueError("sampling_topk must be >= 0, sampling_topp in (0, 1] and sampling_temperature > 0")
        if self.sampling_topk != 1 and self.beam_size != 1:
            raise ValueError(f"sampling (sampling_topk {self.sampling_topk}) picks one token a step: it needs beam_size 1, not {self.beam_size}")
        if self.no_repeat_ngram_size < 0 or self.min_decoding_length < 0 or self.repetition_penalty <= 0:
            raise ValueError("no_repeat_ngram_size and min_decoding_length must be >= 0 and repetition_penalty > 0")
        if self.min_decoding_length > self.max_decoding_length:
            raise ValueError(f"min_decoding_length ({self.min_decoding_length}) must not exceed max_decoding_length ({self.max_decoding_length})")
        if self.max_length_a < 0 or self.max_length_b < 0 or self.max_length_a == self.max_length_b == 0:
            raise ValueError("max_length_a and max_length_b must be >= 0 and not both 0 (the output limit is a * source length + b)")
        if self.beam_size < 1:
            raise ValueError(f"beam_size must be >= 1, got {self.beam_size}")
        if not 1 <= self.nbest <= self.beam_size:
            raise ValueError(f"nbest must be between 1 and beam_size ({self.beam_size}), got {self.nbest}")
        if self.max_batch_tokens < self.max_input_tokens + 1:
            raise ValueError(f"max_batch_tokens ({self.max_batch_tokens}) must exceed max_input_tokens ({self.max_input_tokens})")
        if self.max_input_tokens < 1 or self.max_decoding_length < 1:
            raise ValueError("max_input_tokens and max_decoding_length must be >= 1")


@dataclass(frozen=True)
class TranslateConfig:
    input: str  # a Parquet file, a folder of shards, or a glob; local or any pyarrow URI (s3://, gs://)
    output: str  # folder for the output parts, _run.json and _SUCCESS: local, POSIX or s3://
    model: str = "models/eng-fra"  # exported model directory
    text_column: str | None = None  # None: "text", or "src" where the input has no "text" column (s2s.inputs.plan)
    id_column: str | None = None  # None: add `row_id` = "<file path within the input>#<row>"
    allow_duplicate_ids: bool = False  # accept an id column with duplicate or null values
    reference_column: str | None = None  # references (a string or a list of strings): adds BLEU/chrF to _run.json
    target_prefix_column: str | None = None  # each row's forced start of its translation (empty or null: decode.target_prefix)
    result_prefix: str = ""  # results go to <prefix>translation, <prefix>score, ... (for inputs that have such columns)
    decode: DecodeConfig = field(default_factory=lambda: DecodeConfig(beam_size=4))  # beam 4: measured best for its cost (docs/results.md)
    executor: str = "ray"  # ray: Ray Data actors (a cluster at RAY_ADDRESS, or a local one); local: in this process
    actors: int = 0  # 0: as many as fit while leaving room for the read and write tasks (see `size_actor_pool`)
    cpus_per_actor: float = 0.0  # 0: one core's worth, less the half CPU each node keeps for I/O tasks
    gpus_per_actor: float | None = None  # None: a share of a GPU where the cluster has or can add GPU nodes, else 0 (s2s/placement.py)
    device: str = "auto"  # auto, cpu or cuda (cuda fails at once where it cannot load)
    variant: str = "auto"  # fp32, int8, or the model's CPU default
    rows_per_shard: int = 2000  # one unit of work, output part and resume step
    max_error_rate: float = 0.05  # exit nonzero past this share of rows with an error
    overwrite: bool = False
    resume: bool = False
    lease_seconds: float = 120.0  # the output folder's lease lasts this long without renewal (s2s/lease.py)
    verbose: bool = False  # also Ray Data's own progress reports and logs (off: one progress line)

    def __post_init__(self) -> None:
        if self.overwrite and self.resume:
            raise ValueError("--overwrite and --resume contradict each other; pass one")
        if self.rows_per_shard < 1 or self.actors < 0 or self.cpus_per_actor < 0 or (self.gpus_per_actor or 0) < 0:
            raise ValueError("rows_per_shard >= 1 and actors, cpus_per_actor and gpus_per_actor >= 0 are required")
        if not 0 <= self.max_error_rate <= 1:
            raise ValueError(f"max_error_rate must be between 0 and 1, got {self.max_error_rate}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if self.executor not in ("ray", "local"):
            raise ValueError(f"executor must be ray or local, got {self.executor!r}")
        if self.lease_seconds < 2:
            raise ValueError(f"lease_seconds must be at least 2, got {self.lease_seconds}")

    @property
    def names(self) -> dict[str, str]:
        from s2s.inputs import result_names

        return result_names(self.result_prefix, self.decode.nbest > 1, self.id_column, self.decode.return_token_scores,
                            self.decode.return_alignment, self.decode.check_rows, bool(self.decode.glossary))
