"""Scoring: multi-reference BLEU and chrF with sacrebleu, loading a trained checkpoint, and `evaluate`."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pyarrow.parquet as pq
import torch

from s2s.config import ModelConfig
from s2s.model import Seq2Seq
from s2s.quality import corpus_scores, training_length_ratio
from s2s.status import flag_counts, glossary_counts
from s2s.tokenizer import load_sentencepiece
from s2s.config import DecodeConfig
from s2s.translator import TorchEngine, Translator


def load_model(checkpoint: str | Path) -> tuple[Seq2Seq, dict]:
    """A Seq2Seq in eval mode from a training checkpoint, and the checkpoint's other fields."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no checkpoint. Train first (s2s-job train RUN_DIR) or check the run directory.")
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if "model" not in ckpt or "model_config" not in ckpt:
        raise ValueError(f"{path}: not an s2s-job checkpoint (no model weights or config)")
    model = Seq2Seq(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["model"])
    return model.eval(), ckpt


def evaluate_run(run_dir: str | Path, split: str = "test", decode: DecodeConfig | None = None, checkpoint: str = "best",
                 samples: int = 5, attention: int = 0) -> dict:
    """Translate a run's held-out split with its checkpoint; write and return eval.json's contents.

    `run_dir` may be on object storage (s3://): its working copy is evaluated and eval.json uploaded beside it."""
    from s2s.run_dir import checkpoint_file, publish, working_copy

    run = working_copy(run_dir)
    if split not in ("valid", "test"):
        raise ValueError(f"split must be valid or test, got {split!r}")
    decode = decode or DecodeConfig()
    model, ckpt = load_model(checkpoint_file(run_dir, checkpoint, run))
    rows = pq.read_table(run / "data" / f"{split}.parquet").to_pylist()
    translator = Translator(TorchEngine(model), load_sentencepiece(run / "src.model"), load_sentencepiece(run / "tgt.model"), decode,
                            training_length_ratio(run / "data" / "train.parquet"))
    t0 = time.time()
    out = translator.translate([r["src"] for r in rows])
    seconds = time.time() - t0
    hyps = [t.translation or "" for t in out]
    defaults = DecodeConfig().recorded()
    result = {
        "split": split, "checkpoint": checkpoint, "sentences": len(rows), "references": sum(len(r["refs"]) for r in rows),
        **corpus_scores(hyps, [r["refs"] for r in rows]),
        "beam_size": decode.beam_size, "length_penalty": decode.length_penalty,
        "decode": {k: v for k, v in decode.recorded().items() if v != defaults[k] or k == "beam_size"},
        "row_flags": {"before_remedy": flag_counts([t.first_flags for t in out]), "after_remedy": flag_counts([t.flags for t in out])},
        **({"glossary": {"terms": len(decode.glossary), **glossary_counts([t.terms_required for t in out], [t.terms_met for t in out])}}
           if decode.glossary else {}),
        "sentences_per_s": round(len(rows) / seconds, 1), "epoch": ckpt.get("state", {}).get("epoch"), "step": ckpt.get("state", {}).get("step"),
    }
    picked = list(range(0, len(rows), max(1, len(rows) // max(samples, 1))))[: max(samples, attention)]
    result["samples"] = [{"src": rows[i]["src"], "hyp": hyps[i], "refs": rows[i]["refs"]} for i in picked[:samples]]
    if attention:
        from s2s.plots import draw_translation_attention

        (run / "attention").mkdir(exist_ok=True)
        result["attention_maps"] = [str(draw_translation_attention(translator, rows[i]["src"], out[i], run / "attention" / f"{n}.png"))
                                    for n, i in enumerate(picked[:attention]) if out[i].error is None]
    (run / "eval.json").write_text(json.dumps(result, indent=2, ensure_ascii=False))
    publish(run, str(run_dir), ["eval.json"])
    return result
