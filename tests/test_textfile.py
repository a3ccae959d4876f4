"""Plain text in and out, one sentence per line: line N of the output translates line N of the input."""

import json
import os
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from s2s.cli import app
from s2s.engine import load_translator
from s2s.config import DecodeConfig


def test_a_text_file_line_for_line_with_empty_and_bad_lines(tiny_model_dir, tiny_run, tmp_path):
    sentences = pq.read_table(tiny_run / "data" / "test.parquet").column("src").to_pylist()[:40]
    lines = [s.encode() for s in sentences]
    lines[3], lines[7], lines[11] = b"", b"   \t", b"\xff\xfe not UTF-8"
    source = tmp_path / "in.txt"
    source.write_bytes(b"\r\n".join(lines[:20]) + b"\n" + b"\n".join(lines[20:]) + b"\n")  # CRLF and LF lines alike
    target = tmp_path / "out" / "fr.txt"
    # fp32: int8 scales activations per batch, and text mode batches the lines its own way
    args = ["translate", str(source), "--output", str(target), "--model", str(tiny_model_dir), "--beam-size", "2",
            "--max-decoding-length", "30", "--variant", "fp32"]
    result = CliRunner().invoke(app, [*args, "--max-error-rate", "0.02"])
    assert result.exit_code == 1, result.output  # 1 bad line of the 38 with text is over a 2% gate
    assert "line 12: text is not valid UTF-8 (byte 0xff at offset 0)" in result.output
    out = target.read_text(encoding="utf-8").split("\n")
    assert out[-1] == "" and len(out) - 1 == 40  # one line out per line in, in order, newline-terminated
    assert out[3] == out[7] == out[11] == ""
    # the same translations the translator gives each sentence
    expected = load_translator(tiny_model_dir, DecodeConfig(beam_size=2, max_decoding_length=30), variant="fp32").translate(
        [s for i, s in enumerate(sentences) if i not in (3, 7, 11)])
    assert [line for i, line in enumerate(out[:40]) if i not in (3, 7, 11)] == [t.translation for t in expected]

    again = CliRunner().invoke(app, args)  # an existing output is not replaced without --overwrite
    assert again.exit_code == 2 and "already exists" in again.output
    ok = CliRunner().invoke(app, [*args, "--overwrite"])  # within the default 5% gate
    assert ok.exit_code == 0, ok.output
    assert "40 lines (2 empty): 38 rows, 37 translated, 1 error(s)" in ok.output
    missing = CliRunner().invoke(app, ["translate", str(tmp_path / "none.txt"), "--model", str(tiny_model_dir)])
    assert missing.exit_code == 2 and "none.txt: no such file" in missing.output


def test_stdin_to_stdout_carries_only_the_translations(tiny_model_dir):
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", "-", "--model", str(tiny_model_dir), "--beam-size", "1",
                           "--max-decoding-length", "20"], input="I like cats.\n\nWhere is the station?\n", capture_output=True,
                          text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.split("\n")
    assert len(out) == 4 and out[1] == "" and out[3] == ""  # people's lines went to stderr
    expected = load_translator(tiny_model_dir, DecodeConfig(beam_size=1, max_decoding_length=20)).translate(
        ["I like cats.", "Where is the station?"])
    assert [out[0], out[2]] == [t.translation for t in expected]
    assert "3 lines (1 empty): 2 rows, 2 translated, 0 error(s)" in done.stderr


def test_text_mode_uses_only_the_cores_it_may_run_on(tiny_model_dir):
    # under taskset (as under a container's or a scheduler's CPU pinning) os.cpu_count() still counts every core
    # of the host; one onnxruntime thread per host core would oversubscribe the one core this process may use
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "s2s.cli", "translate", "-", "--model", str(tiny_model_dir),
                           "--beam-size", "1", "--max-decoding-length", "5"], input="I like cats.\n", capture_output=True,
                          text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.cpu_count() > 1  # else this test shows nothing
    assert "CPUExecutionProvider (variant" in done.stderr and ", 1 thread(s))" in done.stderr, done.stderr[-2000:]


def test_text_on_s3_with_the_schedulers_date_as_parquet_is(s3_env, tiny_model_dir, tmp_path):
    """A .txt input and output on S3, with {date} filled from --date: the same paths a nightly Parquet run takes."""
    import pyarrow.fs as pafs

    s3 = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key="testing", secret_key="testing",
                           region="us-east-1", allow_bucket_creation=True)
    s3.create_dir("txt")
    with s3.open_output_stream("txt/in/date=2026-12-05/en.txt") as f:
        f.write(b"I like cats.\n\nWhere is the station?\n")
    args = [sys.executable, "-m", "s2s.cli", "translate", "s3://txt/in/date={date}/en.txt", "--output", "s3://txt/out/date={date}/fr.txt",
            "--date", "2026-12-05", "--model", str(tiny_model_dir), "--beam-size", "1", "--max-decoding-length", "20", "--json"]
    done = subprocess.run(args, env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    with s3.open_input_stream("txt/out/date=2026-12-05/fr.txt") as f:
        out = f.read().decode().split("\n")
    assert len(out) == 4 and out[1] == out[3] == ""
    summary = json.loads(done.stdout)
    assert summary["input"] == "s3://txt/in/date=2026-12-05/en.txt" and summary["status"] == "complete"
    assert (summary["lines"], summary["empty"], summary["rows"], summary["translated"]) == (3, 1, 2, 2)
    again = subprocess.run(args, env={**os.environ, **s3_env}, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already exists" in again.stderr  # never replaced without --overwrite
    missing = subprocess.run([*args[:4], "s3://txt/in/date={date}/none.txt", *args[5:]], env={**os.environ, **s3_env},
                             capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "s3://txt/in/date=2026-12-05/none.txt: no such file" in missing.stderr


def test_json_prints_the_same_summary_for_text_and_parquet(tiny_model_dir, tiny_run, tmp_path):
    """One record of a run, whatever the input: the keys of _run.json, and the same counts for the same sentences."""
    sentences = pq.read_table(tiny_run / "data" / "test.parquet").column("src").to_pylist()[:30]
    (tmp_path / "in.txt").write_text("\n".join(sentences) + "\n", encoding="utf-8")
    pq.write_table(pa.table({"text": sentences}), tmp_path / "in.parquet")
    common = ["--model", str(tiny_model_dir), "--beam-size", "2", "--max-decoding-length", "30", "--variant", "fp32", "--json"]
    text = CliRunner().invoke(app, ["translate", str(tmp_path / "in.txt"), "--output", str(tmp_path / "fr.txt"), *common])
    parquet = CliRunner().invoke(app, ["translate", str(tmp_path / "in.parquet"), "--output", str(tmp_path / "fr"), "--executor", "local",
                                       *common])
    assert text.exit_code == 0 and parquet.exit_code == 0, text.output + parquet.output
    as_text, as_parquet = (json.loads(r.stdout) for r in (text, parquet))
    assert set(as_text) - set(as_parquet) == {"lines", "empty", "engine_reloads"} and set(as_parquet) <= set(as_text)
    for key in ("status", "rows", "translated", "errors", "error_kinds", "src_tokens", "tgt_tokens", "quality", "row_flags",
                "model_sha256", "decode", "shards_total", "providers", "variants"):
        assert as_text[key] == as_parquet[key], key
    assert as_parquet == json.loads((tmp_path / "fr" / "_run.json").read_text())  # --json is _run.json
