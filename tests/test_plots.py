"""Pictures are real PNGs of the expected size, drawn from real runs."""

import os
import struct
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from s2s.cli import app
from s2s.plots import read_metrics
from s2s.run_dir import checkpoint_file


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    return width, height, len(data)


def test_training_writes_curves_and_plot_overlays_runs(tiny_run, tmp_path):
    width, height, size = _png_size(tiny_run / "curves.png")  # drawn by `fit` after the epoch
    assert (width, height) == (1100, 750) and size > 20_000
    out = tmp_path / "both.png"
    result = CliRunner().invoke(app, ["plot", str(tiny_run), str(tiny_run), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert _png_size(out)[:2] == (1100, 750)
    per_minute = CliRunner().invoke(app, ["plot", str(tiny_run), "--x", "minutes", "--output", str(tmp_path / "min.png")])
    assert per_minute.exit_code == 0, per_minute.output
    assert _png_size(tmp_path / "min.png")[:2] == (1100, 750)
    wrong = CliRunner().invoke(app, ["plot", str(tiny_run), "--x", "epochs"])
    assert wrong.exit_code == 2 and "minutes" in wrong.output
    missing = CliRunner().invoke(app, ["plot", str(tmp_path)])
    assert missing.exit_code == 2 and "not a training run directory" in missing.output


def test_resumed_steps_count_once(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join([
        '{"kind": "train", "step": 50, "loss": 5.0, "tokens_per_s": 1}',
        '{"kind": "train", "step": 100, "loss": 4.0, "tokens_per_s": 1}',
        '{"kind": "train", "step": 100, "loss": 3.9, "tokens_per_s": 2}',
    ]))
    train, epochs = read_metrics(tmp_path)
    assert [(r["step"], r["loss"]) for r in train] == [(50, 5.0), (100, 3.9)] and epochs == []


def test_the_weight_average_is_the_last_validation_even_at_the_epochs_step(tmp_path):
    (tmp_path / "metrics.jsonl").write_text("\n".join([
        '{"kind": "epoch", "step": 100, "valid_bleu": 30.0}',
        '{"kind": "average", "step": 100, "valid_bleu": 31.0}',
        '{"kind": "epoch", "step": 50, "valid_bleu": 20.0}',
    ]))
    _, validations = read_metrics(tmp_path)
    assert [(r["kind"], r["valid_bleu"]) for r in validations] == [("epoch", 20.0), ("epoch", 30.0), ("average", 31.0)]


def test_attention_map(tiny_run, tiny_model_dir, tmp_path):
    import numpy as np

    from s2s.evaluate import load_model
    from s2s.engine import load_translator
    from s2s.translator import TorchEngine, attention_of

    translator = load_translator(tiny_model_dir, variant="fp32", device="cpu")  # compared with fp32 PyTorch below
    src_ids, _, _ = translator.encode_source("I like cats and dogs.")
    out_ids = translator.translate(["I like cats and dogs."])[0].tokens
    ort_att = attention_of(translator.engine, src_ids, out_ids)
    assert ort_att.shape == (len(out_ids) + 1, len(src_ids))
    np.testing.assert_allclose(ort_att.sum(axis=1), 1.0, atol=1e-5)  # each output step spreads one unit over the source
    model, _ = load_model(checkpoint_file(tiny_run, "best"))
    np.testing.assert_allclose(attention_of(TorchEngine(model), src_ids, out_ids), ort_att, atol=1e-5)
    out = tmp_path / "att.png"
    result = CliRunner().invoke(app, ["attention", "I like cats and dogs.", "--model", str(tiny_model_dir), "--output", str(out)])
    assert result.exit_code == 0, result.output
    width, height, size = _png_size(out)
    cols, rows = len(src_ids), len(out_ids) + 1  # the figure grows with the tokens on its axes, within bounds
    expected = (min(max(6.0, 2 + 0.45 * cols), 24) * 100, min(2 + 0.4 * rows, 24) * 100)
    assert abs(width - expected[0]) <= 1 and abs(height - expected[1]) <= 1 and size > 5_000


def test_evaluate_draws_attention_maps(tiny_run):
    from s2s.evaluate import evaluate_run

    result = evaluate_run(tiny_run, "valid", samples=3, attention=2)
    assert len(result["samples"]) == 3 and len(result["attention_maps"]) == 2
    for path in result["attention_maps"]:
        assert _png_size(Path(path))[2] > 5_000


def test_a_fresh_font_cache_says_nothing(tmp_path):
    # a fresh machine (an empty MPLCONFIGDIR): matplotlib builds its font cache on first import and logs it at INFO
    probe = "import logging; logging.basicConfig(level=logging.INFO); import s2s.plots"
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    done = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert any(p.name.startswith("fontlist") for p in (tmp_path / "mpl").iterdir())  # the cache was built in this run
    assert "fontManager" not in done.stderr, done.stderr[-2000:]
