"""Delta Lake (delta-rs) commit semantics, measured: could `--format delta` replace
s2s-job's own exactly-once commit protocol?

Questions, each asked with real `deltalake` (delta-rs) calls against a local
path AND against a moto S3 server this script starts on 127.0.0.1:

  Q1  Idempotent append.  `write_deltalake(mode="append")` carrying
      `CommitProperties(app_transactions=[Transaction(app_id, version)])`.
      Retrying the same (app_id, version): is the retry a no-op, or must the
      writer read `DeltaTable.transaction_version(app_id)` and skip itself?
  Q2  Racing blind appends.  N=4 processes append 100 rows each, all having
      loaded the same table version before any of them commits.  Does every
      commit land exactly once (rows, versions), how many retried/conflicted?
      On S3 this is repeated per storage option, to find what makes concurrent
      commits safe there.
  Q3  The stalled appender.  Writer A loads the table, starts an append and is
      paused mid-write (its input is a Python generator that blocks); writer B
      then does `mode="overwrite"` of the whole table; A resumes.  Does A's
      append land on top of B's overwrite (stale rows = duplicates relative to
      "rerun from scratch")?  Also via the lower-level API
      (`DeltaTable.create_write_transaction` on a DeltaTable loaded before B).
  Q4  Two overwrites racing: exactly one wins, or both commit in sequence?

Output: one JSON line per (question, store, variant) on stdout, with the
observed row counts, table versions, per-commit retries and exceptions
(class name + first line).  Nothing is asserted; the lines are the result.

Run (needs: deltalake pyarrow "moto[server]" boto3, e.g. in /tmp/delta-venv):

    /tmp/delta-venv/bin/python docs/experiments/delta-compare/run.py --work /tmp/delta-work

`--work DIR` is where local tables go (wiped at start).  `--skip-s3` runs the
local store only.  Takes well under 2 minutes on 2 cores.  The moto server is
started as a subprocess on a free port and stopped by its pid at the end.
"""

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

import deltalake
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.transaction import AddAction

SCHEMA = pa.schema([("id", pa.int64()), ("tag", pa.string())])
N_RACERS = 4
ROWS_PER_WRITER = 100
PAUSE_LIMIT_S = 60  # a paused writer gives up waiting after this long


# ----------------------------------------------------------------- helpers
def rows(tag, n=ROWS_PER_WRITER, start=0):
    return pa.table(
        {"id": pa.array(range(start, start + n), pa.int64()),
         "tag": pa.array([tag] * n, pa.string())},
        schema=SCHEMA,
    )


def exc_text(e):
    lines = str(e).strip().splitlines() or [""]
    return f"{type(e).__name__}: {lines[0]}"


def commit_props(txns):
    if not txns:
        return None
    return CommitProperties(app_transactions=[Transaction(a, v) for a, v in txns])


def emit(record):
    print(json.dumps(record, sort_keys=False), flush=True)


def table_state(uri, so):
    """Rows per tag, latest version and a compact history of the table."""
    dt = DeltaTable(uri, storage_options=so)
    tb = dt.to_pyarrow_table()
    tags = {}
    for t in tb.column("tag").to_pylist():
        tags[t] = tags.get(t, 0) + 1
    hist = []
    for h in sorted(dt.history(), key=lambda h: h["version"]):
        m = h.get("operationMetrics") or {}
        hist.append({
            "v": h["version"],
            "op": h.get("operation"),
            "mode": (h.get("operationParameters") or {}).get("mode"),
            "added_rows": m.get("num_added_rows"),
            "removed_files": m.get("num_removed_files"),
            "retries": m.get("num_retries"),
        })
    return {"version": dt.version(), "rows": tb.num_rows, "rows_by_tag": tags,
            "history": hist}


def paused_reader(tag, n, start, ready, go):
    """A RecordBatchReader that yields half its rows, signals `ready`, and
    blocks until `go` is set before yielding the rest.  write_deltalake has
    already loaded its snapshot (read version) when it pulls the first batch,
    so while blocked the writer is 'mid-write' on a fixed read version."""
    data = rows(tag, n, start)
    half = n // 2

    def gen():
        yield from data.slice(0, half).to_batches()
        ready.set()
        if not go.wait(PAUSE_LIMIT_S):
            raise TimeoutError("paused writer was never released")
        yield from data.slice(half).to_batches()

    return pa.RecordBatchReader.from_batches(SCHEMA, gen())


def writer_proc(uri, so, mode, tag, start, txns, ready, go, out_q):
    """Child process: one write_deltalake call, paused mid-input until `go`."""
    try:
        reader = paused_reader(tag, ROWS_PER_WRITER, start, ready, go)
        write_deltalake(uri, reader, mode=mode, storage_options=so,
                        commit_properties=commit_props(txns))
        out_q.put((tag, "committed"))
    except Exception as e:  # noqa: BLE001 - the exception *is* the result
        ready.set()
        out_q.put((tag, exc_text(e)))


def race(uri, so, specs):
    """Start one process per (mode, tag, start, txns) spec; each loads the
    table and pauses mid-write; when all are paused, release them together."""
    ctx = mp.get_context("spawn")
    go = ctx.Event()
    out_q = ctx.Queue()
    procs, readies = [], []
    for mode, tag, start, txns in specs:
        ready = ctx.Event()
        p = ctx.Process(target=writer_proc,
                        args=(uri, so, mode, tag, start, txns, ready, go, out_q))
        p.start()
        procs.append(p)
        readies.append(ready)
    all_ready = all(r.wait(PAUSE_LIMIT_S) for r in readies)
    go.set()
    results = {}
    for _ in procs:
        tag, res = out_q.get(timeout=PAUSE_LIMIT_S)
        results[tag] = res
    for p in procs:
        p.join(PAUSE_LIMIT_S)
        if p.is_alive():
            p.kill()
    return all_ready, results


def stalled_then(uri, so, a_mode, a_tag, a_txns, b_action):
    """Writer A (thread) loads the table and pauses mid-write; b_action() runs
    to completion; then A is resumed.  Returns (A's outcome, B's outcome)."""
    ready, go = threading.Event(), threading.Event()
    out = {}

    def a():
        try:
            write_deltalake(uri, paused_reader(a_tag, ROWS_PER_WRITER, 5000, ready, go),
                            mode=a_mode, storage_options=so,
                            commit_properties=commit_props(a_txns))
            out["A"] = "committed"
        except Exception as e:  # noqa: BLE001
            ready.set()
            out["A"] = exc_text(e)

    t = threading.Thread(target=a)
    t.start()
    if not ready.wait(PAUSE_LIMIT_S):
        out["A"] = "never paused"
    try:
        b_action()
        out["B"] = "committed"
    except Exception as e:  # noqa: BLE001
        out["B"] = exc_text(e)
    go.set()
    t.join(PAUSE_LIMIT_S)
    return out


# ----------------------------------------------------------------- stores
class LocalStore:
    name = "local"

    def __init__(self, work):
        self.root = os.path.join(work, "local")
        os.makedirs(self.root, exist_ok=True)
        self.so = None

    def uri(self, label):
        return os.path.join(self.root, f"{label}-{uuid.uuid4().hex[:6]}")

    def put_parquet(self, uri, relpath, table):
        path = os.path.join(uri, relpath)
        pq.write_table(table, path)
        return os.path.getsize(path)


class MotoS3Store:
    name = "s3-moto"
    BUCKET = "delta-compare"

    def __init__(self, work):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        moto = os.path.join(os.path.dirname(sys.executable), "moto_server")
        self.log = open(os.path.join(work, "moto_server.log"), "w")
        self.proc = subprocess.Popen([moto, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.base_so = {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
        }
        self.so = dict(self.base_so)
        import boto3
        self.s3 = boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                               aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.time() + 30
        while True:
            try:
                self.s3.create_bucket(Bucket=self.BUCKET)
                break
            except Exception:
                if time.time() > deadline or self.proc.poll() is not None:
                    raise
                time.sleep(0.3)

    def probe_if_none_match(self):
        """Does this moto honour PutObject If-None-Match: * (what delta-rs uses)?"""
        self.s3.put_object(Bucket=self.BUCKET, Key="_probe", Body=b"1", IfNoneMatch="*")
        try:
            self.s3.put_object(Bucket=self.BUCKET, Key="_probe", Body=b"2", IfNoneMatch="*")
            return "second conditional put SUCCEEDED (not honoured)"
        except Exception as e:  # noqa: BLE001
            return "second conditional put rejected: " + exc_text(e)

    def uri(self, label):
        return f"s3://{self.BUCKET}/{label}-{uuid.uuid4().hex[:6]}"

    def put_parquet(self, uri, relpath, table):
        buf = pa.BufferOutputStream()
        pq.write_table(table, buf)
        body = buf.getvalue().to_pybytes()
        key = uri.split(f"s3://{self.BUCKET}/", 1)[1] + "/" + relpath
        self.s3.put_object(Bucket=self.BUCKET, Key=key, Body=body)
        return len(body)

    def stop(self):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, 15)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, 9)
        self.log.close()


# ----------------------------------------------------------------- Q1
def q1_idempotent_append(st):
    so = st.so
    app = "s2s-job:out"

    # (a) same (app_id, version) written twice, one after the other
    uri = st.uri("q1a")
    write_deltalake(uri, rows("run1"), mode="append", storage_options=so,
                    commit_properties=commit_props([(app, 1)]))
    second = "committed"
    try:
        write_deltalake(uri, rows("run1"), mode="append", storage_options=so,
                        commit_properties=commit_props([(app, 1)]))
    except Exception as e:  # noqa: BLE001
        second = exc_text(e)
    s = table_state(uri, so)
    emit({"q": "Q1", "store": st.name, "variant": "retry_same_txn_sequential",
          "second_write": second, "rows": s["rows"], "expected_if_noop": 100,
          "version": s["version"],
          "txn_version": DeltaTable(uri, storage_options=so).transaction_version(app)})

    # (b) the writer checks transaction_version itself and skips
    uri = st.uri("q1b")
    skipped = 0
    for _attempt in range(2):
        dt = DeltaTable(uri, storage_options=so) if DeltaTable.is_deltatable(uri, so) else None
        seen = dt.transaction_version(app) if dt else None
        if seen is not None and seen >= 1:
            skipped += 1
            continue
        write_deltalake(uri, rows("run1"), mode="append", storage_options=so,
                        commit_properties=commit_props([(app, 1)]))
    s = table_state(uri, so)
    emit({"q": "Q1", "store": st.name, "variant": "retry_with_writer_side_check",
          "attempts": 2, "skipped": skipped, "rows": s["rows"], "version": s["version"]})

    # (c) a lower version after a higher one: rejected or accepted?
    uri = st.uri("q1c")
    write_deltalake(uri, rows("v5"), mode="append", storage_options=so,
                    commit_properties=commit_props([(app, 5)]))
    lower = "committed"
    try:
        write_deltalake(uri, rows("v3"), mode="append", storage_options=so,
                        commit_properties=commit_props([(app, 3)]))
    except Exception as e:  # noqa: BLE001
        lower = exc_text(e)
    s = table_state(uri, so)
    emit({"q": "Q1", "store": st.name, "variant": "lower_version_after_higher",
          "write_v3_after_v5": lower, "rows": s["rows"],
          "txn_version_after": DeltaTable(uri, storage_options=so).transaction_version(app)})

    # (d) the same (app_id, version) committed by two writers that both loaded
    #     the table before either committed (a retry racing the original)
    uri = st.uri("q1d")
    write_deltalake(uri, rows("seed", 0), mode="append", storage_options=so)
    ok, res = race(uri, so, [("append", "first", 0, [(app, 1)]),
                             ("append", "retry", 0, [(app, 1)])])
    s = table_state(uri, so)
    emit({"q": "Q1", "store": st.name, "variant": "retry_same_txn_concurrent",
          "both_paused_before_commit": ok, "results": res, "rows": s["rows"],
          "version": s["version"], "history": s["history"][1:]})


# ----------------------------------------------------------------- Q2
def q2_racing_appends(st, so=None, variant_suffix="", txn_kind="none"):
    so = st.so if so is None else so
    uri = st.uri("q2")
    write_deltalake(uri, rows("seed", 0), mode="append", storage_options=so)
    specs = []
    for i in range(N_RACERS):
        txns = {"none": None,
                "per_writer_app_id": [(f"s2s-job:writer{i}", 1)],
                "shared_app_id": [("s2s-job:out", i + 1)]}[txn_kind]
        specs.append(("append", f"w{i}", i * 1000, txns))
    t0 = time.time()
    ok, res = race(uri, so, specs)
    s = table_state(uri, so)
    committed = sum(1 for r in res.values() if r == "committed")
    per_tag_ok = all(s["rows_by_tag"].get(f"w{i}", 0) in (0, ROWS_PER_WRITER)
                     for i in range(N_RACERS))
    emit({"q": "Q2", "store": st.name,
          "variant": f"racing_appends_{txn_kind}{variant_suffix}",
          "writers": N_RACERS, "all_loaded_same_version_before_commit": ok,
          "committed": committed, "results": res,
          "rows": s["rows"], "expected_rows_if_all_land": N_RACERS * ROWS_PER_WRITER,
          "each_writer_0_or_100_rows": per_tag_ok, "rows_by_tag": s["rows_by_tag"],
          "versions_added": s["version"],
          "num_retries_metric_per_commit": [h["retries"] for h in s["history"][1:]],
          # every racer loaded version 0 before any committed, so every commit
          # landing at version k > 1 was checked against k-1 winning commits
          "commits_rebased_over_winners": sum(1 for h in s["history"][1:] if h["v"] > 1),
          "seconds": round(time.time() - t0, 2)})


def q2_s3_options(st):
    """Which S3 storage option makes racing commits safe on this version?"""
    variants = [
        ("default options (no locking/conditional option)", {}),
        ("aws_conditional_put=etag", {"aws_conditional_put": "etag"}),
        ("aws_conditional_put=disabled + AWS_S3_ALLOW_UNSAFE_RENAME=true",
         {"aws_conditional_put": "disabled", "AWS_S3_ALLOW_UNSAFE_RENAME": "true"}),
        ("AWS_S3_LOCKING_PROVIDER=dynamodb", {"AWS_S3_LOCKING_PROVIDER": "dynamodb"}),
    ]
    for label, extra in variants:
        so = dict(st.base_so, **extra)
        try:
            q2_racing_appends(st, so=so, variant_suffix=f" [{label}]")
        except Exception as e:  # noqa: BLE001 - option rejected up front
            emit({"q": "Q2", "store": st.name, "variant": f"racing_appends_none [{label}]",
                  "error": exc_text(e)})


# ----------------------------------------------------------------- Q3
def q3_stalled_appender(st):
    so = st.so
    b_overwrite = lambda uri, txns=None: (lambda: write_deltalake(  # noqa: E731
        uri, rows("B", ROWS_PER_WRITER, 2000), mode="overwrite", storage_options=so,
        commit_properties=commit_props(txns)))

    def report(variant, uri, out, note, **extra):
        s = table_state(uri, so)
        stale = s["rows_by_tag"].get("A", 0)
        emit({"q": "Q3", "store": st.name, "variant": variant, "note": note,
              "A_append": out.get("A"), "B_overwrite": out.get("B"),
              "rows": s["rows"], "rows_by_tag": s["rows_by_tag"],
              "stale_A_rows_after_overwrite": stale,
              "B_fences_A": stale == 0, **extra, "history": s["history"]})

    # (a) table has data when A loads it (the usual case for a rerun)
    uri = st.uri("q3a")
    write_deltalake(uri, rows("old"), mode="append", storage_options=so)
    out = stalled_then(uri, so, "append", "A", None, b_overwrite(uri))
    report("nonempty_snapshot", uri, out,
           "A loaded v0 (100 'old' rows), paused mid-write; B overwrote; A resumed")

    # (b) same, through the lower-level API: A's data file is already written,
    #     A commits it with create_write_transaction on a DeltaTable from before B
    uri = st.uri("q3b")
    write_deltalake(uri, rows("old"), mode="append", storage_options=so)
    dt_a = DeltaTable(uri, storage_options=so)            # A reads version 0
    fname = f"part-A-{uuid.uuid4().hex}.parquet"
    size = st.put_parquet(uri, fname, rows("A", ROWS_PER_WRITER, 5000))  # A writes data
    out = {}
    try:
        b_overwrite(uri)()                                 # B overwrites -> v1
        out["B"] = "committed"
    except Exception as e:  # noqa: BLE001
        out["B"] = exc_text(e)
    try:                                                   # A wakes and commits
        add = AddAction(fname, size, {}, int(time.time() * 1000), True,
                        json.dumps({"numRecords": ROWS_PER_WRITER}))
        dt_a.create_write_transaction([add], mode="append", schema=SCHEMA)
        out["A"] = "committed"
    except Exception as e:  # noqa: BLE001
        out["A"] = exc_text(e)
    report("nonempty_snapshot_lowlevel_create_write_transaction", uri, out,
           "A: DeltaTable at v0, parquet file written, then B overwrote, then "
           "A.create_write_transaction([AddAction], mode='append')")

    # (c) table exists but has no data files when A loads it
    uri = st.uri("q3c")
    DeltaTable.create(uri, schema=SCHEMA, storage_options=so)
    out = stalled_then(uri, so, "append", "A", None, b_overwrite(uri))
    report("empty_snapshot", uri, out,
           "A loaded v0 (schema only, no files), paused; B overwrote; A resumed")

    # (d) as (c), but every writer of this output carries the same app_id
    uri = st.uri("q3d")
    DeltaTable.create(uri, schema=SCHEMA, storage_options=so)
    out = stalled_then(uri, so, "append", "A", [("s2s-job:out", 1)],
                       b_overwrite(uri, [("s2s-job:out", 2)]))
    report("empty_snapshot_shared_app_id", uri, out,
           "as empty_snapshot, A carries Transaction('s2s-job:out',1), "
           "B's overwrite carries Transaction('s2s-job:out',2)")

    # (e) A stalled *before* it loaded the table (e.g. while translating), so
    #     its snapshot is already B's: B's overwrite carries Transaction(app, 2),
    #     A (epoch 1) appends with Transaction(app, 1), once blindly and once
    #     after checking transaction_version(app) against its own epoch
    for checked in (False, True):
        uri = st.uri("q3e")
        write_deltalake(uri, rows("old"), mode="append", storage_options=so)
        out = {}
        b_overwrite(uri, [("s2s-job:out", 2)])()
        out["B"] = "committed"
        dt = DeltaTable(uri, storage_options=so)
        seen = dt.transaction_version("s2s-job:out")
        if checked and seen is not None and seen > 1:
            out["A"] = f"skipped by writer: transaction_version={seen} > own epoch 1"
        else:
            try:
                write_deltalake(dt, rows("A", ROWS_PER_WRITER, 5000), mode="append",
                                commit_properties=commit_props([("s2s-job:out", 1)]))
                out["A"] = "committed"
            except Exception as e:  # noqa: BLE001
                out["A"] = exc_text(e)
        report("loaded_after_overwrite" + ("_writer_checks_epoch" if checked else ""), uri, out,
               "A (epoch 1) opened the table only after B's overwrite (epoch 2) and "
               + ("compared transaction_version to its epoch before appending"
                  if checked else "appended"),
               txn_version_seen_by_A=seen,
               txn_version_after=DeltaTable(uri, storage_options=so)
               .transaction_version("s2s-job:out"))

    # (f) table does not exist yet when A starts
    uri = st.uri("q3f")
    out = stalled_then(uri, so, "append", "A", None, b_overwrite(uri))
    report("no_table_yet", uri, out,
           "A started on a missing table (would create v0), paused; B created it "
           "with overwrite; A resumed")


# ----------------------------------------------------------------- Q4
def q4_racing_overwrites(st):
    so = st.so
    for variant, seed in (("nonempty_table", 100), ("empty_table", 0)):
        uri = st.uri("q4")
        if seed:
            write_deltalake(uri, rows("old", seed), mode="append", storage_options=so)
        else:
            DeltaTable.create(uri, schema=SCHEMA, storage_options=so)
        ok, res = race(uri, so, [("overwrite", "X", 0, None), ("overwrite", "Y", 1000, None)])
        s = table_state(uri, so)
        emit({"q": "Q4", "store": st.name, "variant": f"racing_overwrites_{variant}",
              "both_loaded_same_version_before_commit": ok, "results": res,
              "rows": s["rows"], "rows_by_tag": s["rows_by_tag"],
              "exactly_one_writers_rows": sorted(s["rows_by_tag"]) in (["X"], ["Y"]),
              "history": s["history"]})


# ----------------------------------------------------------------- main
def q2_with_txn_ids(st):
    q2_racing_appends(st, txn_kind="per_writer_app_id")
    q2_racing_appends(st, txn_kind="shared_app_id")


def run_store(st, s3=False):
    for fn in (q1_idempotent_append, q2_racing_appends, q2_with_txn_ids,
               q3_stalled_appender, q4_racing_overwrites):
        t0 = time.time()
        try:
            fn(st)
        except Exception as e:  # noqa: BLE001 - report and go on to the next question
            emit({"q": fn.__name__, "store": st.name, "error": exc_text(e)})
        print(f"# {st.name} {fn.__name__}: {time.time() - t0:.1f}s", file=sys.stderr, flush=True)
    if s3:
        t0 = time.time()
        q2_s3_options(st)
        print(f"# {st.name} q2_s3_options: {time.time() - t0:.1f}s", file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", required=True, help="scratch dir (wiped at start)")
    ap.add_argument("--skip-s3", action="store_true", help="local store only")
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    os.makedirs(args.work)
    emit({"env": {"deltalake": deltalake.__version__, "pyarrow": pa.__version__,
                  "python": sys.version.split()[0], "nproc": os.cpu_count()}})
    t0 = time.time()
    run_store(LocalStore(args.work))
    if not args.skip_s3:
        import moto
        emit({"env": {"moto": moto.__version__}})
        st = MotoS3Store(args.work)
        try:
            emit({"env": {"moto_if_none_match": st.probe_if_none_match()}})
            run_store(st, s3=True)
        finally:
            st.stop()
    print(f"# total {time.time() - t0:.1f}s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
