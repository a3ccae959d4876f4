"""The parity gate: the exported graphs must decode exactly as PyTorch does before a model is accepted."""

from __future__ import annotations

import numpy as np

from s2s.reference import forced_log_probs
from s2s.search import beam_search, greedy_search
from s2s.tokenizer import BOS_ID, EOS_ID
from s2s.tokenizer import pad_ids
from s2s.translator import Engine


def _first_difference(a: list[int], b: list[int]) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def parity_gate(reference: Engine, candidate: Engine, sources: list[list[int]], batch_sizes: tuple[int, ...] = (1, 37), beam_size: int = 4,
                tolerance: float = 1e-4, max_len_a: float = 1.5, max_len_b: int = 10, mean_tolerance: float | None = None,
                max_divergent: float = 0.0) -> dict:
    """Compare greedy and beam outputs and per-step log-probs of two engines on `sources` (ids with EOS).

    The log-probs of the 2 x beam_size most likely tokens at every step (every candidate a search of this
    size ranks) must agree within the gate's tolerance: `tolerance`, or twice the reference's own float32
    noise where that is larger. That noise is how far the reference's log-probs for the same sentence move
    between batch sizes (a different matmul blocking rounds differently); a sharper model has more of it,
    and a graph need not be closer to PyTorch than PyTorch is to itself. A wrong graph is off by orders
    of magnitude more (tests/test_export.py perturbs one weight by 1%). The far tail of the softmax
    (log-probs near -30 that no search can pick) is reported as `max_abs_logprob_diff_full_vocab` but does not gate.
    A different pick where the reference's two candidates are within 2 x the gate's tolerance of each
    other is a tie (each engine may be off by that much, so such a pair can swap), counted apart from divergences.

    The int8 variant's gate is statistical, as quantization error is: with `mean_tolerance` the scores are
    gated by the mean |delta log-prob| over those tokens instead of the max (quantization moves a few
    low-ranked tokens by up to 2 nats while the mean stays near 0.04, docs/results.md), and `max_divergent`
    is the share of outputs that may diverge beyond a tie (its error compounds over the steps of a sentence).
    """
    max_diff, max_full, noise, diff_sum, diff_count = 0.0, 0.0, 0.0, 0.0, 0
    first = {}  # sentence -> the reference's greedy tokens, top ids and their log-probs at the first batch size
    greedy, beam = [], []  # per sentence and batch size: None where identical, else what decides tie or divergence
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
            for i, (r, c) in enumerate(zip(ref_lp, cand_lp)):
                top = np.argsort(-r, axis=1)[:, : 2 * beam_size]  # (steps, 2K) what a search of this size can rank
                ref_top = np.take_along_axis(r, top, 1)
                diff = np.abs(ref_top - np.take_along_axis(c, top, 1))
                max_diff, diff_sum, diff_count = max(max_diff, float(diff.max())), diff_sum + float(diff.sum()), diff_count + diff.size
                max_full = max(max_full, float(np.abs(r - c).max()))
                seen = first.setdefault(start + i, (outs[i], top, ref_top))
                if seen[0] == outs[i] and seen[1] is not top:
                    noise = max(noise, float(np.abs(np.take_along_axis(r, seen[1], 1) - seen[2]).max()))
            for i, (r, c) in enumerate(zip(ref_g, cand_g)):
                if r.tokens != c.tokens:
                    p = _first_difference(r.tokens, c.tokens)
                    picked = [h.tokens[p] if p < len(h.tokens) else EOS_ID for h in (r, c)]
                    gap = float(abs(ref_lp[i][p][picked[0]] - ref_lp[i][p][picked[1]]))
                    greedy.append({"search": "greedy", "batch_size": bs, "sentence": start + i, "step": p, "tokens": picked, "gap": gap})
                else:
                    greedy.append(None)
            ref_b = beam_search(reference.step, reference.encode(src, lens), len(batch), BOS_ID, EOS_ID, max_len, beam_size)
            cand_b = beam_search(candidate.step, candidate.encode(src, lens), len(batch), BOS_ID, EOS_ID, max_len, beam_size)
            for i, (r, c) in enumerate(zip(ref_b, cand_b)):
                if r[0].tokens != c[0].tokens:
                    beam.append({"search": f"beam{beam_size}", "batch_size": bs, "sentence": start + i, "scores": [r[0].normalized, c[0].normalized],
                                 "steps": max(len(r[0].tokens), len(c[0].tokens)) + 1})
                else:
                    beam.append(None)

    gate_tolerance = max(tolerance, 2 * noise)
    counts, divergences = {}, []
    for name, found in (("greedy", greedy), (f"beam{beam_size}", beam)):
        counts[name] = {"identical": found.count(None), "ties": 0, "divergent": 0}
        for d in filter(None, found):
            # each engine may be off by the gate's tolerance per step, so candidates closer than twice it can swap
            tie = d["gap"] <= 2 * gate_tolerance if "gap" in d else abs(d["scores"][0] - d["scores"][1]) <= 2 * gate_tolerance * d["steps"]
            counts[name]["ties" if tie else "divergent"] += 1
            if not tie:
                divergences.append(d)
    mean_diff = diff_sum / max(diff_count, 1)
    scores_agree = max_diff <= gate_tolerance if mean_tolerance is None else mean_diff <= mean_tolerance
    outputs = 2 * len(sources) * len(batch_sizes)  # greedy and beam, at each batch size
    return {"passed": scores_agree and len(divergences) <= max_divergent * outputs, "sentences": len(sources), "batch_sizes": list(batch_sizes), "tolerance": tolerance,
            "reference_noise": noise, "gate_tolerance": gate_tolerance, "mean_tolerance": mean_tolerance, "max_divergent": max_divergent,
            "max_abs_logprob_diff": max_diff, "mean_abs_logprob_diff": mean_diff, "max_abs_logprob_diff_full_vocab": max_full, **counts,
            "outputs": outputs,
            "divergent": len(divergences), "divergences": divergences[:20]}
