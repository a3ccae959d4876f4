"""Greedy and beam search, written once over a step function.

An engine (`TorchEngine` in `s2s.translator`, `OrtEngine` in `s2s.engine`) supplies

    step(prev_tokens: np.ndarray (N,), state) -> (log_probs (N, V), new_state)

where `state` is a dict of arrays (numpy or torch) whose first axis is the row, and `log_probs` a numpy
array or a torch tensor on the engine's device. A tensor is reduced where it is (`_best`, `_ranked`,
`_candidates`): on a GPU each step brings one small array back (greedy: each row's pick and its log-prob; beam:
each sentence's 2K best continuations, merged over its beams on the device; sampling: each row's top-k, the whole
row only when sampling among all tokens). Constraints, a glossary and `details` add copies of their own. The
search only picks, reorders and drops rows of the state with `select_state`; it never looks inside. Beam search knows one
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
    out, on_device = {}, {}  # the rows copied to each device once, not once per tensor
    for k, v in state.items():
        if isinstance(v, np.ndarray):
            out[k] = v[rows]
        else:  # torch.Tensor, kept on its device
            if v.device not in on_device:
                import torch

                on_device[v.device] = torch.as_tensor(rows, device=v.device)
            out[k] = v.index_select(0, on_device[v.device])
    return out


def _best(log_probs) -> tuple[np.ndarray, np.ndarray]:
    """Each row's most likely token and its log-prob (the first on a tie), reduced where the log-probs are."""
    if isinstance(log_probs, np.ndarray):
        best = log_probs.argmax(axis=1)
        return best, log_probs[np.arange(len(best)), best]
    values, best = log_probs.max(dim=1)
    both = _to_host(best, values)  # one copy, one wait
    return both[0].astype(np.int64), both[1]


def _to_host(*tensors) -> np.ndarray:
    """Tensors of one shape, stacked on their device and brought to the host in one copy, as float64 (exact for
    float32 values and for ids below 2**53): each copy from a GPU waits for its queue, so a step makes one."""
    import torch

    return torch.stack([t.double() for t in tensors]).cpu().numpy()


def _index(a, like):
    """Integer indices for `like` (numpy, or a torch tensor on its device), from a list or array."""
    a = np.asarray(a, dtype=np.int64)
    if isinstance(like, np.ndarray):
        return a
    import torch

    return torch.as_tensor(a, device=like.device)


def _top_k(log_probs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's k most likely tokens' log-probs and ids, best first, reduced where the log-probs are."""
    import torch  # here, not at the top: Ray's read and commit workers import this module and need no torch

    if isinstance(log_probs, np.ndarray):
        log_probs = torch.from_numpy(np.ascontiguousarray(log_probs, dtype=np.float32))
        values, ids = log_probs.topk(k, dim=1)
        return values.numpy(), ids.numpy()
    values, ids = log_probs.topk(k, dim=1)
    both = _to_host(values, ids)
    return both[0].astype(np.float32), both[1].astype(np.int64)


def _per_beam(log_probs, scores: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sentence's candidates from the 2K best tokens of each of its K beams, as numpy (n, K * 2K): index
    (beam * V + token), score (the beam's plus the token's log-prob) and the token's own log-prob.

    The 2K best continuations of a sentence are among these (a beam's score is one constant added to all its
    tokens), so top-k per beam first: torch.topk does it ~20x faster than numpy's argpartition over the whole
    (n, K*V) row, which dominated beam search time."""
    n, V = len(scores), log_probs.shape[1]
    k2 = min(2 * K, V)
    beam_lp, beam_tok = _top_k(log_probs, k2)
    part = (np.arange(K)[None, :, None] * V + beam_tok.reshape(n, K, k2)).reshape(n, K * k2)
    part_scores = (scores[:, :, None] + beam_lp.reshape(n, K, k2)).reshape(n, K * k2)
    return part, part_scores, beam_lp.reshape(n, K * k2)


def _candidates(log_probs, scores: np.ndarray, K: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each sentence's 2K best continuations over its K beams, best first (ties: the lower index beam * V + token,
    as an argmax over the sentence's K*V scores would pick): index, score and the token's own log-prob, each (n, 2K)
    numpy. On a tensor the per-beam top-k and the merge run where it is, and only these come back, in one copy.
    numpy log-probs (onnxruntime's CPU provider) are merged with numpy: the same rule in torch's ops cost about 30%
    of beam 4's speed at batch 1 on a 2-core EPYC (each op's dispatch, on arrays of a few dozen values)."""
    if isinstance(log_probs, np.ndarray):
        part, part_scores, part_lp = _per_beam(log_probs, scores, K)
        order = np.lexsort((part, -part_scores), axis=1)[:, : 2 * K]
        take = lambda a: np.take_along_axis(a, order, 1)  # noqa: E731
        return take(part), take(part_scores), take(part_lp)
    import torch

    n, V = len(scores), log_probs.shape[1]
    k2 = min(2 * K, V)
    beam_lp, beam_tok = log_probs.topk(k2, dim=1)
    offsets = torch.arange(K, device=log_probs.device)[None, :, None] * V
    part = (offsets + beam_tok.view(n, K, k2)).view(n, K * k2)
    part_lp = beam_lp.view(n, K * k2).double()
    part_scores = torch.as_tensor(scores, device=log_probs.device).repeat_interleave(k2, dim=1) + part_lp
    by_index = part.argsort(dim=1)  # then a stable sort by score: ties keep the lower index first
    part, part_scores, part_lp = (a.gather(1, by_index) for a in (part, part_scores, part_lp))
    order = torch.sort(part_scores, dim=1, descending=True, stable=True).indices[:, : 2 * K]
    top, top_scores, top_lp = _to_host(*(a.gather(1, order) for a in (part, part_scores, part_lp)))
    return top.astype(np.int64), top_scores, top_lp


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
    lp, order = _ranked(log_probs, s.topk)
    ranked = lp / s.temperature
    keep = np.isfinite(ranked)
    probs = np.exp(ranked - ranked[:, :1])
    probs = np.where(keep, probs, 0.0)
    probs /= probs.sum(axis=1, keepdims=True)
    if s.topp < 1.0:  # the fewest best tokens whose mass reaches topp (always the best one)
        before = np.cumsum(probs, axis=1) - probs
        probs = np.where(before < s.topp, probs, 0.0)
        probs /= probs.sum(axis=1, keepdims=True)
    pick = np.minimum((np.cumsum(probs, axis=1) < draws[:, None]).sum(axis=1), (probs > 0).sum(axis=1) - 1)  # rounding: the last kept
    rows = np.arange(len(lp))
    return order[rows, pick], lp[rows, pick]


def _ranked(log_probs, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each row's log-probs sorted best first (ties: the lower id first) and their ids, the first k (0: all), as
    numpy; sorted where the log-probs are, and only those k come back."""
    import torch

    k = k or log_probs.shape[1]
    if isinstance(log_probs, np.ndarray):
        log_probs = torch.from_numpy(np.ascontiguousarray(log_probs))
    values, order = torch.sort(log_probs.float(), dim=1, descending=True, stable=True)
    both = _to_host(values[:, :k], order[:, :k])
    return both[0].astype(np.float32), both[1].astype(np.int64)


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
    else:
        import torch

        xp, lp = torch, log_probs.clone()

    def index(a):
        return _index(a, lp)

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


# Lexically constrained beam search (a glossary): each sentence may come with token sequences its output must
# contain. A beam's progress is (sequences met, the one under way or -1, how far into it); `_advance` moves it
# by one output token. Beams are chosen by dynamic beam allocation (Post and Vilar 2018, fairseq's
# --constraints): candidates are grouped in banks by how many required tokens they have produced, and the beam
# takes the best of each bank in turn, fullest bank first, so that a hypothesis that has started a term is not
# crowded out by likelier ones that have not. A sentence with unmet terms may not end (EOS is banned) until
# max_len. Sentences with nothing required are ranked exactly as without constraints.
# A term is a whole word: the token after its last may not glue onto it (`glue`: ids of tokens that continue a
# word, which the translator knows from its vocabulary), or "bien" + "t" would meet "bien" as "bient".
Progress = tuple[frozenset, int, int, bool]  # (met, under way or -1, position in it, a term just ended)
NO_PROGRESS: Progress = (frozenset(), -1, 0, False)


def _advance(p: Progress, tok: int, required: list[list[int]]) -> Progress:
    """The progress after producing `tok`: the sequence under way moves on or, on another token, is dropped (that
    token may start an unmet one)."""
    met, cur, pos, _ = p
    if cur >= 0 and required[cur][pos] == tok:
        return (met | {cur}, -1, 0, True) if pos + 1 == len(required[cur]) else (met, cur, pos + 1, False)
    for c, seq in enumerate(required):
        if c not in met and seq[0] == tok:
            return (met | {c}, -1, 0, True) if len(seq) == 1 else (met, c, 1, False)
    return (met, -1, 0, False)


def _next_tokens(p: Progress, required: list[list[int]]) -> set[int]:
    """Tokens that would make progress: the next of the sequence under way, and the first of each unmet one."""
    met, cur, pos, _ = p
    out = {seq[0] for c, seq in enumerate(required) if c not in met}
    if cur >= 0:
        out.add(required[cur][pos])
    return out


def _produced(p: Progress, required: list[list[int]]) -> int:
    """Required tokens produced so far: the bank a hypothesis belongs to."""
    return sum(len(required[c]) for c in p[0]) + p[2]


def _allocate(part: np.ndarray, part_scores: np.ndarray, part_lp: np.ndarray, extra: list[list[tuple[int, float, float]]],
              progress: list[list[Progress]], required: list[list[list[int]]], K: int, V: int, eos: int, words: bool = False):
    """Dynamic beam allocation: each sentence's 2K candidates (index beam * V + token), best of each bank in turn.

    `part`/`part_scores`/`part_lp` (n, C) are the likeliest continuations, `extra[j]` the (index, score, log-prob)
    of the tokens that make progress on sentence j's terms. Returns `top`, `top_scores`, `top_lp` (n, 2K, padded
    with -inf scores) and each candidate's progress. With `words` (a term must end a word, so a hypothesis that
    has just ended one cannot make progress at the next step) the fullest bank's first place goes to its best
    hypothesis that can move on, so that the fullest bank gains at every step but one per term; every other
    place goes by score."""
    n = len(part)
    top, top_scores, top_lp = np.zeros((n, 2 * K), dtype=np.int64), np.full((n, 2 * K), -np.inf), np.zeros((n, 2 * K))
    states: list[list[Progress]] = []
    for j in range(n):
        cands = {int(i): (float(s), float(lp)) for i, s, lp in zip(part[j], part_scores[j], part_lp[j]) if np.isfinite(s)}
        for i, s, lp in extra[j]:
            if np.isfinite(s):
                cands.setdefault(i, (s, lp))
        banks: dict[int, list] = {}
        for i in sorted(cands, key=lambda i: (-cands[i][0], i)):  # best first; ties: lower index, as without terms
            tok = i % V
            p = progress[j][i // V] if tok == eos else _advance(progress[j][i // V], tok, required[j])
            banks.setdefault(_produced(p, required[j]), []).append((i, p))
        if words and banks:  # the fullest bank's first place: its best hypothesis that can move on
            top_bank = banks[max(banks)]
            first = next((c for c in top_bank if not c[1][3]), None)
            if first is not None and first is not top_bank[0]:
                top_bank.remove(first)
                top_bank.insert(0, first)
        order = [banks[b][r] for r in range(max(map(len, banks.values()), default=0)) for b in sorted(banks, reverse=True) if r < len(banks[b])]
        row = []
        for c, (i, p) in enumerate(order[: 2 * K]):
            top[j, c], (top_scores[j, c], top_lp[j, c]) = i, cands[i]
            row.append(p)
        states.append(row + [NO_PROGRESS] * (2 * K - len(row)))
    return top, top_scores, top_lp, states


def _gather(log_probs, rows: list[int], toks: list[int]) -> np.ndarray:
    """log_probs[rows, toks] as numpy, read where the log-probs are."""
    values = log_probs[_index(rows, log_probs), _index(toks, log_probs)]
    return values if isinstance(values, np.ndarray) else values.float().cpu().numpy()


def _ban(log_probs, rows: list[int], toks):
    """log_probs with the tokens `toks` (an id or an array of ids) at -inf in `rows` (a copy)."""
    if not rows or np.size(toks) == 0:
        return log_probs
    lp = log_probs.copy() if isinstance(log_probs, np.ndarray) else log_probs.clone()
    lp[_index(np.asarray(rows)[:, None], lp), _index(np.atleast_1d(toks)[None, :], lp)] = -np.inf
    return lp


@dataclass
class Hypothesis:
    tokens: list[int]  # target ids, without BOS and EOS
    score: float  # sum of log-probabilities, EOS included when it ended
    normalized: float  # score / len**length_penalty, what beams are ranked by
    # with details=True: each token's log-prob, and the source position its step attended to most (its alignment)
    token_scores: list[float] = field(default_factory=list)
    alignment: list[int] = field(default_factory=list)
    met: int = 0  # with required token sequences (a glossary): how many of them the tokens hold


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
    required: list[list[list[int]]] | None = None,
    glue: np.ndarray | None = None,
) -> list[list[Hypothesis]]:
    """Beam search; returns for each input its `nbest` hypotheses, best first.

    At every step each sentence keeps the `beam_size` best unfinished continuations; a candidate ending
    in EOS among the top `beam_size` is finished. A sentence stops when it has `beam_size` finished
    hypotheses (all beams ended) or reaches max_len. Ranking divides the summed log-probability by
    length**length_penalty (CTranslate2's convention; 0 means no normalization). Beam size 1 is greedy.
    All sentences and beams advance together in arrays; only finished hypotheses are handled one by one.
    `required` (per sentence, token sequences its output must contain: a glossary's terms) turns on lexically
    constrained search (`_allocate`); finished hypotheses then rank by terms met first. `glue`: the ids of tokens
    that continue a word, never allowed right after a term.
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
    if required is not None and not any(required):
        required = None
    progress = [[NO_PROGRESS] * K for _ in range(batch)]  # with required: each beam's (see _advance)
    t = 0
    while len(active):
        log_probs, state = step(prev, state)
        n, V = len(active), log_probs.shape[1]
        log_probs = constrain(log_probs, seqs.reshape(n * K, t), t, eos, constraints, forced_tokens(prefixes, np.repeat(active, K), t))
        if required is not None:  # a beam with unmet terms may not end
            log_probs = _ban(log_probs, [j * K + k for j, b in enumerate(active) for k in range(K)
                                         if len(progress[j][k][0]) < len(required[b])], eos)
            if glue is not None:  # ... and a term ends a word
                log_probs = _ban(log_probs, [j * K + k for j in range(n) for k in range(K) if progress[j][k][3]], glue)
        if required is None:
            top, top_scores, top_lp = _candidates(log_probs, scores, K)  # (n, 2K) each, best first
        else:  # dynamic beam allocation ranks on the host, from each beam's 2K best and the terms' tokens
            part, part_scores, part_lp = _per_beam(log_probs, scores, K)
            wanted = [(j, k, tok) for j, b in enumerate(active) for k in range(K) if np.isfinite(scores[j, k])
                      for tok in sorted(_next_tokens(progress[j][k], required[b]))]
            lps = _gather(log_probs, [j * K + k for j, k, _ in wanted], [tok for _, _, tok in wanted])
            extra: list[list] = [[] for _ in range(n)]
            for (j, k, tok), lp in zip(wanted, lps.tolist()):
                extra[j].append((k * V + tok, scores[j, k] + lp, lp))
            top, top_scores, top_lp, cand_progress = _allocate(part, part_scores, part_lp, extra, progress,
                                                               [required[b] for b in active], K, V, eos, glue is not None)
        beam, tok = top // V, top % V
        if details:
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
            finished[b].append(Hypothesis(toks, sc, sc / (max(length, 1) ** length_penalty), *more,
                                          met=len(cand_progress[j][r][0]) if required is not None else 0))
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
        if required is not None:
            progress = [[cand_progress[j][r] for r in pick[j]] for j in alive]
        scores, prev, active = pick_scores[alive], pick_tok.reshape(-1), active[alive]
    return [sorted(f, key=lambda h: (-h.met, -h.normalized))[:nbest] for f in finished]
