"""Reference outputs: recorded at export from PyTorch fp32, decoded again by every engine when it loads.

The export's parity gates check the graphs on the machine that exports them. An engine runs elsewhere: on
a GPU whose fp16 arithmetic may be wrong, with an onnxruntime build that computes differently, or from a
graph that was changed after export. So `export` keeps, in the model directory, PyTorch's greedy tokens
for a few dozen held-out sentences and the log-probs of the tokens a beam search ranks at every step
(`record`). Every engine feeds those tokens back on its own provider and variant (`check`) and refuses to
translate when its log-probs are further off than that variant's tolerance, before any row is decoded.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from s2s.search import greedy_search
from s2s.tokenizer import BOS_ID, EOS_ID, pad_ids

REFERENCE_FILE = "reference.json"
TOP = 8  # tokens compared per step: what a beam of 4 ranks (2 x beam), as the export gate does


class EngineCheckError(RuntimeError):
    """An engine decodes the reference sentences further from PyTorch than its variant allows."""


def forced_log_probs(engine, src: np.ndarray, lens: np.ndarray, outputs: list[list[int]]) -> list[np.ndarray]:
    """Feed each row its own output (teacher forcing) -> per row, log-probs (steps, V) with EOS's step last."""
    state = engine.encode(src, lens)
    steps = max(len(o) for o in outputs) + 1
    prev = np.full(len(outputs), BOS_ID, dtype=np.int64)
    per_step = []
    for t in range(steps):
        lp, state = engine.step(prev, state)
        per_step.append(lp if isinstance(lp, np.ndarray) else lp.float().cpu().numpy())  # a device tensor with I/O binding
        prev = np.asarray([o[t] if t < len(o) else EOS_ID for o in outputs], dtype=np.int64)
    return [np.stack([per_step[t][i] for t in range(len(o) + 1)]) for i, o in enumerate(outputs)]


def record(engine, sources: list[list[int]], path: Path, max_len_a: float = 1.5, max_len_b: int = 10) -> dict:
    """PyTorch's greedy tokens for `sources` (ids with EOS) and its top log-probs along them, written to `path`."""
    src, lens = pad_ids(sources)
    max_len = (max_len_a * lens + max_len_b).astype(np.int64)
    tokens = [h.tokens for h in greedy_search(engine.step, engine.encode(src, lens), len(sources), BOS_ID, EOS_ID, max_len)]
    top_ids, top_lp = [], []
    for lp in forced_log_probs(engine, src, lens, tokens):
        ids = np.argsort(-lp, axis=1)[:, :TOP]
        top_ids.append(ids.tolist())
        top_lp.append(np.take_along_axis(lp, ids, 1).astype(float).round(6).tolist())
    reference = {"sources": sources, "tokens": tokens, "top_ids": top_ids, "top_log_probs": top_lp}
    path.write_text(json.dumps(reference))
    return {"file": path.name, "sentences": len(sources), "top": TOP}


def compare(engine, reference: dict, tie: float) -> dict:
    """How far `engine` is from the reference: mean and max |delta log-prob| over each step's top tokens, and the
    steps where its pick differs from PyTorch's though PyTorch's best led its second by more than `tie`."""
    src, lens = pad_ids(reference["sources"])
    got = forced_log_probs(engine, src, lens, reference["tokens"])
    diffs, picks, steps = [], 0, 0
    for lp, ids, ref in zip(got, reference["top_ids"], reference["top_log_probs"]):
        ids, ref = np.asarray(ids), np.asarray(ref)
        mine = np.take_along_axis(lp, ids, 1)
        diffs.append(np.abs(mine - ref).ravel())
        # where the engine's best token is not PyTorch's, and PyTorch's margin for it was clear
        best = lp.argmax(axis=1)
        picks += int(np.sum((best != ids[:, 0]) & (ref[:, 0] - ref[:, 1] > tie)))
        steps += len(ids)
    d = np.concatenate(diffs)
    return {"mean_abs_logprob_diff": float(d.mean()), "max_abs_logprob_diff": float(d.max()), "other_picks": picks, "steps": steps}


def check(engine, model_dir, variant: str, provider: str) -> dict | None:
    """Decode the model directory's reference sentences on `engine`; raise EngineCheckError beyond the variant's
    tolerance (the manifest's `check` for it). None where the model was exported before references existed."""
    m = model_dir.manifest
    if "reference" not in m or "check" not in m["variants"][variant]:
        return None
    reference = json.loads(model_dir.file(m["reference"]["file"]).read_text())
    limit = m["variants"][variant]["check"]
    found = compare(engine, reference, tie=2 * limit["mean_tolerance"])
    off = found["mean_abs_logprob_diff"] > limit["mean_tolerance"] or found["other_picks"] > limit["max_other_picks"] * found["steps"]
    if off:
        raise EngineCheckError(
            f"{model_dir.path}: variant {variant} on {provider} decodes the export's {len(reference['tokens'])} reference sentences "
            f"off PyTorch by mean |delta log-prob| {found['mean_abs_logprob_diff']:.3g} (allowed {limit['mean_tolerance']:g}; max "
            f"{found['max_abs_logprob_diff']:.3g}), with another token picked at {found['other_picks']} of {found['steps']} steps. "
            "Refusing to translate with it: the onnxruntime build, the device's arithmetic or the graph is wrong. "
            "Try another --variant or --device, or re-export the model.")
    return found
