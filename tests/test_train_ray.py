"""The real `train` path: Ray Train, 2 DDP workers on gloo, stop after epoch 1, resume to epoch 2."""

import json
import re

import pytest
import torch

from s2s.config import ModelConfig
from s2s.config import TrainConfig
from s2s.train import train
from s2s.run_dir import checkpoint_file


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield
    ray.shutdown()


def test_train_stop_after_epoch_one_then_resume(small_corpus, tmp_path, ray_local, capfd):
    run = tmp_path / "run"
    base = dict(run_dir=str(run), data=str(small_corpus), model=ModelConfig(emb_dim=32, hidden_size=64, dropout=0.0), workers=2,
                batch_tokens=800, log_every=2, max_minutes=0, warmup_steps=5, valid_frac=0.1, test_frac=0.1, bf16=False)
    train(TrainConfig(epochs=1, **base))
    told = capfd.readouterr().err.splitlines()  # the workers' lines, relayed to the driver's stderr as they are, once each
    assert sum(line.startswith("validation after epoch 1 step") for line in told) == 1
    assert sorted(line[:15] for line in told if re.match(r"worker \d of 2 on node", line)) == ["worker 0 of 2 o", "worker 1 of 2 o"]
    assert any(re.fullmatch(r"epoch 1 step \d+/\d+ loss .* left", line) for line in told)
    # Ray Train's own INFO lines (its worker group's start-up) only with --verbose
    assert not [line for line in told if re.search(r"Requesting resources|Started training worker group|Setting up process group", line)]
    first = torch.load(checkpoint_file(run, "last"), weights_only=False)
    assert first["state"]["epoch"] == 1
    steps_1 = first["state"]["step"]
    with pytest.raises(FileExistsError, match="--resume"):
        train(TrainConfig(epochs=2, **base))
    train(TrainConfig(epochs=2, resume=True, **base))
    second = torch.load(checkpoint_file(run, "last"), weights_only=False)
    assert second["state"]["epoch"] == 2 and second["state"]["step"] == 2 * steps_1
    # the optimizer continued: Adam's step counter counts both epochs
    adam_steps = {int(s["step"]) for s in second["optimizer"]["state"].values()}
    assert adam_steps == {2 * steps_1}
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    train_losses = [x["loss"] for x in lines if x["kind"] == "train"]
    epochs = [x for x in lines if x["kind"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    resumed_at = next(i for i, x in enumerate(lines) if x["kind"] == "train" and x["epoch"] == 2)
    resumed_loss = lines[resumed_at]["loss"]
    # the loss continues from where epoch 1 ended, not from the untrained start
    assert resumed_loss < train_losses[0] - 0.5
    assert abs(resumed_loss - epochs[0]["train_loss"]) < abs(resumed_loss - train_losses[0])
    assert (checkpoint_file(run, "best")).exists() and "valid_bleu" in epochs[1]


def test_evaluate_writes_eval_json(tiny_run):
    from s2s.evaluate import evaluate_run

    result = evaluate_run(tiny_run, "test")
    saved = json.loads((tiny_run / "eval.json").read_text())
    assert saved["bleu"] == result["bleu"] and 0 <= result["bleu"] <= 100 and result["sentences"] > 50
    assert saved["samples"] and all(s["refs"] for s in saved["samples"])
