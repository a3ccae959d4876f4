"""The schedule ends annealed at whichever bound comes first, and checkpoint averaging keeps what it averaged."""

import json

import pytest
import torch

from s2s.config import ModelConfig
from s2s.config import TrainConfig
from s2s.train import WeightAverage, fit, lr_factor, prepare, run_progress


def test_a_run_stopped_by_the_clock_ends_annealed_like_one_stopped_by_steps():
    cfg = TrainConfig(max_minutes=10, warmup_steps=100, min_lr_ratio=0.1)
    # a slow machine: 10 minutes pass long before the 12 epochs' steps
    assert run_progress(cfg, step=500, total_steps=10_000, seconds=300) == pytest.approx(0.5)
    assert lr_factor(cfg, 500, run_progress(cfg, 500, 10_000, 600)) == pytest.approx(0.1)
    # a fast one: the steps run out first
    assert run_progress(cfg, step=10_000, total_steps=10_000, seconds=60) == 1.0
    assert lr_factor(cfg, 10, 0.0) == pytest.approx(11 / 100)  # warm-up by steps
    assert lr_factor(cfg, 100, 0.5) == pytest.approx(1 - 0.9 * 0.5)
    assert run_progress(TrainConfig(max_minutes=0), 50, 100, 1e6) == pytest.approx(0.5)  # no time bound: steps alone


def test_weight_average_is_the_mean_of_its_snapshots():
    model = torch.nn.Linear(3, 2)
    snapshots, average = [], WeightAverage()
    for _ in range(4):
        with torch.no_grad():
            model.weight.add_(torch.randn_like(model.weight))
        snapshots.append(model.weight.detach().clone())
        average.add(model)
    assert average.count == 4
    torch.testing.assert_close(average.weights["weight"], torch.stack(snapshots).mean(0))
    restored = WeightAverage(average.state_dict())
    assert restored.count == 4 and restored.weights["weight"] is average.weights["weight"]


def test_fit_validates_the_average_and_keeps_the_trained_weights_to_resume_from(small_corpus, tmp_path):
    cfg = TrainConfig(run_dir=str(tmp_path / "run"), data=str(small_corpus), workers=1, batch_tokens=1500, epochs=20, max_steps=40, patience=0,
                      max_minutes=0, log_every=10, valid_frac=0.1, test_frac=0.1, warmup_steps=10, bf16=False, average_last=0.5,
                      model=ModelConfig(src_vocab_size=500, tgt_vocab_size=500, emb_dim=16, hidden_size=32, dropout=0.0))
    prepare(cfg)
    saved = []
    fit(cfg, lambda metrics, checkpoint: saved.append((metrics, checkpoint)))
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    # snapshots at steps 20, 30 and 40: the last half of a 40-step run
    averaged = [x for x in lines if x["kind"] == "average"]
    assert len(averaged) == 1 and averaged[0]["snapshots"] == 3 and averaged[0]["step"] == 40
    metrics, last = saved[-1]
    assert metrics["snapshots"] == 3 and metrics["score"] == averaged[0]["valid_bleu"]
    # "model" is the average (what export and evaluate load), "train_model" the weights training continues from
    end = saved[-2][1]["model"]
    assert all(torch.equal(last["train_model"][k], end[k]) for k in end)
    assert not torch.equal(last["model"]["generator.weight"], end["generator.weight"])
    # the learning rate decayed to its floor at the last step
    train_lines = [x for x in lines if x["kind"] == "train"]
    assert train_lines[-1]["lr"] == pytest.approx(cfg.lr * lr_factor(cfg, 39, 39 / 40))
