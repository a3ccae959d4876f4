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

from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class Constraints:
    """What the search forbids or discourages at each step, with the names CTranslate2 and fairseq use.
    The defaults change nothing."""

    no_repeat_ngram_size: int = 0  # never produce an n-gram of this size twice in one output (0: off)
    repetition_penalty: float = 1.0  # > 1 makes tokens already in the output less likely (their log-prob times this)
    min_decoding_length: int = 0  # no EOS before this many output tokens

    def active(self) -> bool:
        return self.no_repeat_ngram_size > 0 or self.repetition_penalty != 1.0 or self.min_decoding_length > 0


NO_CONSTRAINTS = Constraints()


@dataclass(frozen=True)
class Sampling:
    """Random sampling instead of the argmax, in greedy search (back-translation, data augmentation);
    CTranslate2's names and meaning. The defaults pick the argmax."""

    topk: int = 1  # sample among the k most likely tokens; 1: the argmax (no sampling); 0: among all
    topp: float = 1.0  # ... and among the fewest whose probabilities add up to this
    temperature: float = 1.0  # log-probs divided by this before sampling

    def active(self) -> bool:
        return self.topk != 1


NO_SAMPLING = Sampling()


def _sample(log_probs, s: Sampling, draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One token per row from the filtered, tempered distribution, by inverse CDF on `draws` (uniform, one per row);
    returns the tokens and their model log-probs (untempered)."""
    lp = log_probs if isinstance(log_probs, np.ndarray) else log_probs.float().cpu().numpy()
    order = np.argsort(-lp, axis=1, kind="stable")  # best first; ties: lower id first
    ranked = np.take_along_axis(lp, order, 1) / s.temperature
    keep = np.isfinite(ranked)
    if s.topk > 0:
        keep[:, s.topk :] = False
    probs = np.exp(ranked - ranked[:, :1])
    probs = np.where(keep, probs, 0.0)
    probs /= probs.sum(axis=1, keepdims=True)
    if s.topp < 1.0:  # the fewest best tokens whose mass reaches topp (always the best one)
        before = np.cumsum(probs, axis=1) - probs
        probs = np.where(before < s.topp, probs, 0.0)
        probs /= probs.sum(axis=1, keepdims=True)
    pick = np.minimum((np.cumsum(probs, axis=1) < draws[:, None]).sum(axis=1), (probs > 0).sum(axis=1) - 1)  # rounding: the last kept
    tokens = order[np.arange(len(lp)), pick]
    return tokens, lp[np.arange(len(lp)), tokens]


def _banned_ngram_ends(history: list[int], n: int) -> list[int]:
    """Tokens that would complete an n-gram `history` already holds (fairseq's no_repeat_ngram_size)."""
    if n <= 0 or len(history) < n - 1:
        return []
    if n == 1:
        return list(set(history))
    prefix = history[len(history) - n + 1 :]
    return [history[i + n - 1] for i in range(len(history) - n + 1) if history[i : i + n - 1] == prefix]


def forced_tokens(prefixes: list[list[int]] | None, sentences: np.ndarray, t: int) -> np.ndarray | None:
    """Each row's token at step t of its sentence's target prefix, -1 past it; None where no row has one."""
    if not prefixes:
        return None
    forced = np.asarray([prefixes[b][t] if t < len(prefixes[b]) else -1 for b in sentences], dtype=np.int64)
    return forced if (forced >= 0).any() else None


def constrain(log_probs, history: np.ndarray, t: int, eos: int, c: Constraints, forced: np.ndarray | None = None):
    """Apply `c` to one step's log-probs (numpy, or a torch tensor where it is) for rows whose outputs so far are
    `history` (rows, t): banned tokens get -inf, penalized rows are renormalized (scores stay log-probabilities).
    A row left with nothing allowed may still end (EOS keeps its log-prob). A row with a `forced` token (its
    target prefix; -1: none) may take only that one, whatever else applies."""
    if not c.active() and forced is None:
        return log_probs
    if isinstance(log_probs, np.ndarray):
        xp, lp = np, log_probs.copy()

        def index(a):
            return np.asarray(a, dtype=np.int64)
    else:
        import torch

        xp, lp = torch, log_probs.clone()

        def index(a):
            return torch.as_tensor(np.asarray(a, dtype=np.int64), device=lp.device)
    eos_lp = lp[:, eos].copy() if xp is np else lp[:, eos].clone()
    if c.repetition_penalty != 1.0 and t:
        pairs = np.unique(np.stack([np.repeat(np.arange(len(history)), t), history.reshape(-1)], 1), axis=0)  # each token once a row
        lp[index(pairs[:, 0]), index(pairs[:, 1])] *= c.repetition_penalty
        if xp is np:
            m = lp.max(axis=1, keepdims=True)
            lp = lp - (m + np.log(np.exp(lp - m).sum(axis=1, keepdims=True)))
        else:
            lp = torch.log_softmax(lp, dim=1)
        eos_lp = lp[:, eos].copy() if xp is np else lp[:, eos].clone()
    rows, toks = [], []
    if c.no_repeat_ngram_size:
        for r, h in enumerate(history.tolist()):
            banned = _banned_ngram_ends(h, c.no_repeat_ngram_size)
            rows += [r] * len(banned)
            toks += banned
    if t < c.min_decoding_length:
        rows += list(range(len(history)))
        toks += [eos] * len(history)
    if rows:
        lp[index(rows), index(toks)] = -np.inf
        stuck = ~(lp > -np.inf).any(1)  # nothing allowed: let the row end rather than pick a -inf token
        if stuck.any():
            lp[stuck, eos] = eos_lp[stuck]
    if forced is not None:
        rows = np.nonzero(forced >= 0)[0]
        kept = log_probs[index(rows), index(forced[rows])]  # the model's own log-prob of the prefix token
        lp[index(rows)] = -np.inf
        lp[index(rows), index(forced[rows])] = kept
    return lp


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float  # sum of log-probabilities, EOS included when it ended
    normalized: float  # score / len**length_penalty, what beams are ranked by
    # with details=True: each token's log-prob, and the source position its step attended to most (its alignment)
    token_scores: list[float] = field(default_factory=list)
    alignment: list[int] = field(default_factory=list)


def _argmax_rows(x) -> np.ndarray:
    """Each row's argmax, reduced where `x` is (numpy, or a torch tensor on its device)."""
    return x.argmax(axis=1) if isinstance(x, np.ndarray) else x.argmax(dim=1).cpu().numpy()


def greedy_search(step: StepFn, state: State, batch: int, bos: int, eos: int, max_len: np.ndarray,
                  constraints: Constraints = NO_CONSTRAINTS, sampling: Sampling = NO_SAMPLING,
                  seeds: list | None = None, prefixes: list[list[int]] | None = None, details: bool = False) -> list[Hypothesis]:
    """Pick the most likely allowed token at every step, or sample one; rows that finished are dropped from the state.

    Sampling draws each row's numbers from its own generator, seeded by `seeds` (one per row): a row's sample
    depends on its seed, never on the rows beside it."""
    rngs = [np.random.default_rng(seed) for seed in (seeds or [0] * batch)] if sampling.active() else []
    tokens = np.zeros((batch, max(1, int(max_len.max()))), dtype=np.int64)  # (batch, step): the pick of each row at each step
    step_lp = np.zeros(tokens.shape)  # its log-probability
    step_att = np.zeros(tokens.shape, dtype=np.int64)  # with details: the source position it attended to most
    steps = np.zeros(batch, dtype=np.int64)  # steps each row took, its EOS step included
    ended = np.zeros(batch, dtype=bool)  # whether that last step picked EOS
    active = np.arange(batch)
    prev = np.full(batch, bos, dtype=np.int64)
    t = 0
    while len(active):
        log_probs, state = step(prev, state)
        log_probs = constrain(log_probs, tokens[active, :t], t, eos, constraints, forced_tokens(prefixes, active, t))
        if rngs:
            best, best_lp = _sample(log_probs, sampling, np.asarray([rngs[b].random() for b in active]))
        else:
            best, best_lp = _best(log_probs)
        tokens[active, t], step_lp[active, t] = best, best_lp
        if details:
            step_att[active, t] = _argmax_rows(state["attention"])
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
        n = steps[b] - ended[b]
        hyps.append(Hypothesis(tokens[b, :n].tolist(), score, score, *((step_lp[b, :n].tolist(), step_att[b, :n].tolist()) if details else ())))
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
    constraints: Constraints = NO_CONSTRAINTS,
    prefixes: list[list[int]] | None = None,
    details: bool = False,
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
    seq_lp, seq_att = np.zeros((batch, K, 0)), np.zeros((batch, K, 0), dtype=np.int64)  # with details: their log-probs, alignment
    prev = np.full(batch * K, bos, dtype=np.int64)
    ranks = np.arange(2 * K)[None, :]
    t = 0
    while len(active):
        log_probs, state = step(prev, state)
        n, V = len(active), log_probs.shape[1]
        log_probs = constrain(log_probs, seqs.reshape(n * K, t), t, eos, constraints, forced_tokens(prefixes, np.repeat(active, K), t))
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
        if details:
            top_lp = np.take_along_axis(beam_lp.reshape(n, K * k2), order, 1)  # each candidate token's own log-prob
            att = _argmax_rows(state["attention"]).reshape(n, K)  # what each parent beam's step attended to
        at_max = t + 1 >= max_len[active]  # (n,)
        finite = np.isfinite(top_scores)
        ends = ((tok == eos) | at_max[:, None]) & finite
        for j, r in zip(*np.nonzero(ends & (ranks[:, : top.shape[1]] < K))):
            b, bm, tk, sc = active[j], beam[j, r], int(tok[j, r]), float(top_scores[j, r])
            toks = seqs[j, bm].tolist() + ([] if tk == eos else [tk])
            length = len(toks) + (1 if tk == eos else 0)
            more = ((seq_lp[j, bm].tolist() + ([] if tk == eos else [float(top_lp[j, r])]),
                     seq_att[j, bm].tolist() + ([] if tk == eos else [int(att[j, bm])])) if details else ())
            finished[b].append(Hypothesis(toks, sc, sc / (max(length, 1) ** length_penalty), *more))
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
        if details:
            seq_lp = np.concatenate([seq_lp[rows, pick_beam], np.take_along_axis(top_lp, pick, 1)[alive][..., None]], axis=2)
            seq_att = np.concatenate([seq_att[rows, pick_beam], np.take_along_axis(att[alive], pick_beam, 1)[..., None]], axis=2)
        scores, prev, active = pick_scores[alive], pick_tok.reshape(-1), active[alive]
    return [sorted(f, key=lambda h: -h.normalized)[:nbest] for f in finished]
