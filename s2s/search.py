"""Greedy and beam search, written once over a step function.

An engine (PyTorch in `engines.py`, onnxruntime in `s2s.export.runtime`) supplies

    step(prev_tokens: np.ndarray (N,), state) -> (log_probs: np.ndarray (N, V), new_state)

where `state` is a dict of arrays (numpy or torch) whose first axis is the row. The search only picks,
reorders and drops rows of the state with `select_state`; it never looks inside.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

State = dict[str, Any]
StepFn = Callable[[np.ndarray, State], tuple[np.ndarray, State]]


def select_state(state: State, rows: np.ndarray) -> State:
    """Keep/reorder/repeat rows of every array in the state (numpy or torch indexing alike)."""
    out = {}
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            out[k] = v[rows]
        else:  # torch.Tensor, kept on its device
            import torch

            out[k] = v.index_select(0, torch.as_tensor(rows, device=v.device))
    return out


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float  # sum of log-probabilities, EOS included when it ended
    normalized: float  # score / len**length_penalty, what beams are ranked by
    step_log_probs: list[float] = field(default_factory=list)


def greedy_search(step: StepFn, state: State, batch: int, bos: int, eos: int, max_len: np.ndarray) -> list[Hypothesis]:
    """Pick the most likely token at every step; rows that finished are dropped from the state."""
    tokens: list[list[int]] = [[] for _ in range(batch)]
    step_lp: list[list[float]] = [[] for _ in range(batch)]
    active = np.arange(batch)
    prev = np.full(batch, bos, dtype=np.int64)
    t = 0
    while len(active):
        log_probs, state = step(prev, state)
        best = log_probs.argmax(axis=1)
        best_lp = log_probs[np.arange(len(active)), best]
        keep = []
        for j, b in enumerate(active):
            step_lp[b].append(float(best_lp[j]))
            if best[j] == eos:
                continue
            tokens[b].append(int(best[j]))
            if t + 1 < max_len[b]:
                keep.append(j)
        t += 1
        if len(keep) < len(active):
            keep_arr = np.asarray(keep, dtype=np.int64)
            state, active, prev = select_state(state, keep_arr), active[keep_arr], best[keep_arr]
        else:
            prev = best
    hyps = []
    for b in range(batch):
        score = float(sum(step_lp[b]))
        hyps.append(Hypothesis(tokens[b], score, score, step_lp[b]))
    return hyps


def beam_search(
    step: StepFn,
    state: State,
    batch: int,
    bos: int,
    eos: int,
    max_len: np.ndarray,
    beam_size: int = 4,
    length_penalty: float = 1.0,
    nbest: int = 1,
) -> list[list[Hypothesis]]:
    """Beam search; returns for each input its `nbest` hypotheses, best first.

    At every step each sentence keeps the `beam_size` best unfinished continuations; a candidate ending
    in EOS among the top `beam_size` is finished. A sentence stops when it has `beam_size` finished
    hypotheses (all beams ended) or reaches max_len. Ranking divides the summed log-probability by
    length**length_penalty (CTranslate2's convention; 0 means no normalization). Beam size 1 is greedy.
    """
    if beam_size < 1 or not 1 <= nbest <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= nbest <= beam_size, got {beam_size}, {nbest}")
    K = beam_size
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = np.arange(batch)  # sentences still searching
    state = select_state(state, np.repeat(np.arange(batch), K))  # rows: sentence-major, K beams each
    scores = np.full((batch, K), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs = np.zeros((batch, K, 0), dtype=np.int64)
    seq_lp = np.zeros((batch, K, 0))
    prev = np.full(batch * K, bos, dtype=np.int64)

    def norm(score: float, length: int) -> float:
        return score / (max(length, 1) ** length_penalty)

    t = 0
    while len(active):
        log_probs, state = step(prev, state)
        n, V = len(active), log_probs.shape[1]
        cand = (scores[:, :, None] + log_probs.reshape(n, K, V)).reshape(n, K * V)
        top = np.argsort(-cand, axis=1, kind="stable")[:, : 2 * K]  # (n, 2K) best first
        next_rows, next_tok, next_scores, keep_sent = [], [], [], []
        new_seqs, new_lp = [], []
        for j, b in enumerate(active):
            kept: list[tuple[int, int, float]] = []
            for rank, flat in enumerate(top[j]):
                beam, tok, sc = flat // V, flat % V, cand[j, flat]
                if not np.isfinite(sc):
                    break
                lp_here = log_probs[j * K + beam, tok]
                if tok == eos or t + 1 >= max_len[b]:
                    if rank < K:
                        toks = seqs[j, beam].tolist() + ([] if tok == eos else [int(tok)])
                        length = len(toks) + (1 if tok == eos else 0)
                        finished[b].append(Hypothesis(toks, float(sc), norm(float(sc), length), seq_lp[j, beam].tolist() + [float(lp_here)]))
                    continue
                if len(kept) < K:
                    kept.append((beam, tok, sc))
            if len(finished[b]) >= K or t + 1 >= max_len[b] or not kept:
                continue
            while len(kept) < K:  # fewer live candidates than beams: pad with dead beams
                kept.append((kept[0][0], kept[0][1], -np.inf))
            keep_sent.append(j)
            next_rows.extend(j * K + beam for beam, _, _ in kept)
            next_tok.extend(tok for _, tok, _ in kept)
            next_scores.append([sc for _, _, sc in kept])
            new_seqs.append([np.append(seqs[j, beam], tok) for beam, tok, _ in kept])
            new_lp.append([np.append(seq_lp[j, beam], log_probs[j * K + beam, tok]) for beam, tok, _ in kept])
        t += 1
        if not keep_sent:
            break
        state = select_state(state, np.asarray(next_rows, dtype=np.int64))
        active = active[np.asarray(keep_sent)]
        prev = np.asarray(next_tok, dtype=np.int64)
        scores = np.asarray(next_scores)
        seqs = np.asarray(new_seqs, dtype=np.int64)
        seq_lp = np.asarray(new_lp)
    results = []
    for b in range(batch):
        ranked = sorted(finished[b], key=lambda h: -h.normalized)
        results.append(ranked[:nbest])
    return results
