"""Object storage end to end: the CLI against a real S3 server on loopback (moto's), reached the standard way.

Nothing in the project knows it is a test: the subprocess gets AWS_ENDPOINT_URL and credentials in its
environment, as it would for any S3-compatible store, and pyarrow speaks HTTP to the server.
"""

import json
import os
import subprocess
import sys
import time

import pyarrow.fs as pafs
import pyarrow.parquet as pq


def _s3(env):
    return pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key=env["AWS_ACCESS_KEY_ID"],
                             secret_key=env["AWS_SECRET_ACCESS_KEY"], region=env["AWS_DEFAULT_REGION"], allow_bucket_creation=True)


def _cli(env, *args):
    return subprocess.run([sys.executable, "-m", "s2s.cli", *args], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=600)


def test_translate_s3_in_s3_out_then_resume_and_report(s3_env, tiny_model_dir, corpus_300, tmp_path):
    s3 = _s3(s3_env)
    s3.create_dir("bkt")
    table = pq.read_table(corpus_300)
    for i, start in enumerate((0, 200)):
        with s3.open_output_stream(f"bkt/in/day=1/part-{i}.parquet") as f:
            pq.write_table(table.slice(start, 200 if start == 0 else 100), f)
    args = ["translate", "s3://bkt/in/", "--output", "s3://bkt/out/", "--model", str(tiny_model_dir), "--rows-per-shard", "100",
            "--max-decoding-length", "30", "--beam-size", "1"]
    done = _cli(s3_env, *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # stdout is for machines (empty without --json); people get one progress line and a summary on stderr
    assert done.stdout == "" and "300/300 rows (100%)" in done.stderr and "300 rows, 297 translated, 3 error(s)" in done.stderr, done.stderr[-3000:]
    out = pq.read_table("bkt/out", filesystem=s3)  # the output prefix reads as a dataset as it is
    assert out.num_rows == 300 and sorted(out.column("keep").to_pylist()) == list(range(300))
    assert sorted(out.column("row_id").to_pylist())[:2] == ["day=1/part-0.parquet#0", "day=1/part-0.parquet#1"]
    with s3.open_input_stream("bkt/out/_run.json") as f:
        run = json.loads(f.read())
    assert run["status"] == "complete" and run["rows"] == 300 and s3.get_file_info("bkt/out/_SUCCESS").is_file
    leases = [i for i in s3.get_file_info(pafs.FileSelector("bkt/out/_lease")) if i.base_name.startswith("epoch-")]
    with s3.open_input_stream(leases[-1].path) as f:
        assert json.loads(f.read())["released"]  # released: the next run need not wait for it
    again = _cli(s3_env, *args, "--resume", "--json")
    assert again.returncode == 0 and "nothing to do" in again.stderr
    assert json.loads(again.stdout)["rows"] == 300  # --json: the run's summary, and nothing else, on stdout
    report = _cli(s3_env, "report", "s3://bkt/out/", "--html", str(tmp_path / "page.html"))
    assert report.returncode == 0, report.stdout + report.stderr
    assert "complete" in report.stdout and "300" in report.stdout and (tmp_path / "page.html").stat().st_size > 5000


def test_translate_with_a_model_directory_on_s3(s3_env, tiny_model_dir, corpus_300, tmp_path):
    """--model s3://...: fetched once per machine into the model cache, keyed by its manifest, then verified."""
    s3 = _s3(s3_env)
    s3.create_dir("models")
    pafs.copy_files(str(tiny_model_dir), "models/tiny", source_filesystem=pafs.LocalFileSystem(), destination_filesystem=s3)
    env = {**s3_env, "S2S_MODEL_CACHE": str(tmp_path / "cache")}
    done = _cli(env, "translate", str(corpus_300), "--output", str(tmp_path / "out"), "--model", "s3://models/tiny",
                "--rows-per-shard", "150", "--max-decoding-length", "30", "--beam-size", "1")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert pq.read_table(tmp_path / "out").num_rows == 300
    cached = list((tmp_path / "cache").iterdir())
    assert len(cached) == 1 and (cached[0] / "manifest.json").read_bytes() == (tiny_model_dir / "manifest.json").read_bytes()
    missing = _cli(env, "translate", str(corpus_300), "--output", str(tmp_path / "out2"), "--model", "s3://models/none")
    assert missing.returncode == 2 and "s3://models/none/manifest.json: cannot be read" in missing.stderr


def test_a_run_killed_mid_write_to_s3_resumes_exactly_once(s3_env, tiny_model_dir, corpus_300):
    """The driver and its local Ray killed (SIGKILL, by pid) while parts land on S3; --resume does the rest."""
    import signal
    from pathlib import Path

    s3 = _s3(s3_env)
    s3.create_dir("kill")
    with s3.open_output_stream("kill/in/corpus.parquet") as f:
        pq.write_table(pq.read_table(corpus_300), f)
    args = [sys.executable, "-m", "s2s.cli", "translate", "s3://kill/in/", "--output", "s3://kill/out/", "--model",
            str(tiny_model_dir), "--rows-per-shard", "30", "--max-decoding-length", "30", "--beam-size", "1"]
    faults = str(Path(__file__).parent / "faults")
    env = {**os.environ, **s3_env, "PYTHONPATH": faults, "S2S_TEST_FAULT": "slow:2"}
    proc = subprocess.Popen(args, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def parts():
        return [i.base_name for i in s3.get_file_info(pafs.FileSelector("kill/out", allow_not_found=True)) if i.base_name.startswith("part-")]

    deadline = time.time() + 600  # a bound on waiting, not a speed check: a loaded machine takes minutes to start
    while time.time() < deadline and len(parts()) < 2:
        time.sleep(0.3)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = parts()
    assert 2 <= len(before) < 10, "the kill should land mid-run"
    done = _cli(s3_env, *args[3:], "--resume")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{len(before)} already committed" in done.stderr
    out = pq.read_table("kill/out", filesystem=s3)
    assert out.num_rows == 300 and sorted(out.column("keep").to_pylist()) == list(range(300))
