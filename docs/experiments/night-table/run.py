"""Re-run each row of issue #26's table as a scheduler and an upstream pipeline would cause it, with the CLI
as shipped, a trained model and sentences it never saw; read the output folder back.

    python docs/experiments/night-table/run.py MODEL_DIR SENTENCES.parquet WORK_DIR [--rows 600]

SENTENCES.parquet: English sentences the model never saw (a run's data/test.parquet, column `src`). Prints
one JSON line per run: the exit code, whether `_SUCCESS` is there, and what the parts hold: rows, distinct
ids, rows whose text is not their own input row's (`mispaired`), rows whose translation differs from the
translation of their own text by the same model in this process (`other_translation`; beam search on
other batch shapes can differ in the last float, so a handful would be numerics, hundreds a mix-up), and
errors. Two rows need a fault only a test can cause (an engine that fails once, rows that kill their
process): they use tests/faults/sitecustomize.py, as the tests do. Everything else is real: files
rewritten under the run, SIGSTOP/SIGCONT and SIGKILL by pid, moto's S3 server on loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[3]
FAULTS = ROOT / "tests" / "faults"

ap = argparse.ArgumentParser()
ap.add_argument("model", type=Path)
ap.add_argument("sentences", type=Path)
ap.add_argument("work", type=Path)
ap.add_argument("--rows", type=int, default=600)
ap.add_argument("--only", default="", help="comma-separated row numbers of the table (1-13) to run; default: all (CI runs a few, "
                "on a tiny model)")
ap.add_argument("--variant", default="auto", help="the model variant for every run and the reference (fp32: translations that do "
                "not depend on the batch; int8's activations are quantized per batch, so a row's translation can change with "
                "the rows beside it)")
a = ap.parse_args()
shutil.rmtree(a.work, ignore_errors=True)
a.work.mkdir(parents=True)
english = pq.read_table(a.sentences).column("src").to_pylist()[: a.rows]
N = len(english)
H = min(300, N)  # the rows of the shorter inputs
_reference: dict[str, str | None] = {}
_translator = None


def own_translations(texts: list) -> list:
    """What the model makes of each text in this process (the CLI's default decoding)."""
    from s2s.engine import load_translator
    from s2s.config import DecodeConfig

    todo = sorted({t for t in texts if isinstance(t, str) and t not in _reference})
    if todo:
        global _translator
        # the CLI's defaults: beam 4; the variant the runs are given
        _translator = _translator or load_translator(a.model, DecodeConfig(beam_size=4), variant=a.variant, device="cpu")
        for t, r in zip(todo, _translator.translate(todo)):
            _reference[t] = r.translation
    return [_reference.get(t) for t in texts]


def cli(*args: str, faults: str = "", env: dict | None = None) -> subprocess.Popen:
    e = {**os.environ, **(env or {})}
    if faults:
        e["PYTHONPATH"] = os.pathsep.join(p for p in (str(FAULTS), e.get("PYTHONPATH")) if p)
        e["S2S_TEST_FAULT"] = faults
    return subprocess.Popen([sys.executable, "-m", "s2s.cli", "translate", *args, "--model", str(a.model), "--variant", a.variant], env=e,
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def done(p: subprocess.Popen) -> tuple[int, str]:
    log = p.communicate(timeout=1800)[0]
    return p.returncode, log


def parts_of(out: str, fs: pafs.FileSystem) -> list[str]:
    infos = fs.get_file_info(pafs.FileSelector(out, allow_not_found=True))
    return sorted(i.path for i in infos if i.base_name.startswith("part-"))


def report(row: str, code: int, log: str, out: str, truth: dict[str, str] | None = None, fs: pafs.FileSystem | None = None,
           **extra) -> dict:
    """Read the folder back. `truth`: row id -> the input text that row holds now."""
    fs = fs or pafs.LocalFileSystem()
    rows = []
    for p in parts_of(out, fs):
        with fs.open_input_file(p) as f:
            rows += pq.read_table(f).to_pylist()
    ids = [r.get("row_id") for r in rows]
    texts = [r.get("text") if not isinstance(r.get("text"), bytes) else r["text"].decode("utf-8", "replace") for r in rows]
    translation = next((k for k in (rows[0] if rows else {}) if k.endswith("translation")), "translation")
    error = translation[: -len("translation")] + "error"  # with --result-prefix, the input may have its own `error`
    got = [r.get(translation) for r in rows]
    want = own_translations(texts)
    success = fs.get_file_info(f"{out}/_SUCCESS").type == pafs.FileType.File
    result = {"row": row, "exit": code, "success": success, "rows": len(rows), "distinct_ids": len(set(ids)),
              "mispaired": sum(1 for i, t in zip(ids, texts) if truth is not None and truth.get(i) != t),
              "other_translation": sum(1 for g, w in zip(got, want) if g is not None and g != w),
              "errors": sum(1 for r in rows if r.get(error)),
              **extra, "last_line": (log.strip().splitlines() or [""])[-1][:240]}
    print(json.dumps(result, ensure_ascii=False), flush=True)
    return result


def wait_for_part(out: Path, proc: subprocess.Popen) -> None:
    while not any(out.glob("part-*")) and proc.poll() is None:
        time.sleep(0.05)


def truth_of(name: str, texts: list[str]) -> dict[str, str]:
    return {f"{name}#{i}": t for i, t in enumerate(texts)}


w = a.work
ONLY = {int(x) for x in a.only.split(',') if x}
# 1. the input rewritten in place while the run goes (same rows, another order), then --resume
if not ONLY or 1 in ONLY:
    src = w / "rewrite" / "corpus.parquet"
    src.parent.mkdir()
    pq.write_table(pa.table({"text": english, "key": list(range(N))}), src, row_group_size=100)
    out = w / "out-rewrite"
    p = cli(str(src), "--output", str(out), "--rows-per-shard", "100")
    wait_for_part(out, p)
    order = list(reversed(range(N)))
    pq.write_table(pa.table({"text": [english[i] for i in order], "key": order}), src, row_group_size=100)
    code, log = done(p)
    report("rewritten while read", code, log, str(out), truth_of("corpus.parquet", english))
    code, log = done(cli(str(src), "--output", str(out), "--rows-per-shard", "100", "--resume"))
    report("rewritten while read: --resume", code, log, str(out), truth_of("corpus.parquet", [english[i] for i in order]))

# 2. a run stalls past its lease; another starts with --overwrite and other shard sizes; the first wakes
if not ONLY or 2 in ONLY:
    src = w / "stall.parquet"
    pq.write_table(pa.table({"text": english}), src, row_group_size=50)
    out = w / "out-stall"
    first = cli(str(src), "--output", str(out), "--rows-per-shard", "50", "--lease-seconds", "10")
    wait_for_part(out, first)
    os.killpg(first.pid, signal.SIGSTOP)
    time.sleep(11)
    code_b, log_b = done(cli(str(src), "--output", str(out), "--rows-per-shard", "75", "--overwrite"))
    os.killpg(first.pid, signal.SIGCONT)
    code_a, log_a = done(first)
    report("stalled past its lease, taken over (--overwrite), woken", code_a, log_a, str(out), truth_of("stall.parquet", english),
           takeover_exit=code_b)

# 3. two schedulers start the same run on one S3 output a second apart, the second with --overwrite
if not ONLY or 3 in ONLY:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    moto = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "night", "AWS_SECRET_ACCESS_KEY": "night",
               "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}
        for _ in range(H):
            try:
                urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        s3 = pafs.S3FileSystem(endpoint_override=env["AWS_ENDPOINT_URL"], access_key="night", secret_key="night", region="us-east-1",
                               allow_bucket_creation=True)
        s3.create_dir("night")
        with s3.open_output_stream("night/in/corpus.parquet") as f:
            pq.write_table(pa.table({"text": english}), f)
        first = cli("s3://night/in/corpus.parquet", "--output", "s3://night/out", "--rows-per-shard", "100", env=env)
        time.sleep(1)
        second = cli("s3://night/in/corpus.parquet", "--output", "s3://night/out", "--rows-per-shard", "100", "--overwrite", env=env)
        (code_a, log_a), (code_b, log_b) = done(first), done(second)
        with s3.open_input_file("night/out/_run.json") as f:
            run_rows = json.loads(f.read())["rows"]
        report("two starts on one S3 output a second apart, the second --overwrite", code_a, log_a + log_b, "night/out",
               truth_of("corpus.parquet", english), fs=s3, second_exit=code_b, run_json_rows=run_rows)
    finally:
        moto.terminate()
        moto.wait(timeout=30)

# 4. 'in/*.parquet' where a Spark writer left in/_temporary/0/part-0.parquet
if not ONLY or 4 in ONLY:
    (w / "spark" / "_temporary" / "0").mkdir(parents=True)
    pq.write_table(pa.table({"text": english[:H]}), w / "spark" / "part-0.parquet")
    pq.write_table(pa.table({"text": english[:H]}), w / "spark" / "_temporary" / "0" / "part-0.parquet")
    for n, spec in enumerate([f"{w}/spark/*.parquet", f"{w}/spark/**/*.parquet", f"{w}/spark"]):
        code, log = done(cli(spec, "--output", str(w / f"out-spark{n}")))
        report(f"Spark leftovers, input {spec.replace(str(w), '')}", code, log, str(w / f"out-spark{n}"),
               truth_of("part-0.parquet", english[:H]), said=next((ln for ln in log.splitlines() if "skipped" in ln), "")[-160:])

# 5. a late file lands after a successful run; the schedule reruns with --resume
if not ONLY or 5 in ONLY:
    (w / "late").mkdir()
    pq.write_table(pa.table({"text": english[:100]}), w / "late" / "a.parquet")
    out = w / "out-late"
    code, log = done(cli(str(w / "late"), "--output", str(out), "--resume"))
    pq.write_table(pa.table({"text": english[100:150]}), w / "late" / "b.parquet")
    code, log = done(cli(str(w / "late"), "--output", str(out), "--resume"))
    report("a late file, then --resume", code, log, str(out), {**truth_of("a.parquet", english[:100]), **truth_of("b.parquet", english[100:150])},
           success_rows=json.loads((out / "_SUCCESS").read_text())["rows"] if (out / "_SUCCESS").exists() else None)

# 6-8. a BINARY text column; input columns named score and error
if not ONLY or 6 in ONLY:
    src = w / "binary.parquet"
    pq.write_table(pa.table({"text": pa.array([t.encode() for t in english[:H]], pa.binary())}), src)
    code, log = done(cli(str(src), "--output", str(w / "out-binary")))
    report("text column stored as BINARY", code, log, str(w / "out-binary"), truth_of("binary.parquet", english[:H]))
    for column in ("score", "error"):
        src = w / f"{column}.parquet"
        pq.write_table(pa.table({"text": english[:H], column: list(range(H))}), src)
        code, log = done(cli(str(src), "--output", str(w / f"out-{column}")))
        report(f"an input column named {column}", code, log, str(w / f"out-{column}"))
        code, log = done(cli(str(src), "--output", str(w / f"out-{column}"), "--result-prefix", "mt_"))
        names = pq.read_schema(parts_of(str(w / f"out-{column}"), pafs.LocalFileSystem())[0]).names
        report(f"an input column named {column}, --result-prefix mt_", code, log, str(w / f"out-{column}"), truth_of(f"{column}.parquet", english[:H]),
               fields_twice=sorted({n for n in names if names.count(n) > 1}))

# 9. text mode, an engine that fails once
if not ONLY or 9 in ONLY:
    txt = w / "in.txt"
    txt.write_text("".join(t + "\n" for t in english[:H]))
    code, log = done(cli(str(txt), "--output", str(w / "out.txt"), faults=f"broken_engine_once:{w / 'engine-once.marker'}"))
    lines = (w / "out.txt").read_text().split("\n")[:-1] if (w / "out.txt").exists() else []
    print(json.dumps({"row": "text mode, an engine that fails once", "exit": code, "lines": len(lines),
                      "other_translation": sum(1 for g, want in zip(lines, own_translations(english[:H])) if g != want),
                      "marker": (w / "out.txt.failed.json").exists(), "last_line": log.strip().splitlines()[-1][:240]}), flush=True)

# 10. one unit with 12 rows that each kill their actor, under the gate (5% of 600: 30)
if not ONLY or 10 in ONLY:
    rows = list(english)
    for i in range(0, 120, 10):
        rows[i] = "POISON " + rows[i]
    src = w / "poison.parquet"
    pq.write_table(pa.table({"text": rows}), src)
    code, log = done(cli(str(src), "--output", str(w / "out-poison"), "--rows-per-shard", "200", faults="poison:POISON"))
    report("12 rows in one unit that each kill their actor", code, log, str(w / "out-poison"), truth_of("poison.parquet", rows))

# 11. --id-column with a duplicated and a null id
if not ONLY or 11 in ONLY:
    src = w / "ids.parquet"
    pq.write_table(pa.table({"text": english[:H], "id": [None if i == 7 else str(i if i != 9 else 8) for i in range(H)]}), src)
    code, log = done(cli(str(src), "--output", str(w / "out-ids"), "--id-column", "id"))
    report("--id-column with a duplicated and a null id", code, log, str(w / "out-ids"))

# 12. the driver killed by SIGKILL and left a zombie (this script does not reap it); the retry at once with --resume
if not ONLY or 12 in ONLY:
    src = w / "zombie.parquet"
    pq.write_table(pa.table({"text": english}), src)
    out = w / "out-zombie"
    p = cli(str(src), "--output", str(out), "--rows-per-shard", "100")
    wait_for_part(out, p)
    os.killpg(p.pid, signal.SIGKILL)
    while Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        time.sleep(0.05)
    t0 = time.time()
    code, log = done(cli(str(src), "--output", str(out), "--rows-per-shard", "100", "--resume"))
    report("driver killed, left a zombie, --resume at once", code, log, str(out), truth_of("zombie.parquet", english),
           retry_seconds=round(time.time() - t0, 1))
    p.wait()

# 13. a text made only of a combining grapheme joiner (U+034F)
if not ONLY or 13 in ONLY:
    src = w / "cgj.parquet"
    pq.write_table(pa.table({"text": english[:H - 1] + ["\u034f"]}), src)
    code, log = done(cli(str(src), "--output", str(w / "out-cgj")))
    r = pq.read_table(w / "out-cgj").to_pylist()[-1] if (w / "out-cgj").exists() else {}
    report("a text of U+034F alone", code, log, str(w / "out-cgj"), truth_of("cgj.parquet", english[:H - 1] + ["\u034f"]),
           its_error=r.get("error"), its_translation=r.get("translation"))
