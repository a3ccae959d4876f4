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

from s2s.evaluate import load_model
from s2s.quality import corpus_scores
from s2s.export.graphs import DECODER_STATE, DECODER_STEP, ENCODER, DecoderState, DecoderStep, Encoder, example_inputs, export_graph
from s2s.export.parity import parity_gate
from s2s.export.vmap import VMAP_FILE, build_vmap
from s2s.engine import FORMAT, MANIFEST, ModelDir, OrtEngine, library_versions, sha256, usable_cpus
from s2s.storage import absolute, is_uri
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID, UNK_ID, load_sentencepiece
from s2s.tokenizer import pad_ids
from s2s.translator import DecodeConfig, TorchEngine, Translator

log = logging.getLogger(__name__)


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


def export_run(run_dir: str | Path, out: str | Path, cfg: ExportConfig = ExportConfig()) -> dict:
    """Export a training run's checkpoint into `out`; return the manifest. Raises ParityError on a failed gate.

    Either may be on object storage (s3://): a remote `out` is built and checked locally, then uploaded
    with its manifest last, so that a reader sees the old model or the new one, never half of one."""
    from s2s.run_dir import checkpoint_file, working_copy

    run = working_copy(run_dir)
    if is_uri(out):
        remote, out = str(out).rstrip("/"), Path(tempfile.mkdtemp(prefix="s2s-export-")) / "model"
        if _remote_model_exists(remote) and not cfg.overwrite:
            raise FileExistsError(f"{remote}: already holds a model. Pass --overwrite or choose another --out.")
        try:
            manifest = export_run(run_dir, out, cfg)
            _upload_model(out, remote, manifest)
        finally:
            shutil.rmtree(out.parent, ignore_errors=True)
        return manifest
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise FileExistsError(f"{out}: already exists and is not empty. Pass --overwrite or choose another --out.")

    # load
    model, ckpt = load_model(cfg.checkpoint if cfg.checkpoint.endswith(".pt") else checkpoint_file(run_dir, cfg.checkpoint, run))
    src_sp, tgt_sp = load_sentencepiece(run / "src.model"), load_sentencepiece(run / "tgt.model")
    valid = pq.read_table(run / "data" / "valid.parquet").to_pylist()

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    os.chmod(tmp, 0o755)  # mkdtemp makes it private; the model directory is meant to be shared
    try:
        # build
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
            "vocab_sizes": {"src": src_sp.get_piece_size(), "tgt": tgt_sp.get_piece_size()},
            "limits": {"max_input_tokens": cfg.max_input_tokens, "max_decoding_length": cfg.max_decoding_length},
            "model_config": dataclasses.asdict(model.cfg),
            "training": {"run_dir": absolute(run_dir), "checkpoint": cfg.checkpoint, "metrics": ckpt.get("metrics"),
                         "state": ckpt.get("state")},
            "exporter": cfg.exporter,
            "opset": cfg.opset,
            "versions": library_versions(),
            "variants": {"fp32": {"encoder": ENCODER.file, "decoder_step": DECODER_STEP.file}},
            "default_cpu_variant": "fp32",
        }
        graphs = (ENCODER, DECODER_STEP)
        if cfg.vmap:
            graphs += (DECODER_STATE,)
            vmap = build_vmap(run / "data" / "train.parquet", model.cfg.src_vocab_size, model.cfg.tgt_vocab_size, cfg.vmap_per_source,
                              cfg.vmap_frequent)
            np.savez(tmp / VMAP_FILE, **vmap, weight=model.generator.weight.detach().float().numpy(),
                     bias=model.generator.bias.detach().float().numpy())
            manifest["vmap"] = {"file": VMAP_FILE, "per_source": cfg.vmap_per_source, "frequent": cfg.vmap_frequent}
            manifest["variants"]["fp32"]["decoder_state"] = DECODER_STATE.file

        # validate
        engine = OrtEngine(ModelDir(tmp, manifest), "fp32", "cpu", threads=usable_cpus())
        sources = [ids + [EOS_ID] for ids in src_sp.encode([r["src"] for r in valid[: cfg.parity_sentences]])]
        gate = parity_gate(TorchEngine(model), engine, sources, cfg.batch_sizes, cfg.beam_size, cfg.tolerance)
        manifest["parity"] = gate
        if not gate["passed"]:
            raise ParityError(f"parity gate failed: max |delta log-prob| {gate['max_abs_logprob_diff']:.2e} (tolerance {gate['gate_tolerance']:.2e}), "
                              f"greedy {gate['greedy']}, beam {gate[f'beam{cfg.beam_size}']}; first divergences: {gate['divergences'][:3]}. "
                              "No model directory was written.")
        log.info("parity gate passed: %s", {k: gate[k] for k in ("max_abs_logprob_diff", "gate_tolerance", "greedy", f"beam{cfg.beam_size}")})
        if cfg.vmap:
            gate["decoder_state_max_abs_diff"] = diff = _state_graph_diff(tmp, manifest, sources[: max(cfg.batch_sizes)])
            if diff > cfg.tolerance:
                raise ParityError(f"decoder_state.onnx with the full projection is {diff:.2e} off decoder_step.onnx "
                                  f"(tolerance {cfg.tolerance}). No model directory was written.")

        # quantize
        if cfg.quantize == "int8":
            from onnxruntime.quantization import QuantType, quantize_dynamic

            for spec in graphs:
                quantize_dynamic(tmp / spec.file, tmp / spec.file.replace(".onnx", ".int8.onnx"), weight_type=QuantType.QInt8)
            manifest["variants"]["int8"] = {key: f.replace(".onnx", ".int8.onnx") for key, f in manifest["variants"]["fp32"].items()}
            # the int8 variant's own gate, against the same PyTorch fp32 reference with its own tolerances: a variant
            # that fails is left out
            int8 = OrtEngine(ModelDir(tmp, manifest), "int8", "cpu", threads=usable_cpus())
            gate8 = parity_gate(TorchEngine(model), int8, sources, cfg.batch_sizes, cfg.beam_size, cfg.int8_tolerance,
                                mean_tolerance=cfg.int8_mean_tolerance, max_divergent=cfg.int8_max_divergent)
            manifest["variants"]["int8"]["parity"] = gate8
            if not gate8["passed"]:
                manifest["variants"].pop("int8")
                for spec in graphs:
                    (tmp / spec.file.replace(".onnx", ".int8.onnx")).unlink()
                manifest["int8_rejected"] = gate8
                log.warning("the int8 variant failed its parity gate and is left out (mean |delta log-prob| %.3f, tolerance %.3f; "
                            "%d of %d outputs divergent, %.0f%% allowed); the model directory holds fp32 only",
                            gate8["mean_abs_logprob_diff"], cfg.int8_mean_tolerance, gate8["divergent"], gate8["outputs"],
                            100 * cfg.int8_max_divergent)
        for variant in manifest["variants"]:
            if cfg.quantize or cfg.vmap:
                manifest["variants"][variant]["valid_bleu"] = _valid_bleu(tmp, manifest, variant, valid)
            if cfg.vmap:
                manifest["variants"][variant]["valid_bleu_vmap"] = _valid_bleu(tmp, manifest, variant, valid, use_vmap=True)
        if "int8" in manifest["variants"]:
            loss = manifest["variants"]["fp32"]["valid_bleu"] - manifest["variants"]["int8"]["valid_bleu"]
            manifest["default_cpu_variant"] = "int8" if loss <= cfg.max_int8_bleu_loss else "fp32"
            log.info("int8 valid BLEU %.2f vs fp32 %.2f: CPU default %s", manifest["variants"]["int8"]["valid_bleu"],
                     manifest["variants"]["fp32"]["valid_bleu"], manifest["default_cpu_variant"])
        if cfg.vmap:
            v = manifest["variants"][manifest["default_cpu_variant"]]
            log.info("vocabulary map: valid BLEU %.2f vs %.2f with the full softmax", v["valid_bleu_vmap"], v["valid_bleu"])

        # save
        manifest["files"] = {p.name: sha256(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
        return manifest
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
