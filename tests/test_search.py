import numpy as np
import torch

from s2s.config import ModelConfig
from s2s.model import Seq2Seq
from s2s.search import beam_search, greedy_search, select_state
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID
from s2s.translator import TorchEngine

A, B = 4, 5


def _trap_step(prev, state):
    """Greedy takes A (0.6) and then must end at 0.3; B (0.4) ends at 0.95: beam finds 0.38 > 0.18."""
    pos = state["pos"]
    probs = np.full((len(prev), 6), 1e-6)
    for i, (p, t) in enumerate(zip(prev, pos)):
        if t == 0:
            probs[i, [A, B]] = [0.6, 0.4]  # sums to 1 (with the 1e-6 floor) so scores are exact
        elif p == A:
            probs[i, [0, 1, EOS_ID, A, B]] = [0.1, 0.1, 0.3, 0.25, 0.25]  # EOS is the best pick, at 0.3
        else:
            probs[i, [EOS_ID, A]] = [0.95, 0.05]
    probs /= probs.sum(1, keepdims=True)
    return np.log(probs), {"pos": pos + 1}


def test_beam_finds_a_better_sequence_than_greedy():
    state = {"pos": np.zeros(2, dtype=np.int64)}
    max_len = np.array([10, 10])
    greedy = greedy_search(_trap_step, state, 2, BOS_ID, EOS_ID, max_len)
    beam = beam_search(_trap_step, state, 2, BOS_ID, EOS_ID, max_len, beam_size=2, nbest=2)
    assert greedy[0].tokens == [A] and np.isclose(greedy[0].score, np.log(0.18), atol=1e-4)
    assert beam[0][0].tokens == [B] and np.isclose(beam[0][0].score, np.log(0.38), atol=1e-4)
    assert beam[0][0].score > greedy[0].score
    assert [h.tokens for h in beam[1]] == [[B], [A]]  # n-best, best first


def test_beam_size_one_is_exactly_greedy():
    torch.manual_seed(1)
    model = Seq2Seq(ModelConfig(src_vocab_size=50, tgt_vocab_size=50, emb_dim=16, hidden_size=32, dropout=0.0))
    engine = TorchEngine(model)
    rng = np.random.default_rng()
    lens = rng.integers(1, 12, 17)
    src = np.full((17, lens.max()), PAD_ID)
    for i, n in enumerate(lens):
        src[i, :n] = np.append(rng.integers(4, 50, n - 1), EOS_ID)
    max_len = 2 * lens + 3
    greedy = greedy_search(engine.step, engine.encode(src, lens), 17, BOS_ID, EOS_ID, max_len)
    beam = beam_search(engine.step, engine.encode(src, lens), 17, BOS_ID, EOS_ID, max_len, beam_size=1)
    for g, b in zip(greedy, beam):
        assert b[0].tokens == g.tokens
        assert np.isclose(b[0].score, g.score, atol=1e-5)
    assert any(len(g.tokens) > 0 for g in greedy)


def test_max_length_bounds_every_output():
    state = {"pos": np.zeros(3, dtype=np.int64)}

    def never_ends(prev, st):
        lp = np.full((len(prev), 6), -5.0)
        lp[:, A] = -0.01
        return lp, st

    max_len = np.array([1, 4, 7])
    for hyps in (greedy_search(never_ends, state, 3, BOS_ID, EOS_ID, max_len),
                 [h[0] for h in beam_search(never_ends, state, 3, BOS_ID, EOS_ID, max_len, beam_size=3)]):
        assert [len(h.tokens) for h in hyps] == [1, 4, 7]


def test_select_state_works_for_numpy_and_torch():
    rows = np.array([2, 0, 0])
    state = {"a": np.arange(6).reshape(3, 2), "b": torch.arange(3)}
    out = select_state(state, rows)
    assert out["a"].tolist() == [[4, 5], [0, 1], [0, 1]] and out["b"].tolist() == [2, 0, 0]


from hypothesis import given, settings, strategies as st  # noqa: E402


def _table_step(table, as_tensor):
    """A step function over a fixed random table: the log-probs of a row depend on its sentence, its previous
    token and the step, as a real decoder's do; returned as numpy, or as a torch tensor (what a GPU engine
    with I/O binding returns, kept on its device)."""

    def step(prev, state):
        lp = table[state["sentence"], state["t"] % table.shape[1], prev % table.shape[2]]
        new = {"sentence": state["sentence"], "t": state["t"] + 1}
        return (torch.from_numpy(lp.copy()) if as_tensor else lp), new

    return step


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 6), vocab=st.integers(5, 40), beam=st.integers(1, 5),
       ties=st.booleans())
def test_the_search_picks_the_same_whether_the_log_probs_are_numpy_or_a_device_tensor(seed, batch, vocab, beam, ties):
    """The reductions on a tensor (`_best`, `_top_k`) give the same hypotheses, scores included, as on numpy,
    greedy and beam, also where rows hold exactly tied log-probs (rounded to a coarse grid)."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 7, vocab, vocab)).astype(np.float32)
    if ties:
        logits = np.round(logits * 2) / 2
    table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    max_len = rng.integers(1, 9, batch)
    results = []
    for as_tensor in (False, True):
        state = {"sentence": np.arange(batch), "t": np.zeros(batch, dtype=np.int64)}
        step = _table_step(table, as_tensor)
        g = greedy_search(step, state, batch, BOS_ID, EOS_ID, max_len)
        b = beam_search(step, state, batch, BOS_ID, EOS_ID, max_len, beam_size=min(beam, vocab), nbest=1)
        results.append(([(h.tokens, h.score) for h in g], [[(h.tokens, h.score) for h in hs] for hs in b]))
    assert results[0] == results[1]


from s2s.search import Constraints  # noqa: E402


def _loop_step(prev, state):
    """A decoder stuck in a loop, as held-out sentences show ("se souvenir de se rappeler..."): after A comes B,
    after B comes A, EOS always a distant third, a fourth token C always available."""
    C = 6
    probs = np.full((len(prev), 8), 1e-3)
    for i, p in enumerate(prev):
        probs[i, B if p == A else A] = 0.6
        probs[i, A if p == A else B] = 0.2
        probs[i, C] = 0.1
        probs[i, EOS_ID] = 0.05
    probs /= probs.sum(1, keepdims=True)
    return np.log(probs), state


def _ngrams(tokens, n):
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def test_no_repeat_ngram_size_breaks_the_loop_and_repetition_penalty_discourages_it():
    state, max_len = {"x": np.zeros(1)}, np.array([12])
    looped = greedy_search(_loop_step, state, 1, BOS_ID, EOS_ID, max_len)[0].tokens
    assert looped == [A, B] * 6  # the loop, to the length bound
    for search in (lambda c: greedy_search(_loop_step, state, 1, BOS_ID, EOS_ID, max_len, c)[0],
                   lambda c: beam_search(_loop_step, state, 1, BOS_ID, EOS_ID, max_len, 3, constraints=c)[0][0]):
        free = search(Constraints(no_repeat_ngram_size=2)).tokens
        assert len(set(_ngrams(free, 2))) == len(_ngrams(free, 2)) and len(free) < 12, free
        penalized = search(Constraints(repetition_penalty=5.0)).tokens
        assert penalized[:2] == [A, B] and penalized.count(A) + penalized.count(B) < 12, penalized


def test_min_decoding_length_holds_off_eos():
    def eager_to_end(prev, state):
        probs = np.full((len(prev), 6), 0.02)
        probs[:, EOS_ID] = 0.9
        return np.log(probs / probs.sum(1, keepdims=True)), state

    state = {"x": np.zeros(2)}
    assert greedy_search(eager_to_end, state, 2, BOS_ID, EOS_ID, np.array([20, 20]))[0].tokens == []
    for hyp in greedy_search(eager_to_end, state, 2, BOS_ID, EOS_ID, np.array([20, 3]), Constraints(min_decoding_length=5)):
        assert len(hyp.tokens) in (5, 3)  # 5, or the length bound where that comes first
    (best,), _ = beam_search(eager_to_end, state, 2, BOS_ID, EOS_ID, np.array([20, 20]), 2, constraints=Constraints(min_decoding_length=4))
    assert len(best.tokens) == 4


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), vocab=st.integers(5, 12), beam=st.integers(1, 4),
       ngram=st.integers(0, 3), penalty=st.sampled_from([1.0, 1.5, 3.0]), min_len=st.integers(0, 6), as_tensor=st.booleans())
def test_constraints_hold_for_any_decoder(seed, batch, vocab, beam, ngram, penalty, min_len, as_tensor):
    """Whatever the decoder's log-probs: no output holds an n-gram twice; none ends before min_decoding_length unless
    its length bound or a dead end (every token banned) comes first; numpy and device tensors give the same."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 7, vocab, vocab)).astype(np.float32) * 2
    table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    max_len = rng.integers(1, 10, batch)
    c = Constraints(no_repeat_ngram_size=ngram, repetition_penalty=penalty, min_decoding_length=min_len)
    outs = {}
    for tensor in {False, as_tensor}:
        state = {"sentence": np.arange(batch), "t": np.zeros(batch, dtype=np.int64)}
        step = _table_step(table, tensor)
        g = greedy_search(step, state, batch, BOS_ID, EOS_ID, max_len, c)
        b = beam_search(step, state, batch, BOS_ID, EOS_ID, max_len, beam_size=min(beam, vocab), constraints=c)
        outs[tensor] = ([(h.tokens, round(h.score, 4)) for h in g], [[(h.tokens, round(h.score, 4)) for h in hs] for hs in b])
        for i, h in enumerate(g + [hs[0] for hs in b]):
            if ngram:
                assert len(set(_ngrams(h.tokens, ngram))) == len(_ngrams(h.tokens, ngram)), (h.tokens, ngram)
            assert np.isfinite(h.score)
            if not ngram:  # with no bans but EOS's, a row is never stuck
                assert len(h.tokens) >= min(min_len, max_len[i % batch]), (h.tokens, min_len, max_len)
    assert outs[False] == outs[as_tensor]


from s2s.search import Sampling  # noqa: E402


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 5), vocab=st.integers(5, 30), topk=st.integers(0, 4),
       topp=st.sampled_from([1.0, 0.9, 0.5, 0.05]), temperature=st.sampled_from([0.5, 1.0, 2.0]), as_tensor=st.booleans())
def test_sampling_stays_within_topk_and_topp_and_a_seed_reproduces_it(seed, batch, vocab, topk, topp, temperature, as_tensor):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 7, vocab, vocab)).astype(np.float32) * 2
    table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    max_len = np.full(batch, 8)
    s = Sampling(topk=topk, topp=topp, temperature=temperature)
    seeds = [[seed % 1000, row] for row in range(batch)]

    def run(rows):
        picked = []

        def step(prev, state):  # records, for each row and step, the tokens the filters allow
            lp, new = _table_step(table, as_tensor)(prev, state)
            probs = np.exp(table[state["sentence"], state["t"] % 7, prev % vocab].astype(np.float64) / temperature)
            probs /= probs.sum(1, keepdims=True)
            for r, p in zip(state["sentence"], probs):
                order = np.argsort(-p, kind="stable")
                n = len(order) if topk == 0 else min(topk, len(order))
                mass = np.cumsum(p[order[:n]] / p[order[:n]].sum())
                allowed = order[: max(1, int(np.searchsorted(mass, topp - 1e-9) + 1))] if topp < 1 else order[:n]
                picked.append((int(r), set(allowed.tolist())))
            return lp, new

        state = {"sentence": np.asarray(rows), "t": np.zeros(len(rows), dtype=np.int64)}
        hyps = greedy_search(step, state, len(rows), BOS_ID, EOS_ID, max_len[: len(rows)], sampling=s, seeds=[seeds[r] for r in rows])
        return hyps, picked

    hyps, picked = run(list(range(batch)))
    steps = {}
    for r, allowed in picked:
        steps.setdefault(r, []).append(allowed)
    for r, h in enumerate(hyps):
        for t, tok in enumerate(h.tokens):
            assert tok in steps[r][t], (r, t, tok, steps[r][t])
        assert np.isfinite(h.score)
    # a row's sample depends on its seed only: alone, or with the others in reverse order, it is the same
    again, _ = run(list(range(batch))[::-1])
    assert [h.tokens for h in again[::-1]] == [h.tokens for h in hyps]


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), vocab=st.integers(6, 20), beam=st.integers(1, 4),
       ngram=st.integers(0, 2), as_tensor=st.booleans(), data=st.data())
def test_a_target_prefix_starts_every_hypothesis(seed, batch, vocab, beam, ngram, as_tensor, data):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 7, vocab, vocab)).astype(np.float32) * 2
    table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    prefixes = [data.draw(st.lists(st.integers(4, vocab - 1), max_size=3)) for _ in range(batch)]
    max_len = np.asarray([len(p) + 1 + int(rng.integers(0, 4)) for p in prefixes])
    state = {"sentence": np.arange(batch), "t": np.zeros(batch, dtype=np.int64)}
    step = _table_step(table, as_tensor)
    c = Constraints(no_repeat_ngram_size=ngram)
    greedy = greedy_search(step, state, batch, BOS_ID, EOS_ID, max_len, c, prefixes=prefixes)
    beams = beam_search(step, state, batch, BOS_ID, EOS_ID, max_len, beam_size=min(beam, vocab), nbest=1, constraints=c, prefixes=prefixes)
    for p, g, (b,) in zip(prefixes, greedy, beams):
        assert g.tokens[: len(p)] == p and b.tokens[: len(p)] == p, (p, g.tokens, b.tokens)
        assert np.isfinite(g.score) and np.isfinite(b.score)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), vocab=st.integers(5, 20), beam=st.integers(1, 4),
       as_tensor=st.booleans())
def test_token_scores_and_alignment_come_with_each_hypothesis_and_change_nothing_else(seed, batch, vocab, beam, as_tensor):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 7, vocab, vocab)).astype(np.float32) * 2
    table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    attention = rng.random((batch, 7, vocab, 6)).astype(np.float32)  # (sentence, step, previous token) -> over 6 source positions
    max_len = rng.integers(1, 9, batch)

    def step(prev, state):
        lp, new = _table_step(table, as_tensor)(prev, state)
        att = attention[state["sentence"], state["t"] % 7, prev % vocab]
        return lp, {**new, "attention": torch.from_numpy(att.copy()) if as_tensor else att, "prev": prev.copy(),
                    "was_t": state["t"].copy()}

    def run(details):
        state = {"sentence": np.arange(batch), "t": np.zeros(batch, dtype=np.int64)}
        return (greedy_search(step, state, batch, BOS_ID, EOS_ID, max_len, details=details),
                beam_search(step, state, batch, BOS_ID, EOS_ID, max_len, beam_size=min(beam, vocab), nbest=min(beam, vocab), details=details))

    plain, full = run(False), run(True)
    assert [(h.tokens, h.score) for h in plain[0]] == [(h.tokens, h.score) for h in full[0]]
    assert [[(h.tokens, h.score) for h in hs] for hs in plain[1]] == [[(h.tokens, h.score) for h in hs] for hs in full[1]]
    for b, (g, hs) in enumerate(zip(full[0], full[1])):
        for h in [g, *hs]:
            assert len(h.token_scores) == len(h.alignment) == len(h.tokens)
            assert all(0 <= a < 6 for a in h.alignment)
            # the tokens' own log-probs add up to the score, less the EOS step's where the output ended with one
            assert sum(h.token_scores) >= h.score - 1e-6
        # each path can be replayed (a step depends on the sentence, the step and the previous token only): every
        # token's log-prob and alignment are those of the step that chose it, greedy and every beam hypothesis
        for h in [g, *hs]:
            prev = BOS_ID
            for t, (tok, lp, al) in enumerate(zip(h.tokens, h.token_scores, h.alignment)):
                assert np.isclose(lp, table[b, t % 7, prev % vocab, tok])
                assert al == int(attention[b, t % 7, prev % vocab].argmax())
                prev = tok


def _holds(tokens, seq):
    return any(tokens[i : i + len(seq)] == seq for i in range(len(tokens) - len(seq) + 1))


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 4), vocab=st.integers(6, 20), beam=st.integers(2, 4),
       ngram=st.sampled_from([0, 3]), as_tensor=st.booleans(), data=st.data())
def test_required_terms_appear_in_every_best_hypothesis_and_rows_without_terms_are_unchanged(seed, batch, vocab, beam, ngram,
                                                                                            as_tensor, data):
    """Lexically constrained beam search (a glossary): whatever the decoder prefers, the best hypothesis holds
    each required token sequence where max_len leaves room for them, and a sentence with nothing required gets
    exactly what it gets without constraints, whatever its neighbours require."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 7, vocab, vocab)).astype(np.float32) * 3  # peaked: the terms are not what it would say
    table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    term = st.lists(st.integers(4, vocab - 1), min_size=1, max_size=3)
    required = [data.draw(st.lists(term, max_size=3)) for _ in range(batch)]
    glue = np.asarray(data.draw(st.lists(st.integers(4, vocab - 1), max_size=vocab // 2, unique=True)), dtype=np.int64)  # word-inner tokens
    max_len = np.asarray([sum(map(len, r)) + len(r) + 1 + int(rng.integers(0, 4)) for r in required])  # a word break between terms
    c = Constraints(no_repeat_ngram_size=ngram)
    state = {"sentence": np.arange(batch), "t": np.zeros(batch, dtype=np.int64)}
    step = _table_step(table, as_tensor)
    constrained = beam_search(step, state, batch, BOS_ID, EOS_ID, max_len, beam_size=beam, nbest=1, constraints=c, required=required,
                              glue=glue)
    plain = beam_search(step, state, batch, BOS_ID, EOS_ID, max_len, beam_size=beam, nbest=1, constraints=c)
    for r, (h,), (p,) in zip(required, constrained, plain):
        if not r:
            assert (h.tokens, h.score) == (p.tokens, p.score)
        elif not ngram:  # with no_repeat_ngram_size a term may be banned outright (it would repeat a 3-gram)
            assert all(_holds(h.tokens, seq) for seq in r), (r, h.tokens)
            assert h.met == len(r) and np.isfinite(h.score)
            # each term ends a word: some occurrence of it is followed by the end or by a token that is not glue
            assert all(any(h.tokens[i : i + len(seq)] == seq and (i + len(seq) == len(h.tokens) or h.tokens[i + len(seq)] not in glue)
                           for i in range(len(h.tokens))) for seq in r), (r, h.tokens, glue)
    empty = beam_search(step, state, batch, BOS_ID, EOS_ID, max_len, beam_size=beam, nbest=1, constraints=c, required=[[]] * batch)
    assert [(h.tokens, h.score) for (h,) in empty] == [(p.tokens, p.score) for (p,) in plain]


class OnDevice(torch.Tensor):
    """Stands for a tensor on a GPU: what the search brings to the host from it is logged, and what a CUDA tensor
    cannot do (`.numpy()`, numpy's conversion) raises. Each copy or read of a value waits for the GPU's queue."""

    log: list = []
    SYNCS = (torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.__index__)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        if func in (torch.Tensor.numpy, torch.Tensor.__array__):
            raise AssertionError("a CUDA tensor has no numpy view: the search must copy it with .cpu() first")
        if func is torch.Tensor.cpu or func is torch.Tensor.to:
            cls.log.append(("copy", args[0].numel()))
            with torch._C.DisableTorchFunctionSubclass():
                return torch.Tensor.clone(args[0])
        if func in cls.SYNCS:
            cls.log.append(("sync", func.__name__))
        return super().__torch_function__(func, types, args, kwargs or {})


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), batch=st.integers(1, 5), vocab=st.integers(9, 30), beam=st.integers(1, 4),
       topk=st.integers(0, 4))
def test_each_step_brings_one_small_array_back_from_the_device(seed, batch, vocab, beam, topk):
    """From a device tensor each step makes one copy to the host, of each row's pick (greedy: id and log-prob),
    of its top-k (sampling), or of each sentence's 2K best continuations merged over its beams (id, score and
    log-prob): never the (rows, V) log-probs nor the beams' (rows, 2K) top-k, and nothing else waits on the
    device. The hypotheses are those of the numpy path."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(batch, 7, vocab, vocab)).astype(np.float32)
    table = (logits - np.log(np.exp(logits).sum(-1, keepdims=True))).astype(np.float32)
    max_len = rng.integers(1, 9, batch)
    K = min(beam, vocab)

    def step(prev, state, on_device):
        lp = table[state["sentence"], state["t"] % 7, prev % vocab]
        OnDevice.log.append(("step", len(prev)))
        new = {"sentence": state["sentence"], "t": state["t"] + 1, "memory": state["memory"] + 1}
        return (torch.from_numpy(lp.copy()).as_subclass(OnDevice) if on_device else lp), new

    def search(kind, on_device):
        memory = torch.zeros(batch, 3)
        state = {"sentence": np.arange(batch), "t": np.zeros(batch, dtype=np.int64),
                 "memory": memory.as_subclass(OnDevice) if on_device else memory}
        OnDevice.log = []
        fn = lambda prev, st: step(prev, st, on_device)  # noqa: E731
        if kind == "beam":
            hyps = [hs[0] for hs in beam_search(fn, state, batch, BOS_ID, EOS_ID, max_len, beam_size=K)]
        else:
            hyps = greedy_search(fn, state, batch, BOS_ID, EOS_ID, max_len, sampling=Sampling(topk=topk) if kind == "sample" else Sampling(),
                                 seeds=[[seed % 1000, r] for r in range(batch)])
        return [(h.tokens, h.score) for h in hyps], list(OnDevice.log)

    for kind in ("greedy", "sample", "beam"):
        expected, _ = search(kind, on_device=False)
        got, log = search(kind, on_device=True)
        assert got == expected, kind
        steps = [i for i, e in enumerate(log) if e[0] == "step"]
        assert steps and not [e for e in log if e[0] == "sync"], (kind, log)
        for i, start in enumerate(steps):
            rows = log[start][1]
            after = log[start + 1 : steps[i + 1] if i + 1 < len(steps) else len(log)]
            per_row = {"greedy": 2, "sample": 2 * (topk or vocab), "beam": 3 * min(2 * K, K * min(2 * K, vocab)) / K}[kind]
            assert after == [("copy", rows * per_row)], (kind, rows, after)
