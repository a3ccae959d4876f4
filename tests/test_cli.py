"""The CLI parses and calls: --help everywhere, and bad invocations end with a clear message and exit 2."""

import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from s2s.cli import app

runner = CliRunner()


@pytest.mark.parametrize("command", ["train", "evaluate", "export", "translate"])
def test_every_command_has_help(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "Usage" in result.output and "--" in result.output


def test_train_with_a_missing_column_says_which(tmp_path):
    data = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"english": ["Hi."], "french": ["Salut."]}), data)
    result = runner.invoke(app, ["train", str(tmp_path / "run"), "--data", str(data)])
    assert result.exit_code == 2
    assert "no column 'en'" in result.output and "['english', 'french']" in result.output
    assert not (tmp_path / "run" / "config.json").exists()


def test_translate_with_a_model_dir_that_is_not_one(tmp_path):
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["Hi."]}), data)
    result = runner.invoke(app, ["translate", str(data), "--model", str(tmp_path), "--output", str(tmp_path / "out")])
    assert result.exit_code == 2 and "manifest.json: missing" in result.output


def test_resume_into_a_folder_not_made_by_translate(tiny_model_dir, tmp_path):
    data = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": ["Hi."]}), data)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    result = runner.invoke(app, ["translate", str(data), "--model", str(tiny_model_dir), "--output", str(tmp_path / "out"), "--resume"])
    assert result.exit_code == 2 and "_job.json" in result.output and (tmp_path / "out" / "notes.txt").exists()
    result = runner.invoke(app, ["translate", str(data), "--model", str(tiny_model_dir), "--output", str(tmp_path / "out"), "--overwrite"])
    assert result.exit_code == 2 and "not written by s2s-job translate" in result.output  # --overwrite empties only its own folders
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["notes.txt"]  # and the lease it took is gone


def test_export_of_a_directory_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path), "--output", str(tmp_path / "m")])
    assert result.exit_code == 2 and "not a training run directory" in result.output


def test_date_and_partition_fill_the_path_templates(tiny_model_dir, tmp_path):
    day = tmp_path / "in" / "date=2026-11-21"
    day.mkdir(parents=True)
    template = str(tmp_path / "in" / "date={date}" / "part={partition}.parquet")
    result = runner.invoke(app, ["translate", template, "--model", str(tiny_model_dir), "--output", str(tmp_path / "out" / "date={date}"),
                                 "--date", "2026-11-21", "--partition", "7"])
    assert result.exit_code == 2 and f"{day}/part=7.parquet: no such input" in result.output
    result = runner.invoke(app, ["translate", template, "--model", str(tiny_model_dir), "--date", "2026-11-21"])
    assert result.exit_code == 2 and "has {partition} but no --partition" in result.output


def test_translate_path_does_not_load_torch():
    """The CLI and everything the translate job's driver, read and commit tasks import stay free of torch:
    importing it costs a second per command and per fresh Ray worker (the actors load onnxruntime only)."""
    code = ("import sys, s2s.cli, s2s.translate, s2s.engine, s2s.search, s2s.translator; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_version_and_choices_are_checked_before_anything_runs():
    from importlib.metadata import version

    from typer.testing import CliRunner

    from s2s.cli import app

    out = CliRunner().invoke(app, ["--version"])
    assert out.exit_code == 0 and out.output.strip() == f"s2s-job {version('s2s-job')}"
    for args in (["translate", "in.parquet", "--device", "gpu"], ["translate", "in.parquet", "--variant", "bf16"],
                 ["evaluate", "runs/x", "--split", "train"], ["export", "runs/x", "--exporter", "tf"]):
        bad = CliRunner().invoke(app, args)
        assert bad.exit_code == 2 and args[-1] in bad.output, (args, bad.output)  # a usage error naming the value, before any work
    # text mode writes lines, not columns: what would add a column is refused, never dropped in silence
    for option in (["--nbest", "2"], ["--return-token-scores"], ["--return-alignment"], ["--target-prefix-column", "p"]):
        refused = CliRunner().invoke(app, ["translate", "in.txt", *option])
        assert refused.exit_code == 2 and option[0] in refused.output and "Parquet" in refused.output, (option, refused.output)


def test_the_text_column_is_found_when_not_named(tiny_model_dir, tmp_path):
    """Without --text-column, `text` is translated, or `src` (the project's own splits) where there is no `text`;
    the run says which. With neither, the run is refused up front naming the columns it has."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from typer.testing import CliRunner

    from s2s.cli import app

    pq.write_table(pa.table({"src": ["I like cats.", "Hello."], "note": ["a", "b"]}), tmp_path / "src.parquet")
    done = CliRunner().invoke(app, ["translate", str(tmp_path / "src.parquet"), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                                    "--executor", "local"])
    assert done.exit_code == 0, done.output
    assert "translating column 'src'" in done.output
    rows = pq.read_table(tmp_path / "out").to_pylist()
    assert [r["src"] for r in rows] == ["I like cats.", "Hello."] and all(r["error"] is None and r["translation"] is not None for r in rows)
    pq.write_table(pa.table({"sentence": ["I like cats."]}), tmp_path / "other.parquet")
    refused = CliRunner().invoke(app, ["translate", str(tmp_path / "other.parquet"), "--output", str(tmp_path / "out2"), "--model",
                                       str(tiny_model_dir), "--executor", "local"])
    assert refused.exit_code == 2 and "sentence" in refused.output and "--text-column" in refused.output
    assert not (tmp_path / "out2").exists()
