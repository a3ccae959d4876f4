"""The training step's bf16 autocast never leaves an LSTM in float16 without loss scaling.

Which dtype the recurrent kernels compute in under autocast(bfloat16) depends on the device and its library
(cuDNN on a GPU, oneDNN here). The worker looks at one forward before it trains (`autocast_dtypes`) and turns
loss scaling on where it sees float16. Here the CPU's own answer is checked; a float16 LSTM, as some GPU library
might compute, is stood in for from the test by a wrapper that casts the LSTM's outputs.
"""

import dataclasses
import json

import pytest
import torch

from s2s.config import ModelConfig, TrainConfig
from s2s.model import Seq2Seq
from s2s.train import autocast_dtypes, build_worker, train_step

SMALL = ModelConfig(src_vocab_size=40, tgt_vocab_size=40, emb_dim=16, hidden_size=32)


def test_on_a_cpu_the_lstms_compute_in_bfloat16_or_float32_and_no_random_number_is_drawn():
    torch.manual_seed(0)
    model = Seq2Seq(SMALL).train()
    before = torch.get_rng_state()
    dtypes = autocast_dtypes(model, torch.device("cpu"))
    assert dtypes and dtypes <= {"bfloat16", "float32"}, dtypes
    assert torch.equal(torch.get_rng_state(), before)  # the check leaves the run's random stream as it was
    assert model.training


@pytest.fixture
def float16_lstms(monkeypatch):
    """A platform whose autocast runs the LSTMs in float16 when asked for bfloat16, stood in for from the test:
    torch.autocast with its dtype swapped, so every autocast region (the check's and the training step's) casts to
    float16, and the LSTM's outputs cast to float16 (this CPU's oneDNN has no float16 LSTM: it computes in float32)."""
    autocast, forward = torch.autocast, torch.nn.LSTM.forward

    def half_autocast(device_type, dtype=None, enabled=True, cache_enabled=None):
        return autocast(device_type, dtype=torch.float16 if dtype == torch.bfloat16 else dtype, enabled=enabled,
                        cache_enabled=cache_enabled)

    def half_lstm(self, x, *args):
        if not torch.is_autocast_enabled("cpu"):
            return forward(self, x, *args)
        with autocast("cpu", enabled=False):
            out, (h, c) = forward(self, x.float(), *args)
        return out.half(), (h.half(), c.half())

    monkeypatch.setattr(torch, "autocast", half_autocast)
    monkeypatch.setattr(torch.nn.LSTM, "forward", half_lstm)


def _run_dir(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model": dataclasses.asdict(SMALL)}))
    return str(tmp_path)


def test_a_worker_whose_lstms_compute_in_float16_scales_the_loss_and_says_so(float16_lstms, tmp_path):
    said = []
    w = build_worker(TrainConfig(run_dir=_run_dir(tmp_path), bf16=True), lambda m, c: None, 0, 1, torch.device("cpu"),
                     said.append, said.append)
    assert w.scaler is not None and w.scaler.is_enabled()
    assert any("float16" in line and "loss scaling on" in line for line in said), said
    src = torch.randint(4, 40, (3, 5))
    tgt = torch.randint(4, 40, (3, 6))
    before = [p.detach().clone() for p in w.model.parameters()]
    loss, _, n = train_step(w.model, w.optimizer, src, torch.tensor([5, 4, 3]), tgt, 0.1, 1.0, bf16=True, scaler=w.scaler)
    assert n > 0 and torch.isfinite(torch.tensor(loss))
    assert any(not torch.equal(a, b) for a, b in zip(before, w.model.parameters()))  # the scaled step updated the weights


def test_a_worker_whose_lstms_compute_in_bfloat16_trains_without_scaling(tmp_path):
    said = []
    w = build_worker(TrainConfig(run_dir=_run_dir(tmp_path), bf16=True), lambda m, c: None, 0, 1, torch.device("cpu"),
                     said.append, said.append)
    assert w.scaler is None and not said
