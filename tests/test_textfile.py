"""Plain text in and out, one sentence per line: line N of the output translates line N of the input."""

import os
import subprocess
import sys

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
    assert "40 lines: 37 translated, 2 empty, 1 error(s)" in ok.output
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
    assert "3 lines: 2 translated, 1 empty, 0 error(s)" in done.stderr


def test_text_mode_uses_only_the_cores_it_may_run_on(tiny_model_dir):
    # under taskset (as under a container's or a scheduler's CPU pinning) os.cpu_count() still counts every core
    # of the host; one onnxruntime thread per host core would oversubscribe the one core this process may use
    done = subprocess.run(["taskset", "-c", "0", sys.executable, "-m", "s2s.cli", "translate", "-", "--model", str(tiny_model_dir),
                           "--beam-size", "1", "--max-decoding-length", "5"], input="I like cats.\n", capture_output=True,
                          text=True, timeout=300, env={**os.environ})
    assert done.returncode == 0, done.stderr[-2000:]
    assert os.cpu_count() > 1  # else this test shows nothing
    assert "CPUExecutionProvider (variant" in done.stderr and ", 1 thread(s))" in done.stderr, done.stderr[-2000:]
