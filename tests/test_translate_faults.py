"""Faults, injected from outside the production code, against `s2s-job translate` as a scheduler runs it.

Each test runs the CLI in a subprocess with its own local Ray. Faults come from tests/faults/sitecustomize.py
on the subprocess's PYTHONPATH (Ray's workers inherit it), or from killing processes by pid. Every test
reads the output folder back and checks each input row is there exactly once, with the scheduler's exit
code: 0 done, 1 error rate over the gate, 2 bad invocation, 3 the run failed (rerun with --resume).
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

FAULTS = Path(__file__).parent / "faults"
FAST = ["--max-decoding-length", "30", "--beam-size", "1"]


def _cli(args, fault=None):
    env = dict(os.environ)
    if fault:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULTS), env.get("PYTHONPATH")) if p)
        env["S2S_TEST_FAULT"] = fault
    return subprocess.Popen([sys.executable, "-m", "s2s.cli", "translate", *args], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(proc, timeout=600):
    log = proc.communicate(timeout=timeout)[0]
    return proc.returncode, log


def _parts(out):
    return sorted(p for p in os.listdir(out) if p.startswith("part-")) if out.exists() else []


def _rows(out):
    return pa.concat_tables([pq.read_table(out / p) for p in _parts(out)]).to_pylist()


def _lease(out):
    """The record of the output folder's current lease (the highest epoch)."""
    return json.loads(max((out / "_lease").glob("epoch-*.json")).read_text())


def _digest(out, parts):
    return {p: hashlib.sha256((out / p).read_bytes()).hexdigest() for p in parts}


def test_killed_run_resumes_exactly_once(tiny_model_dir, corpus_300, tmp_path):
    out = tmp_path / "out"
    args = [str(corpus_300), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "30", *FAST]
    proc = _cli(args, fault="slow:2")
    deadline = time.time() + 300
    while time.time() < deadline and len(_parts(out)) < 2:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the local Ray it started go down mid-run
    proc.wait()
    before = _parts(out)
    assert 2 <= len(before) < 10, "the kill should land mid-run"
    kept = _digest(out, before)
    assert _lease(out)["pid"] == proc.pid and not _lease(out)["released"]  # the dead run still holds its lease
    code, log = _finish(_cli(args))
    assert code == 2 and "not empty" in log  # the lease of a dead process on this host did not block it
    code, log = _finish(_cli(args + ["--resume"]))
    assert code == 0, log
    rows = _rows(out)
    assert len(_parts(out)) == 10 and len(rows) == 300
    assert sorted(r["keep"] for r in rows) == list(range(300))  # no row lost or duplicated
    assert _digest(out, before) == kept  # committed shards were not redone
    assert f"{len(before)} already committed" in log
    assert json.loads((out / "_run.json").read_text())["status"] == "complete" and (out / "_SUCCESS").exists()
    assert _lease(out)["released"]


def test_dead_actor_is_replaced_and_its_unit_retried(tiny_model_dir, corpus_300, tmp_path):
    marker = tmp_path / "died"
    code, log = _finish(_cli([str(corpus_300), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                              "--rows-per-shard", "100", *FAST], fault=f"die_once:{marker}"))
    assert code == 0, log
    assert marker.exists()  # an actor really died mid-unit
    assert sorted(r["keep"] for r in _rows(tmp_path / "out")) == list(range(300))


def test_a_failing_engine_is_retried_on_a_fresh_actor_not_committed_as_row_errors(tiny_model_dir, corpus_300, tmp_path):
    """Every step of the first actor's engine raises (a failed device). Its rows are not flagged: the actor
    finds its engine fails even on a canary text, exits, and Ray Data retries the unit on a fresh actor."""
    marker = tmp_path / "broken"
    out = tmp_path / "out"
    code, log = _finish(_cli([str(corpus_300), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "100",
                              *FAST], fault=f"broken_engine:{marker}"))
    assert code == 0, log
    assert marker.exists() and "the engine itself fails" in log
    rows = _rows(out)
    assert sorted(r["keep"] for r in rows) == list(range(300))
    assert {r["keep"] for r in rows if r["error"]} == {5, 7, 9}  # only the corpus's own bad rows
    assert not any("CUDA failure" in (r["error"] or "") for r in rows)


def test_a_row_that_kills_its_actor_every_time_is_isolated_and_flagged(tiny_model_dir, corpus_300, tmp_path):
    table = pq.read_table(corpus_300).slice(0, 120)
    texts = table.column("text").to_pylist()
    texts[50] = "POISON-ROW " + texts[0]
    source = tmp_path / "in.parquet"
    pq.write_table(table.set_column(0, "text", pa.array(texts)), source)
    out = tmp_path / "out"
    code, log = _finish(_cli([str(source), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "60", *FAST],
                             fault="poison:POISON-ROW"))
    assert code == 0, log  # 4 errors in 120 rows is under the 5% gate
    assert "translating it row by row" in log
    rows = _rows(out)
    assert sorted(r["keep"] for r in rows) == list(range(120))
    flagged = {r["keep"]: r["error"] for r in rows if r["error"]}
    assert set(flagged) == {5, 7, 9, 50} and "crashed the translate actor" in flagged[50]
    assert all(r["translation"] is not None for r in rows if not r["error"])


def test_exit_codes_and_a_failed_gate_that_stays_failed(tiny_model_dir, corpus_300, tmp_path):
    out = tmp_path / "out"
    args = [str(corpus_300), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "150", *FAST]
    # 2: a bad invocation says what to fix, before anything is written
    code, log = _finish(_cli(args + ["--text-column", "body"]))
    assert code == 2 and "no column 'body'" in log and not _parts(out)
    # 1: 3 bad rows in 300 is over a 0.5% gate; every row is still committed once
    code, log = _finish(_cli(args + ["--max-error-rate", "0.005"]))
    assert code == 1 and "over --max-error-rate" in log, log
    run = json.loads((out / "_run.json").read_text())
    assert run["status"] == "failed_error_rate" and run["rows"] == 300 and not (out / "_SUCCESS").exists()
    # a scheduler's retry with --resume does not turn it into a success ...
    code, log = _finish(_cli(args + ["--max-error-rate", "0.005", "--resume"]))
    assert code == 1 and "nothing to do" in log and "over --max-error-rate" in log
    # ... unless the gate is raised
    code, log = _finish(_cli(args + ["--max-error-rate", "0.05", "--resume"]))
    assert code == 0, log
    assert json.loads((out / "_run.json").read_text())["status"] == "complete" and (out / "_SUCCESS").exists()
    # 3: another live run holds the output's lease (this test process stands in for it)
    from s2s.lease import _boot_id

    held = out / "_lease" / "epoch-0000000099.json"
    held.write_text(json.dumps({"owner": "other", "host": os.uname().nodename, "boot_id": _boot_id(), "pid": os.getpid(),
                                "expires": time.time() + 60, "expires_utc": "soon"}))
    code, log = _finish(_cli(args + ["--resume"]))
    assert code == 3 and "another run is writing here" in log and f"pid {os.getpid()}" in log
    assert _lease(out)["owner"] == "other"  # not taken from a live run
    code, log = _finish(_cli(args + ["--overwrite"]))
    assert code == 3 and len(_parts(out)) == 2  # --overwrite does not delete what a live run is writing
    held.write_text(json.dumps({**json.loads(held.read_text()), "released": True}))


def test_unreadable_rows_fail_the_run_with_exit_3_naming_the_file(tiny_model_dir, corpus_300, tmp_path):
    """A file whose footer reads but whose data pages are corrupt passes planning and fails in its read
    task: the run exits 3, names the file, and _run.json says incomplete, with what was committed."""
    shards = tmp_path / "in"
    shards.mkdir()
    table = pq.read_table(corpus_300)
    pq.write_table(table.slice(0, 100), shards / "a.parquet")
    pq.write_table(table.slice(100, 100), shards / "b.parquet", compression="zstd")
    data = bytearray((shards / "b.parquet").read_bytes())
    middle = len(data) // 3
    data[middle: middle + 400] = os.urandom(400)
    (shards / "b.parquet").write_bytes(bytes(data))
    out = tmp_path / "out"
    code, log = _finish(_cli([str(shards), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "100", *FAST]))
    assert code == 3, log
    assert "b.parquet" in log and "rerun" in log
    run = json.loads((out / "_run.json").read_text())
    assert run["status"] == "incomplete" and not (out / "_SUCCESS").exists()
    assert run["rows"] == len(_rows(out)) if _parts(out) else run["rows"] == 0
