"""Greedy and beam search, written once over a step function.

An engine (`TorchEngine` in `s2s.translator`, `OrtEngine` in `s2s.engine`) supplies

    step(prev_tokens: np.ndarray (N,), state) -> (log_probs (N, V), new_state)

where `state` is a dict of arrays (numpy or torch) whose first axis is the row, and `log_probs` a numpy
array or a torch tensor on the engine's device. A tensor is reduced where it is (`_best`, `_top_k`): on a
GPU the (N, V) log-probs never leave it, and only each row's few candidate ids and scores come back. The search only picks,
reorders and drops rows of the state with `select_state`; it never looks inside. Beam search knows one
thing more: `memory` and `mask`, the encoder's outputs, are equal across a sentence's beams, so they are
copied only when a sentence ends, not at every step's reorder of beams (the largest arrays of the state).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

State = dict[str, Any]
StepFn = Callable[[np.ndarray, State], tuple[np.ndarray, State]]
PER_SENTENCE = ("memory", "mask")  # state entries equal for every beam of a sentence


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


def _best(log_probs) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most likely token and its log-prob (the first on a tie), reduced where the log-probs are."""
    if isinstance(log_probs, np.ndarray):
        best = log_probs.argmax(axis=1)
        return best, log_probs[np.arange(len(best)), best]
    values, best = log_probs.max(dim=1)
    return best.cpu().numpy(), values.cpu().numpy()


def _top_k(log_probs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most likely tokens' log-probs and ids, best first, reduced where the log-probs are."""
    import torch  # here, not at the top: Ray's read and commit workers import this module and need no torch

    if isinstance(log_probs, np.ndarray):
        log_probs = torch.from_numpy(np.ascontiguousarray(log_probs, dtype=np.float32))
    values, ids = log_probs.topk(k, dim=1)
    return values.cpu().numpy(), ids.cpu().numpy()


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float  # sum of log-probabilities, EOS included when it ended
    normalized: float  # score / len**length_penalty, what beams are ranked by


def greedy_search(step: StepFn, state: State, batch: int, bos: int, eos: int, max_len: np.ndarray) -> list[Hypothesis]:
    """Pick the most likely token at every step; rows that finished are dropped from the state."""
    tokens = np.zeros((batch, max(1, int(max_len.max()))), dtype=np.int64)  # (batch, step): the pick of each row at each step
    step_lp = np.zeros(tokens.shape)  # its log-probability
    steps = np.zeros(batch, dtype=np.int64)  # steps each row took, its EOS step included
    ended = np.zeros(batch, dtype=bool)  # whether that last step picked EOS
    active = np.arange(batch)
    prev = np.full(batch, bos, dtype=np.int64)
    t = 0
    while len(active):
        log_probs, state = step(prev, state)
        best, best_lp = _best(log_probs)
        tokens[active, t], step_lp[active, t] = best, best_lp
        is_eos = best == eos
        done = is_eos | (t + 1 >= max_len[active])
        finished = active[done]
        steps[finished], ended[finished] = t + 1, is_eos[done]
        t += 1
        if done.any():
            keep = np.nonzero(~done)[0]
            state, active, prev = select_state(state, keep), active[keep], best[keep]
        else:
            prev = best
    hyps = []
    for b in range(batch):
        score = float(sum(step_lp[b, : steps[b]].tolist()))  # summed in Python, in step order, as before
        hyps.append(Hypothesis(tokens[b, : steps[b] - ended[b]].tolist(), score, score))
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
    All sentences and beams advance together in arrays; only finished hypotheses are handled one by one.
    """
    if beam_size < 1 or not 1 <= nbest <= beam_size:
        raise ValueError(f"need beam_size >= 1 and 1 <= nbest <= beam_size, got {beam_size}, {nbest}")
    K = beam_size
    finished: list[list[Hypothesis]] = [[] for _ in range(batch)]
    active = np.arange(batch)  # sentences still searching
    state = select_state(state, np.repeat(np.arange(batch), K))  # rows: sentence-major, K beams each
    scores = np.full((batch, K), -np.inf)
    scores[:, 0] = 0.0  # all beams start identical: expand only the first
    seqs = np.zeros((batch, K, 0), dtype=np.int64)  # (n, K, t) tokens so far
    prev = np.full(batch * K, bos, dtype=np.int64)
    ranks = np.arange(2 * K)[None, :]
    t = 0
    while len(active):
        log_probs, state = step(prev, state)
        n, V = len(active), log_probs.shape[1]
        # The 2K best continuations of a sentence are among the 2K best tokens of each of its beams (a beam's
        # score is one constant added to all its tokens), so top-k per beam first: torch.topk does it ~20x
        # faster than numpy's argpartition over the whole (n, K*V) row, which dominated beam search time.
        k2 = min(2 * K, V)
        beam_lp, beam_tok = _top_k(log_probs, k2)
        part = (np.arange(K)[None, :, None] * V + beam_tok.reshape(n, K, k2)).reshape(n, K * k2)  # index into K*V
        part_scores = (scores[:, :, None] + beam_lp.reshape(n, K, k2)).reshape(n, K * k2)
        order = np.lexsort((part, -part_scores), axis=1)[:, : 2 * K]  # best first; ties: lower index, as argmax
        top = np.take_along_axis(part, order, 1)  # (n, 2K)
        top_scores = np.take_along_axis(part_scores, order, 1)
        beam, tok = top // V, top % V
        at_max = t + 1 >= max_len[active]  # (n,)
        finite = np.isfinite(top_scores)
        ends = ((tok == eos) | at_max[:, None]) & finite
        for j, r in zip(*np.nonzero(ends & (ranks[:, : top.shape[1]] < K))):
            b, bm, tk, sc = active[j], beam[j, r], int(tok[j, r]), float(top_scores[j, r])
            toks = seqs[j, bm].tolist() + ([] if tk == eos else [tk])
            length = len(toks) + (1 if tk == eos else 0)
            finished[b].append(Hypothesis(toks, sc, sc / (max(length, 1) ** length_penalty)))
        cont = finite & ~ends
        keep = cont & (np.cumsum(cont, axis=1) <= K)  # the K best live continuations of each sentence
        n_done = np.asarray([len(finished[b]) for b in active])
        alive = np.nonzero((n_done < K) & ~at_max & keep.any(axis=1))[0]
        t += 1
        if not len(alive):
            break
        pick = np.argsort(~keep, axis=1, kind="stable")[:, :K]  # kept candidates first, in rank order
        pick_scores = np.where(np.take_along_axis(keep, pick, 1), np.take_along_axis(top_scores, pick, 1), -np.inf)
        pick_beam, pick_tok = np.take_along_axis(beam, pick, 1)[alive], np.take_along_axis(tok, pick, 1)[alive]  # (m, K)
        rows = alive[:, None]
        fixed = {k: v for k, v in state.items() if k in PER_SENTENCE}
        state = select_state({k: v for k, v in state.items() if k not in PER_SENTENCE}, (rows * K + pick_beam).reshape(-1))
        # a sentence's beams share its encoder outputs: they move only when sentences end
        state.update(fixed if len(alive) == n else select_state(fixed, (rows * K + np.arange(K)).reshape(-1)))
        seqs = np.concatenate([seqs[rows, pick_beam], pick_tok[..., None]], axis=2)
        scores, prev, active = pick_scores[alive], pick_tok.reshape(-1), active[alive]
    return [sorted(f, key=lambda h: -h.normalized)[:nbest] for f in finished]
