"""Exactly once through what a night does around the job: each case of issue #26's table, as a scheduler and an
upstream pipeline would cause it, with the CLI in a subprocess.

Faults come from outside the production code: tests/faults/sitecustomize.py on the subprocess's PYTHONPATH
(`echo` answers "T:" + each text, so that every row can be checked to hold its own text's translation;
`slow` makes room for a kill or a rewrite mid-run), signals sent by pid, and files rewritten under the run.
Every test reads the output folder back (`check`): when `_SUCCESS` is there, the parts hold every input row
exactly once with its own text's translation; when it is not, no committed row is wrong.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from s2s.translator import as_text

FAULTS = Path(__file__).parent / "faults"
FAST = ["--max-decoding-length", "20", "--beam-size", "1"]


def cli(*args: str, faults: str = "echo", env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, **(env or {})}
    if faults:
        e["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULTS), e.get("PYTHONPATH")) if p)
        e["S2S_TEST_FAULT"] = faults
    return subprocess.Popen([sys.executable, "-m", "s2s.cli", "translate", *args], env=e, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    log = proc.communicate(timeout=timeout)[0]
    return proc.returncode, log


def run(*args: str, faults: str = "echo", env: dict | None = None) -> tuple[int, str]:
    return finish(cli(*args, faults=faults, env=env))


def texts(n: int, tag: str = "") -> list[str]:
    return [f"Sentence {tag}{i} is here." for i in range(n)]


def write(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def parts(out: Path) -> list[Path]:
    return sorted(out.glob("part-*")) if out.exists() else []


def rows_of(out, fs: pafs.FileSystem | None = None) -> list[dict]:
    fs = fs or pafs.LocalFileSystem()
    base = str(out)
    names = [i.path for i in fs.get_file_info(pafs.FileSelector(base, allow_not_found=True)) if i.base_name.startswith("part-")]
    rows = []
    for name in sorted(names):
        with fs.open_input_file(name) as f:
            rows += pq.read_table(f).to_pylist()
    return rows


def check(out, expected_ids: list[str] | None, fs: pafs.FileSystem | None = None, text: str = "text",
          translation: str = "translation", error: str = "error") -> list[dict]:
    """The invariant: no committed row is wrong; with _SUCCESS (or `expected_ids` given), every id exactly once."""
    fs = fs or pafs.LocalFileSystem()
    rows = rows_of(out, fs)
    for r in rows:
        visible, why = as_text(r[text])
        assert r[translation] == (None if why else "T:" + visible) and r[error] == why, r
    success = fs.get_file_info(f"{out}/_SUCCESS").type == pafs.FileType.File
    if expected_ids is not None and success:
        assert sorted(r["row_id"] for r in rows) == sorted(expected_ids)
    return rows


def wait_for(condition, timeout: float = 120, what: str = "") -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def ids(label: str, n: int) -> list[str]:
    return [f"{label}#{i}" for i in range(n)]


# ---------------------------------------------------------------- inputs that change under a run


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_an_input_rewritten_while_it_is_read_stops_the_run_and_resume_redoes_it(tiny_model_dir, tmp_path, executor):
    """An upstream compaction rewrites the file in place with the same rows in another order, mid-run. The run
    stops with exit 3 naming the file before anything read after the change is committed; no part pairs a row
    with another row's text; --resume redoes the file from its new version."""
    source = write(tmp_path / "in" / "corpus.parquet", {"text": texts(600), "key": list(range(600))}, row_group_size=100)
    out = tmp_path / "out"
    proc = cli(str(source), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "100", "--executor", executor,
               *FAST, faults="echo,slow:0.4")
    wait_for(lambda: len(parts(out)) >= 1, what="a first part")
    shuffled = list(range(600))
    random.Random(0).shuffle(shuffled)
    write(source, {"text": [texts(600)[i] for i in shuffled], "key": shuffled}, row_group_size=100)
    code, log = finish(proc)
    assert code == 3 and "corpus.parquet: changed since the run planned it" in log, log[-3000:]
    assert not (out / "_SUCCESS").exists() and json.loads((out / "_run.json").read_text())["status"] == "incomplete"
    rows = check(out, None)
    assert len({r["key"] for r in rows}) == len(rows) < 600  # no key twice, none from the other version beside this one
    assert all(r["text"] == texts(600)[r["key"]] for r in rows)  # every pass-through key with its own text
    code, log = run(str(source), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "100", "--executor",
                    "local", *FAST, "--resume")
    assert code == 0, log
    rows = check(out, ids("corpus.parquet", 600))
    assert sorted(r["key"] for r in rows) == list(range(600)) and all(r["text"] == texts(600)[r["key"]] for r in rows)
    assert "changed since the last run: redone" in log and (out / "_rejected").is_dir()


def test_a_late_file_changed_file_and_removed_file_on_resume(tiny_model_dir, tmp_path):
    """A nightly partition gains a file after a successful run, and the schedule reruns with --resume: the new
    file is translated into the same output, _SUCCESS covers both; a file rewritten since is redone; a file
    taken out of the input has its parts moved to _rejected/."""
    day = tmp_path / "in" / "date=2026-12-04"
    write(day / "a.parquet", {"text": texts(100, "a")})
    out = tmp_path / "out" / "date=2026-12-04"
    args = [str(tmp_path / "in" / "date={date}"), "--output", str(tmp_path / "out" / "date={date}"), "--date", "2026-12-04",
            "--model", str(tiny_model_dir), "--executor", "local", "--resume", "--rows-per-shard", "40", *FAST]
    code, log = run(*args)
    assert code == 0, log
    first = json.loads((out / "_SUCCESS").read_text())
    assert first["rows"] == 100 and [f["path"].rsplit("/", 1)[1] for f in first["inputs"]] == ["a.parquet"]
    write(day / "b.parquet", {"text": texts(50, "b")})
    code, log = run(*args)
    assert code == 0 and "1 input file(s) new since the last run: translated now" in log, log
    assert "3 already committed, 2 to do" in log  # a's parts were kept
    success = json.loads((out / "_SUCCESS").read_text())
    assert success["rows"] == 150 and len(success["parts"]) == 5 and success["epoch"] == first["epoch"] + 1
    check(out, ids("a.parquet", 100) + ids("b.parquet", 50))
    write(day / "b.parquet", {"text": texts(70, "B")})  # rewritten with other rows
    (day / "a.parquet").unlink()
    code, log = run(*args)
    assert code == 0 and "changed since the last run: redone" in log and "no longer among the inputs" in log, log
    rows = check(out, ids("b.parquet", 70))
    assert sorted(r["text"] for r in rows) == sorted(texts(70, "B"))
    assert len(list((out / "_rejected").iterdir())) == 5  # a's 3 parts and b's 2 old ones, kept for inspection


# ---------------------------------------------------------------- runs that stall or race


@pytest.mark.parametrize("executor", ["local", "ray"])
def test_a_run_that_stalls_past_its_lease_commits_nothing_after_waking(tiny_model_dir, tmp_path, executor):
    """Run A is frozen (SIGSTOP to its whole process group: a long pause, a frozen VM) past its lease; run B takes
    the folder over with --overwrite and other shard sizes and finishes; A wakes (SIGCONT) and stops with
    exit 3, committing nothing more: B's rows, each once."""
    source = write(tmp_path / "corpus.parquet", {"text": texts(300)}, row_group_size=50)
    out = tmp_path / "out"
    common = [str(source), "--output", str(out), "--model", str(tiny_model_dir), "--lease-seconds", "3", *FAST]
    a = cli(*common, "--rows-per-shard", "50", "--executor", executor, faults="echo,slow:0.5")
    wait_for(lambda: len(parts(out)) >= 1, what="A's first part")
    os.killpg(a.pid, signal.SIGSTOP)
    try:
        time.sleep(4)  # past A's lease
        code, log = run(*common, "--rows-per-shard", "75", "--executor", "local", "--overwrite")
        assert code == 0, log
        b_parts = {p.name: p.stat().st_ino for p in parts(out)}
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    code, log = finish(a)
    assert code == 3 and ("taken over" in log or "revoked" in log or "lease" in log), log[-3000:]
    assert {p.name: p.stat().st_ino for p in parts(out)} == b_parts  # A added, replaced and removed nothing
    check(out, ids("corpus.parquet", 300))
    assert json.loads((out / "_SUCCESS").read_text())["epoch"] == 2


def test_a_driver_killed_and_left_a_zombie_does_not_block_the_retry(tiny_model_dir, tmp_path):
    """`timeout -s KILL` kills the driver and the container's PID 1 never reaps it: its pid still exists, as a
    zombie. The schedule's immediate --resume takes the lease over at once instead of waiting for it to expire."""
    source = write(tmp_path / "corpus.parquet", {"text": texts(200)})
    out = tmp_path / "out"
    args = [str(source), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "40", "--executor", "local", *FAST]
    a = cli(*args, faults="echo,slow:0.5")
    wait_for(lambda: len(parts(out)) >= 1, what="a first part")
    os.kill(a.pid, signal.SIGKILL)
    wait_for(lambda: Path(f"/proc/{a.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z", what="the zombie")
    try:
        t0 = time.time()
        code, log = run(*args, "--resume")
        assert code == 0 and time.time() - t0 < 60, log
    finally:
        a.wait()  # reaped only now
    check(out, ids("corpus.parquet", 200))


def test_two_runs_started_together_on_s3_one_takes_the_folder(s3_env, tiny_model_dir, tmp_path):
    """Two schedulers start the same run on one S3 output at once, the second with --overwrite: the lease is a
    conditional PutObject, so exactly one runs; the others exit 3 and touch nothing (or, for the one without
    --overwrite that looks after another has begun, exit 2: the folder is not empty). Every row once."""
    s3 = pafs.S3FileSystem(endpoint_override=s3_env["AWS_ENDPOINT_URL"], access_key=s3_env["AWS_ACCESS_KEY_ID"],
                           secret_key=s3_env["AWS_SECRET_ACCESS_KEY"], region=s3_env["AWS_DEFAULT_REGION"], allow_bucket_creation=True)
    s3.create_dir("race")
    with s3.open_output_stream("race/in/corpus.parquet") as f:
        pq.write_table(pa.table({"text": texts(300)}), f)
    args = ["s3://race/in/corpus.parquet", "--output", "s3://race/out", "--model", str(tiny_model_dir), "--rows-per-shard", "60",
            "--executor", "local", *FAST]
    procs = [cli(*args, faults="echo,slow:1", env=s3_env), cli(*args, "--overwrite", faults="echo,slow:1", env=s3_env),
             cli(*args, "--overwrite", faults="echo,slow:1", env=s3_env)]
    results = [finish(p) for p in procs]
    assert [code for code, _ in results].count(0) == 1, [log[-2000:] for _, log in results]
    for n, (code, log) in enumerate(results):  # each loser refused: the live lease, or (the run without --overwrite) files there
        assert code == 0 or (code == 3 and "another run" in log) or (n == 0 and code == 2 and "not empty" in log), log[-2000:]
    check("race/out", ids("corpus.parquet", 300), fs=s3)
    epochs = [i.base_name for i in s3.get_file_info(pafs.FileSelector("race/out/_lease")) if i.base_name.startswith("epoch-")]
    assert epochs == ["epoch-0000000001.json"]  # the losers created no epoch


def test_overwrite_of_a_folder_a_live_run_holds_is_refused(tiny_model_dir, tmp_path):
    source = write(tmp_path / "corpus.parquet", {"text": texts(200)})
    out = tmp_path / "out"
    args = [str(source), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "40", "--executor", "local", *FAST]
    a = cli(*args, faults="echo,slow:0.5")
    wait_for(lambda: len(parts(out)) >= 1, what="a first part")
    code, log = run(*args, "--overwrite")
    assert code == 3 and "another run is writing here" in log
    assert finish(a)[0] == 0
    check(out, ids("corpus.parquet", 200))


def test_an_interrupted_overwrite_leaves_a_folder_the_next_run_takes(tiny_model_dir, tmp_path):
    """--overwrite is killed while it empties the folder: _job.json goes last (it is replaced, never deleted),
    so the folder is still this job's and the next --overwrite (or --resume) takes it."""
    source = write(tmp_path / "corpus.parquet", {"text": texts(200)})
    out = tmp_path / "out"
    args = [str(source), "--output", str(out), "--model", str(tiny_model_dir), "--rows-per-shard", "10", "--executor", "local", *FAST]
    assert run(*args)[0] == 0
    a = cli(*args, "--overwrite")
    wait_for(lambda: len(parts(out)) < 20 or a.poll() is not None, what="the emptying")
    os.killpg(a.pid, signal.SIGKILL)
    a.wait()
    assert (out / "_job.json").exists()
    code, log = run(*args, "--overwrite")
    assert code == 0, log
    check(out, ids("corpus.parquet", 200))


# ---------------------------------------------------------------- what upstream writers leave behind


def test_one_listing_for_folders_and_globs_skips_writers_leftovers(tiny_model_dir, tmp_path):
    """Spark left `_temporary/0/part-0.parquet` beside its output, Hive wrote a Parquet file with no suffix, and
    someone dropped a README: the folder form and every glob form take the same files, each once."""
    base = tmp_path / "in"
    write(base / "part-0.parquet", {"text": texts(30, "a")})
    write(base / "_temporary" / "0" / "part-0.parquet", {"text": texts(30, "a")})  # an uncommitted copy
    write(base / "hive" / "000000_0", {"text": texts(20, "h")})
    (base / "README.txt").write_text("not data")
    (base / ".part-0.parquet.crc").write_bytes(b"crc")
    expected = ids("part-0.parquet", 30) + ids("hive/000000_0", 20)
    for n, spec in enumerate([str(base), str(base) + "/", f"{base}/**", f"{base}/**/*", f"{base}/*.parquet"]):
        out = tmp_path / f"out{n}"
        code, log = run(spec, "--output", str(out), "--model", str(tiny_model_dir), "--executor", "local", *FAST)
        assert code == 0, log
        if spec.endswith("*.parquet"):  # a wildcard matches within one segment: not _temporary/0/part-0.parquet
            check(out, ids("part-0.parquet", 30))
        else:
            check(out, expected)
            assert "skipped 2 under names starting with _ or ." in log and "_temporary/0/part-0.parquet" in log, log  # said, in one line
            assert "1 not Parquet (README.txt)" in log


def test_any_input_schema(tiny_model_dir, tmp_path):
    """A text column stored as BINARY (Hive, Impala) is read as UTF-8; input columns named like the results are
    refused up front naming them, or the results go under --result-prefix; an --id-column with duplicate or null
    values is refused naming them, unless --allow-duplicate-ids."""
    model = ["--model", str(tiny_model_dir), "--executor", "local", *FAST]
    binary = write(tmp_path / "binary.parquet", {"text": pa.array([t.encode() for t in texts(20)] + [b"caf\xe9"], pa.binary())})
    code, log = run(str(binary), "--output", str(tmp_path / "o1"), *model, faults="")  # the real model, quality counts included
    assert code == 0, log
    rows = rows_of(tmp_path / "o1")
    assert all(r["translation"] is not None and r["error"] is None for r in rows[:20])
    assert rows[20]["error"].startswith("text is not valid UTF-8")
    for column in ("score", "error", "translation"):
        clash = write(tmp_path / f"{column}.parquet", {"text": texts(10), column: list(range(10))})
        code, log = run(str(clash), "--output", str(tmp_path / f"o-{column}"), *model)
        assert code == 2 and f"['{column}']" in log and "--result-prefix" in log and not (tmp_path / f"o-{column}").exists(), log
        code, log = run(str(clash), "--output", str(tmp_path / f"o-{column}"), *model, "--result-prefix", "mt_")
        assert code == 0, log
        rows = check(tmp_path / f"o-{column}", ids(f"{column}.parquet", 10), translation="mt_translation", error="mt_error")
        assert [r[column] for r in rows] == list(range(10))  # the input's own column, untouched
        names = pq.read_schema(parts(tmp_path / f"o-{column}")[0]).names
        assert len(names) == len(set(names))  # no field twice
    dup = write(tmp_path / "dup.parquet", {"text": texts(6), "id": ["a", "b", "a", None, "c", "c"]})
    code, log = run(str(dup), "--output", str(tmp_path / "o-dup"), *model, "--id-column", "id")
    assert code == 2 and "1 null id(s), at dup.parquet#3" in log and "'a' x2" in log and "'c' x2" in log, log
    code, log = run(str(dup), "--output", str(tmp_path / "o-dup"), *model, "--id-column", "id", "--allow-duplicate-ids")
    assert code == 0 and len(rows_of(tmp_path / "o-dup")) == 6, log


# ---------------------------------------------------------------- text mode, isolation


def test_text_mode_retries_a_failed_engine_and_writes_only_what_succeeded(tiny_model_dir, tmp_path):
    source = tmp_path / "in.txt"
    source.write_text("".join(t + "\n" for t in texts(50)) + "\n\u200b\n")
    target = tmp_path / "out.txt"
    proc = cli(str(source), "--output", str(target), "--model", str(tiny_model_dir), "--json", *FAST,
               faults=f"broken_engine_once:{tmp_path / 'broken'}")
    out = proc.communicate(timeout=300)[0]
    summary = json.loads(out[out.index("{"):out.rindex("}") + 1])
    assert proc.returncode == 0 and "loading it afresh" in out, out
    assert summary["translated"] == 50 and summary["errors"] == 1 and summary["engine_reloads"] == 1 and summary["status"] == "complete"
    lines = target.read_text().split("\n")
    assert len(lines) == 53 and lines[50] == "" and lines[51] == ""  # an empty line stays empty; an invisible one is written empty
    assert not Path(f"{target}.failed.json").exists()
    # an engine that never works: exit 3, the earlier output left as it was, and a marker that says why
    code, log = run(str(source), "--output", str(target), "--model", str(tiny_model_dir), "--overwrite", *FAST,
                    faults=f"broken_engine:{tmp_path / 'always'}")
    assert code == 3 and "failed 3 times" in log, log
    assert target.read_text().split("\n") == lines
    assert json.loads(Path(f"{target}.failed.json").read_text())["status"] == "incomplete"
    # over the gate: exit 1, like Parquet mode; the lines are written and the marker says so
    code, log = run(str(source), "--output", str(target), "--model", str(tiny_model_dir), "--overwrite", "--max-error-rate", "0.01", *FAST)
    assert code == 1 and "over --max-error-rate" in log, log
    assert json.loads(Path(f"{target}.failed.json").read_text())["status"] == "failed_error_rate"
    code, log = run(str(source), "--output", str(target), "--model", str(tiny_model_dir), "--overwrite", *FAST)
    assert code == 0 and not Path(f"{target}.failed.json").exists()


def test_poison_rows_are_isolated_as_far_as_the_error_gate_reaches(tiny_model_dir, tmp_path):
    """One unit holds 4 rows that each kill their actor's process. Under the gate (5% of 300 rows: 15) every one
    is isolated and flagged and the run completes; under a gate that allows 2, the run stops with exit 3 naming
    the rows it flagged, whatever the unit's size."""
    rows = texts(300)
    poisoned = [10, 20, 30, 40]
    for i in poisoned:
        rows[i] = "POISON " + rows[i]
    source = write(tmp_path / "corpus.parquet", {"text": rows})
    args = [str(source), "--model", str(tiny_model_dir), "--rows-per-shard", "100", *FAST]
    code, log = run(*args, "--output", str(tmp_path / "ok"), faults="echo,poison:POISON")
    assert code == 0, log[-3000:]
    got = {int(r["row_id"].split("#")[1]): r["error"] for r in rows_of(tmp_path / "ok") if r["error"]}
    assert sorted(got) == poisoned and all("crashed the translate actor" in e for e in got.values())
    code, log = run(*args, "--output", str(tmp_path / "strict"), "--max-error-rate", "0.007", faults="echo,poison:POISON")
    assert code == 3 and "more than the 2 the error gate allows" in log and "rows 10, 20, 30" in log, log[-3000:]
    assert not (tmp_path / "strict" / "_SUCCESS").exists()
