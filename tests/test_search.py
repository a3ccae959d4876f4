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
