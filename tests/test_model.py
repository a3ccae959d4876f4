import numpy as np
import pytest
import torch

from s2s.data import pad_batch
from s2s.config import ModelConfig
from s2s.model import Seq2Seq, sequence_loss, shift_target
from s2s.search import greedy_search
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID
from s2s.train import train_step
from s2s.translator import TorchEngine


def test_shift_decoder_never_sees_the_token_it_predicts():
    torch.manual_seed(0)
    model = Seq2Seq(ModelConfig(src_vocab_size=30, tgt_vocab_size=30, emb_dim=8, hidden_size=16, dropout=0.0)).eval()
    tgt = torch.tensor([[BOS_ID, 10, 11, 12, 13, EOS_ID], [BOS_ID, 20, 21, EOS_ID, PAD_ID, PAD_ID]])
    dec_in, gold = shift_target(tgt)
    # the loss scores position t on token t+1, and the decoder input at t is token t
    assert torch.equal(gold, tgt[:, 1:]) and torch.equal(dec_in, tgt[:, :-1])
    assert not (dec_in == gold)[gold != PAD_ID].any()  # with distinct tokens, no input equals its own target
    # and no position can look ahead: changing later inputs leaves earlier logits unchanged
    src, lens = torch.tensor([[5, 6, 7, EOS_ID], [8, 9, EOS_ID, PAD_ID]]), torch.tensor([4, 3])
    base = model(src, lens, dec_in)
    for t in range(dec_in.size(1)):
        changed = dec_in.clone()
        changed[:, t:] = 25
        out = model(src, lens, changed)
        assert torch.allclose(out[:, :t], base[:, :t], atol=1e-6)
        if t < dec_in.size(1) - 1:
            assert not torch.allclose(out[:, t:], base[:, t:])


def test_loss_ignores_padding_and_attention_ignores_padded_source():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 12)
    gold = torch.tensor([[5, 6, EOS_ID, PAD_ID], [7, EOS_ID, PAD_ID, PAD_ID]])
    loss, _, n = sequence_loss(logits, gold, PAD_ID)
    noisy = logits.clone()
    noisy[gold == PAD_ID] = torch.randn(3, 12) * 100
    assert n == 5 and torch.allclose(loss, sequence_loss(noisy, gold, PAD_ID)[0])
    # whatever sits in padded source positions does not change the translation of a row
    model = Seq2Seq(ModelConfig(src_vocab_size=30, tgt_vocab_size=30, emb_dim=8, hidden_size=16, dropout=0.0)).eval()
    lens = torch.tensor([3, 5])
    a = torch.tensor([[5, 6, EOS_ID, PAD_ID, PAD_ID], [5, 6, 7, 8, EOS_ID]])
    b = a.clone()
    b[0, 3:] = torch.tensor([9, 9])
    dec_in = torch.tensor([[BOS_ID, 10], [BOS_ID, 11]])
    assert torch.allclose(model(a, lens, dec_in)[0], model(b, lens, dec_in)[0], atol=1e-6)


def _reverse_batch(rng, n, vocab):
    seqs = [rng.integers(4, vocab, rng.integers(3, 9)) for _ in range(n)]
    src, lens = pad_batch([np.append(s, EOS_ID) for s in seqs], PAD_ID)
    tgt, _ = pad_batch([np.concatenate([[BOS_ID], s[::-1], [EOS_ID]]) for s in seqs], PAD_ID)
    return seqs, src, lens, tgt


def test_tiny_model_learns_to_reverse_sequences():
    """Shift, masking, attention and greedy decoding together: a copy-bug model cannot reverse."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    vocab = 24
    model = Seq2Seq(ModelConfig(src_vocab_size=vocab, tgt_vocab_size=vocab, emb_dim=32, hidden_size=96, dropout=0.0))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(700):
        _, src, lens, tgt = _reverse_batch(rng, 64, vocab)
        train_step(model, opt, src, lens, tgt, label_smoothing=0.0, clip_norm=1.0)
    seqs, src, lens, _ = _reverse_batch(np.random.default_rng(99), 300, vocab)
    engine = TorchEngine(model)
    hyps = greedy_search(engine.step, engine.encode(src.numpy(), lens.numpy()), len(seqs), BOS_ID, EOS_ID, (lens.numpy() + 5))
    exact = np.mean([h.tokens == s[::-1].tolist() for h, s in zip(hyps, seqs)])
    assert exact >= 0.95, f"only {exact:.0%} reversed exactly"


@pytest.mark.parametrize("bad", [dict(hidden_size=15), dict(dropout=1.0), dict(encoder_layers=0)])
def test_model_config_rejects_bad_settings(bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        ModelConfig(**bad)
