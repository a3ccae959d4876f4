"""The parity gate: the exported graphs must decode exactly as PyTorch does before a model is accepted."""

from __future__ import annotations

import numpy as np

from s2s.search import beam_search, greedy_search
from s2s.tokenizer import BOS_ID, EOS_ID
from s2s.translator import Engine, pad_ids


def forced_log_probs(engine: Engine, src: np.ndarray, lens: np.ndarray, outputs: list[list[int]]) -> list[np.ndarray]:
    """Feed each row its own output (teacher forcing) -> per row, log-probs (steps, V) with EOS's step last."""
    state = engine.encode(src, lens)
    steps = max(len(o) for o in outputs) + 1
    prev = np.full(len(outputs), BOS_ID, dtype=np.int64)
    per_step = []
    for t in range(steps):
        lp, state = engine.step(prev, state)
        per_step.append(lp)
        prev = np.asarray([o[t] if t < len(o) else EOS_ID for o in outputs], dtype=np.int64)
    return [np.stack([per_step[t][i] for t in range(len(o) + 1)]) for i, o in enumerate(outputs)]


def _first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def parity_gate(reference: Engine, candidate: Engine, sources: list[list[int]], batch_sizes: tuple[int, ...] = (1, 37), beam_size: int = 4,
                tolerance: float = 1e-4, max_len_a: float = 1.5, max_len_b: int = 10) -> dict:
    """Compare greedy and beam outputs and per-step log-probs of two engines on `sources` (ids with EOS).

    A different pick where the reference's two candidates are within 2 x tolerance of each other is a
    tie (each engine may be off by `tolerance`, so such a pair can swap), counted apart from divergences.
    Passes when nothing diverged and, at every step, the log-probs of the 2 x beam_size most likely tokens
    (every candidate a search of this size ranks) agree within `tolerance`. The far tail of the softmax
    (log-probs near -30 that no search can pick) carries float32 matmul noise of about 1e-4 at an 8k
    vocabulary; its max is reported as `max_abs_logprob_diff_full_vocab` but does not gate.
    """
    counts = {"greedy": {"identical": 0, "ties": 0, "divergent": 0}, f"beam{beam_size}": {"identical": 0, "ties": 0, "divergent": 0}}
    max_diff, max_full, divergences = 0.0, 0.0, []
    for bs in batch_sizes:
        for start in range(0, len(sources), bs):
            batch = sources[start : start + bs]  # kept in the given order: mixed lengths in a batch
            src, lens = pad_ids(batch)
            max_len = (max_len_a * lens + max_len_b).astype(np.int64)
            ref_g = greedy_search(reference.step, reference.encode(src, lens), len(batch), BOS_ID, EOS_ID, max_len)
            cand_g = greedy_search(candidate.step, candidate.encode(src, lens), len(batch), BOS_ID, EOS_ID, max_len)
            outs = [h.tokens for h in ref_g]
            ref_lp = forced_log_probs(reference, src, lens, outs)
            cand_lp = forced_log_probs(candidate, src, lens, outs)
            for r, c in zip(ref_lp, cand_lp):
                top = np.argsort(-r, axis=1)[:, : 2 * beam_size]  # (steps, 2K) what a search of this size can rank
                max_diff = max(max_diff, float(np.abs(np.take_along_axis(r, top, 1) - np.take_along_axis(c, top, 1)).max()))
                max_full = max(max_full, float(np.abs(r - c).max()))
            for i, (r, c) in enumerate(zip(ref_g, cand_g)):
                if r.tokens == c.tokens:
                    counts["greedy"]["identical"] += 1
                    continue
                p = _first_difference(r.tokens, c.tokens)
                picked = [h.tokens[p] if p < len(h.tokens) else EOS_ID for h in (r, c)]
                gap = abs(ref_lp[i][p][picked[0]] - ref_lp[i][p][picked[1]])
                if gap <= 2 * tolerance:
                    counts["greedy"]["ties"] += 1
                else:
                    counts["greedy"]["divergent"] += 1
                    divergences.append({"search": "greedy", "batch_size": bs, "sentence": start + i, "step": p, "tokens": picked, "gap": float(gap)})
            ref_b = beam_search(reference.step, reference.encode(src, lens), len(batch), BOS_ID, EOS_ID, max_len, beam_size)
            cand_b = beam_search(candidate.step, candidate.encode(src, lens), len(batch), BOS_ID, EOS_ID, max_len, beam_size)
            for i, (r, c) in enumerate(zip(ref_b, cand_b)):
                if r[0].tokens == c[0].tokens:
                    counts[f"beam{beam_size}"]["identical"] += 1
                elif abs(r[0].normalized - c[0].normalized) <= 2 * tolerance * (max(len(r[0].tokens), len(c[0].tokens)) + 1):
                    counts[f"beam{beam_size}"]["ties"] += 1
                else:
                    counts[f"beam{beam_size}"]["divergent"] += 1
                    divergences.append({"search": f"beam{beam_size}", "batch_size": bs, "sentence": start + i,
                                        "scores": [r[0].normalized, c[0].normalized]})
    passed = max_diff <= tolerance and not divergences
    return {"passed": passed, "sentences": len(sources), "batch_sizes": list(batch_sizes), "tolerance": tolerance,
            "max_abs_logprob_diff": max_diff, "max_abs_logprob_diff_full_vocab": max_full, **counts, "divergences": divergences[:20]}
