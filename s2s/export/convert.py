"""`s2s-job export`: checkpoint -> ONNX model directory, as a chain of named steps.

load (best checkpoint) -> build (encoder.onnx, decoder_step.onnx) -> validate (parity gate)
-> quantize (optional int8 variant) -> save (manifest with hashes, then an atomic rename).
An export that fails the gate leaves no model directory behind.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from s2s.config import ExportConfig
from s2s.evaluate import load_model
from s2s.quality import corpus_scores, training_length_ratio
from s2s.export.graphs import DECODER_STATE, DECODER_STEP, ENCODER, DecoderState, DecoderStep, Encoder, example_inputs, export_graph
from s2s.export.parity import parity_gate
from s2s.export.vmap import VMAP_FILE, build_vmap
from s2s.reference import REFERENCE_FILE
from s2s.reference import record as record_reference
from s2s.engine import FORMAT, MANIFEST, ModelDir, OrtEngine, library_versions, sha256, usable_cpus
from s2s.storage import absolute, is_uri
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_sentencepiece
from s2s.tokenizer import pad_ids
from s2s.config import DecodeConfig
from s2s.translator import TorchEngine, Translator

log = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """The exported graphs do not decode as PyTorch does; nothing was written."""


def _valid_bleu(model_dir: Path, manifest: dict, variant: str, rows: list[dict], use_vmap: bool = False) -> float:
    engine = OrtEngine(ModelDir(model_dir, manifest), variant, "cpu", threads=usable_cpus(), use_vmap=use_vmap)
    translator = Translator(engine,
                            load_sentencepiece(model_dir / "src.model"), load_sentencepiece(model_dir / "tgt.model"), DecodeConfig())
    hyps = [t.translation or "" for t in translator.translate([r["src"] for r in rows])]
    return corpus_scores(hyps, [r["refs"] for r in rows])["bleu"]


def _state_graph_diff(model_dir: Path, manifest: dict, sources: list[list[int]], steps: int = 5) -> float:
    """Max |delta log-prob| between decoder_step.onnx and decoder_state.onnx + the projection over the whole
    vocabulary (what vocabulary-map decoding computes, with a shortlist of everything), fed the same tokens."""
    full = OrtEngine(ModelDir(model_dir, manifest), "fp32", "cpu")
    split = OrtEngine(ModelDir(model_dir, manifest), "fp32", "cpu", use_vmap=True)
    src, lens = pad_ids(sources)
    a, b = full.encode(src, lens), split.encode(src, lens)
    split.set_shortlist(np.arange(split.vocab))
    prev, worst = np.full(len(sources), BOS_ID, dtype=np.int64), 0.0
    for _ in range(steps):
        lp_a, a = full.step(prev, a)
        lp_b, b = split.step(prev, b)
        worst, prev = max(worst, float(np.abs(lp_a - lp_b).max())), lp_a.argmax(axis=1)
    return worst


def _remote_model_exists(uri: str) -> bool:
    import pyarrow.fs as pafs

    from s2s.storage import filesystem

    fs, base = filesystem(uri)
    return fs.get_file_info(f"{base}/{MANIFEST}").type == pafs.FileType.File


def _upload_model(local: Path, uri: str, manifest: dict) -> None:
    """The model's files, then its manifest: fetch_model_dir reads the manifest first and checks every hash."""
    from s2s.storage import filesystem, write_durably

    fs, base = filesystem(uri)
    fs.create_dir(base, recursive=True)
    for name in [n for n in manifest["files"] if n != MANIFEST] + [MANIFEST]:
        write_durably(fs, f"{base}/{name}", lambda sink, name=name: sink.write((local / name).read_bytes()))


@dataclass(frozen=True)
class Loaded:
    """What an export starts from: the checkpoint's model, its tokenizers and the held-out sentences."""

    run: Path  # the run directory's local working copy
    model: torch.nn.Module
    checkpoint: dict
    src_sp: object  # sentencepiece processors
    tgt_sp: object
    valid: list[dict]  # the valid split: {"src", "refs"}
    sources: list[list[int]]  # the parity gate's sentences as source ids


def export_run(run_dir: str | Path, out: str | Path, cfg: ExportConfig = ExportConfig()) -> dict:
    """Export a training run's checkpoint into `out`; return the manifest. Raises ParityError on a failed gate.

    load -> build -> validate -> quantize -> score -> save, in a staging folder beside `out` that becomes
    `out` by one rename, or is removed. Either may be on object storage (s3://): a remote `out` is built and
    checked locally, then uploaded with its manifest last, so that a reader sees the old model or the new
    one, never half of one."""
    if is_uri(out):
        return _export_remote(run_dir, str(out).rstrip("/"), cfg)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty. Pass --overwrite or choose another --output.")
    loaded = load(run_dir, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model directory is meant to be shared
    try:
        manifest = build(loaded, tmp, run_dir, cfg)
        validate(loaded, tmp, manifest, cfg)
        if cfg.quantize == "int8":
            quantize(loaded, tmp, manifest, cfg)
        if cfg.fp16:
            half(loaded, tmp, manifest, cfg)
        score(loaded, tmp, manifest, cfg)
        save(tmp, out, manifest)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _export_remote(run_dir: str | Path, remote: str, cfg: ExportConfig) -> dict:
    out = Path(tempfile.mkdtemp(prefix="s2s-export-")) / "model"
    if _remote_model_exists(remote) and not cfg.overwrite:
        raise FileExistsError(f"{remote}: already holds a model. Pass --overwrite or choose another --output.")
    try:
        manifest = export_run(run_dir, out, cfg)
        _upload_model(out, remote, manifest)
    finally:
        shutil.rmtree(out.parent, ignore_errors=True)
    return manifest


def load(run_dir: str | Path, cfg: ExportConfig) -> Loaded:
    """The checkpoint (best, last or a .pt path), the run's tokenizers and its valid split."""
    from s2s.run_dir import checkpoint_file, working_copy

    run = working_copy(run_dir)
    model, ckpt = load_model(cfg.checkpoint if cfg.checkpoint.endswith(".pt") else checkpoint_file(run_dir, cfg.checkpoint, run))
    src_sp, tgt_sp = load_sentencepiece(run / "src.model"), load_sentencepiece(run / "tgt.model")
    valid = pq.read_table(run / "data" / "valid.parquet").to_pylist()
    sources = [ids + [EOS_ID] for ids in src_sp.encode([r["src"] for r in valid[: cfg.parity_sentences]])]
    return Loaded(run, model, ckpt, src_sp, tgt_sp, valid, sources)


def build(loaded: Loaded, tmp: Path, run_dir: str | Path, cfg: ExportConfig) -> dict:
    """The ONNX graphs, the tokenizers and the vocabulary map into `tmp`; the manifest that describes them."""
    model, run = loaded.model, loaded.run
    enc_args, dec_args = example_inputs(model)
    with torch.no_grad():
        export_graph(Encoder(model), enc_args, ENCODER, tmp, cfg.opset, cfg.exporter == "dynamo")
        export_graph(DecoderStep(model), dec_args, DECODER_STEP, tmp, cfg.opset, cfg.exporter == "dynamo")
        if cfg.vmap:
            export_graph(DecoderState(model), dec_args, DECODER_STATE, tmp, cfg.opset, cfg.exporter == "dynamo")
    for name in ("src.model", "tgt.model"):
        shutil.copyfile(run / name, tmp / name)
    manifest = {
        "format": FORMAT,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "special_ids": {"pad": PAD_ID, "unk": UNK_ID, "bos": BOS_ID, "eos": EOS_ID},
        "vocab_sizes": {"src": loaded.src_sp.get_piece_size(), "tgt": loaded.tgt_sp.get_piece_size()},
        "limits": {"max_input_tokens": cfg.max_input_tokens, "max_decoding_length": cfg.max_decoding_length},
        "model_config": dataclasses.asdict(model.cfg),
        "training": {"run_dir": absolute(run_dir), "checkpoint": cfg.checkpoint, "metrics": loaded.checkpoint.get("metrics"),
                     "state": loaded.checkpoint.get("state")},
        "exporter": cfg.exporter,
        "opset": cfg.opset,
        "versions": library_versions(),
        "variants": {"fp32": {"encoder": ENCODER.file, "decoder_step": DECODER_STEP.file}},
        "default_cpu_variant": "fp32",
    }
    manifest["length_ratio"] = training_length_ratio(run / "data" / "train.parquet")
    manifest["reference"] = record_reference(TorchEngine(model), loaded.sources[: cfg.reference_sentences], tmp / REFERENCE_FILE)
    if cfg.vmap:
        vmap = build_vmap(run / "data" / "train.parquet", model.cfg.src_vocab_size, model.cfg.tgt_vocab_size, cfg.vmap_per_source,
                          cfg.vmap_frequent)
        np.savez(tmp / VMAP_FILE, **vmap, weight=model.generator.weight.detach().float().numpy(),
                 bias=model.generator.bias.detach().float().numpy())
        manifest["vmap"] = {"file": VMAP_FILE, "per_source": cfg.vmap_per_source, "frequent": cfg.vmap_frequent}
        manifest["variants"]["fp32"]["decoder_state"] = DECODER_STATE.file
    return manifest


def _graphs(manifest: dict) -> tuple:
    return (ENCODER, DECODER_STEP, DECODER_STATE) if "vmap" in manifest else (ENCODER, DECODER_STEP)


def validate(loaded: Loaded, tmp: Path, manifest: dict, cfg: ExportConfig) -> None:
    """The parity gate: the fp32 graphs must decode as PyTorch does (raises ParityError, and nothing is written)."""
    engine = OrtEngine(ModelDir(tmp, manifest), "fp32", "cpu", threads=usable_cpus())
    gate = parity_gate(TorchEngine(loaded.model), engine, loaded.sources, cfg.batch_sizes, cfg.beam_size, cfg.tolerance)
    manifest["parity"] = gate
    if not gate["passed"]:
        raise ParityError(f"parity gate failed: max |delta log-prob| {gate['max_abs_logprob_diff']:.2e} (tolerance {gate['gate_tolerance']:.2e}), "
                          f"greedy {gate['greedy']}, beam {gate[f'beam{cfg.beam_size}']}; first divergences: {gate['divergences'][:3]}. "
                          "No model directory was written.")
    log.info("parity gate passed: %s", {k: gate[k] for k in ("max_abs_logprob_diff", "gate_tolerance", "greedy", f"beam{cfg.beam_size}")})
    # what an engine checks when it loads, from now on (s2s/reference.py); a variant gets it once its gate passed
    manifest["variants"]["fp32"]["check"] = {"mean_tolerance": cfg.fp32_check_tolerance, "max_other_picks": cfg.check_max_other_picks}
    if cfg.vmap:
        gate["decoder_state_max_abs_diff"] = diff = _state_graph_diff(tmp, manifest, loaded.sources[: max(cfg.batch_sizes)])
        if diff > cfg.tolerance:
            raise ParityError(f"decoder_state.onnx with the full projection is {diff:.2e} off decoder_step.onnx "
                              f"(tolerance {cfg.tolerance}). No model directory was written.")


def quantize(loaded: Loaded, tmp: Path, manifest: dict, cfg: ExportConfig) -> None:
    """An int8 variant (onnxruntime dynamic quantization) behind its own gate, against the same PyTorch fp32
    reference with its own tolerances: a variant that fails is left out, and the manifest says why."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for spec in _graphs(manifest):
        quantize_dynamic(tmp / spec.file, tmp / spec.file.replace(".onnx", ".int8.onnx"), weight_type=QuantType.QInt8)
    _gate_variant(loaded, tmp, manifest, cfg, "int8", "cpu", cfg.int8_tolerance, cfg.int8_mean_tolerance, cfg.int8_max_divergent)


def half(loaded: Loaded, tmp: Path, manifest: dict, cfg: ExportConfig) -> None:
    """An fp16 variant for GPUs (onnxruntime's float16 converter, float32 kept at the inputs and outputs) behind its
    own gate; it becomes the GPU default if it passes, and fp32 stays the GPU default if it does not."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from s2s.engine import cuda_available

    for spec in _graphs(manifest):
        onnx.save(convert_float_to_float16(onnx.load(tmp / spec.file), keep_io_types=True), tmp / spec.file.replace(".onnx", ".fp16.onnx"))
    device = "cuda" if cuda_available()[0] else "cpu"
    passed = _gate_variant(loaded, tmp, manifest, cfg, "fp16", device, cfg.fp16_tolerance, cfg.fp16_mean_tolerance, cfg.fp16_max_divergent)
    manifest["default_gpu_variant"] = "fp16" if passed else "fp32"


def _gate_variant(loaded: Loaded, tmp: Path, manifest: dict, cfg: ExportConfig, name: str, device: str, tolerance: float, mean_tolerance: float,
                  max_divergent: float) -> bool:
    """List the variant whose files `<graph>.<name>.onnx` are in `tmp`, then hold it to its gate against PyTorch fp32
    on `device`: a variant that fails is left out (its files removed) and the manifest says why."""
    manifest["variants"][name] = {key: f.replace(".onnx", f".{name}.onnx") for key, f in manifest["variants"]["fp32"].items()
                                  if key != "check"}
    engine = OrtEngine(ModelDir(tmp, manifest), name, device, threads=usable_cpus(), io_binding=False)
    gate = parity_gate(TorchEngine(loaded.model), engine, loaded.sources, cfg.batch_sizes, cfg.beam_size, tolerance,
                       mean_tolerance=mean_tolerance, max_divergent=max_divergent)
    gate["provider"] = engine.provider
    manifest["variants"][name]["parity"] = gate
    if gate["passed"]:
        manifest["variants"][name]["check"] = {"mean_tolerance": mean_tolerance, "max_other_picks": max_divergent}
        return True
    manifest["variants"].pop(name)
    for spec in _graphs(manifest):
        (tmp / spec.file.replace(".onnx", f".{name}.onnx")).unlink()
    manifest[f"{name}_rejected"] = gate
    log.warning("the %s variant failed its parity gate and is left out (mean |delta log-prob| %.3f, tolerance %.3f; "
                "%d of %d outputs divergent, %.0f%% allowed); the model directory holds the others",
                name, gate["mean_abs_logprob_diff"], mean_tolerance, gate["divergent"], gate["outputs"], 100 * max_divergent)
    return False


def score(loaded: Loaded, tmp: Path, manifest: dict, cfg: ExportConfig) -> None:
    """Valid BLEU of each variant (and with the vocabulary map); int8 becomes the CPU default within max_int8_bleu_loss."""
    for variant in manifest["variants"]:
        if variant == "fp16":  # a GPU variant: the CPU provider would score its weights, not a GPU's arithmetic
            continue
        if cfg.quantize or cfg.vmap:
            manifest["variants"][variant]["valid_bleu"] = _valid_bleu(tmp, manifest, variant, loaded.valid)
        if cfg.vmap:
            manifest["variants"][variant]["valid_bleu_vmap"] = _valid_bleu(tmp, manifest, variant, loaded.valid, use_vmap=True)
    if "int8" in manifest["variants"]:
        loss = manifest["variants"]["fp32"]["valid_bleu"] - manifest["variants"]["int8"]["valid_bleu"]
        manifest["default_cpu_variant"] = "int8" if loss <= cfg.max_int8_bleu_loss else "fp32"
        log.info("int8 valid BLEU %.2f vs fp32 %.2f: CPU default %s", manifest["variants"]["int8"]["valid_bleu"],
                 manifest["variants"]["fp32"]["valid_bleu"], manifest["default_cpu_variant"])
    if cfg.vmap:
        v = manifest["variants"][manifest["default_cpu_variant"]]
        log.info("vocabulary map: valid BLEU %.2f vs %.2f with the full softmax", v["valid_bleu_vmap"], v["valid_bleu"])


def save(tmp: Path, out: Path, manifest: dict) -> None:
    """The manifest with every file's hash, then one rename of the staging folder onto `out`."""
    manifest["files"] = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
    for files in manifest["variants"].values():  # what each variant weighs on disk (and so in memory, about)
        files["bytes"] = sum((tmp / f).stat().st_size for key, f in files.items() if isinstance(f, str) and f.endswith(".onnx"))
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
