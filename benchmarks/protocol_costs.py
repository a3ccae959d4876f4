"""What the exactly-once protocol costs per unit, beside the plain operation it replaces, locally and on S3.

    python benchmarks/protocol_costs.py                      # local disk, and moto's S3 server started here
    python benchmarks/protocol_costs.py --rows 2000 --repeat 1   # seconds (CI runs this)

Rows of the table, each measured side by side in this run (median over --repeat passes over every unit):
- a unit's rows read from its pinned version (`read_rows`: the identity checked at open and after the read
  locally; every ranged GET conditional on the ETag on S3) against pyarrow reading the same row group;
- a part published fenced (`LocalFolder/S3Folder.publish`: the lease checked, then a create through the
  epoch's staging folder and a hard link locally; a PutObject with If-None-Match and a second lease check
  on S3) against a plain write of the same bytes;
- one lease check (`Fence.check`, done before every write) and one lease renewal (the renewal thread's
  work, every lease/6 seconds: 20 s by default).
moto runs in-process Python on this machine: its latencies are not S3's (a real S3 round trip is ~10-30 ms),
so the S3 rows say how many requests each step makes more than how long they take on AWS.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from s2s.commit import open_folder, part_bytes
from s2s.inputs import plan, read_rows, result_names
from s2s.lease import Lease
from s2s.storage import filesystem, s3_client, s3_parts


def corpus(rows: int, rows_per_unit: int) -> pa.Table:
    texts = [f"Sentence number {i} is a little longer than most, as real ones are." for i in range(rows)]
    return pa.table({"text": texts, "doc": [t * 4 for t in texts]})


def median_ms(fn, units: list, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for u in units:
            fn(u)
        times.append((time.perf_counter() - t0) / len(units))
    return statistics.median(times) * 1000


def measure(where: str, base: str, rows: int, rows_per_unit: int, repeat: int) -> list[dict]:
    fs, root = filesystem(base)
    source = f"{root}/in/corpus.parquet"
    fs.create_dir(f"{root}/in")
    fs.create_dir(f"{root}/plain")
    with fs.open_output_stream(source) as f:
        pq.write_table(corpus(rows, rows_per_unit), f, row_group_size=rows_per_unit)
    work = plan(f"{base}/in/corpus.parquet", "text", rows_per_unit, result_names("", False, None))
    out = []

    def row(what: str, ours: float, plain: float | None, unit: str = "ms/unit") -> None:
        out.append({"where": where, "what": what, "ours_ms": round(ours, 3), "plain_ms": None if plain is None else round(plain, 3),
                    "ratio": None if not plain else round(ours / plain, 2), "unit": unit})
        print(f"  {where:<6} {what:<58} {ours:>9.3f} {'' if plain is None else f'{plain:9.3f}':>9} "
              f"{'' if not plain else f'{ours / plain:6.2f}x':>7}  {unit}", flush=True)

    def plain_read(u: dict) -> None:
        with fs.open_input_file(source) as f:
            pq.ParquetFile(f).read_row_group(u["start"] // rows_per_unit)

    def pinned_read(u: dict) -> None:
        from s2s import inputs

        inputs._LAST_ROW_GROUP.clear()  # each unit read afresh, as a read task on another worker would
        read_rows(u)

    median_ms(pinned_read, work.units[:1], 1)  # warm both paths (imports, connections)
    median_ms(plain_read, work.units[:1], 1)
    row("read a unit's rows: pinned vs plain", median_ms(pinned_read, work.units, repeat), median_ms(plain_read, work.units, repeat))

    lease = Lease(f"{base}/out")
    lease.acquire(interrupt_main=False)
    try:
        folder = open_folder(f"{base}/out", lease.fence)
        folder.begin()
        data = {u["name"]: part_bytes(read_rows(u), {"unit": u["name"]}) for u in work.units}
        passes = iter(range(10**6))

        def fenced(u: dict) -> None:
            folder.publish(f"{u['name']}-{n}", data[u["name"]])

        def plain_write(u: dict) -> None:
            with fs.open_output_stream(f"{root}/plain/{u['name']}-{n}") as f:
                f.write(data[u["name"]])

        times = {"fenced": [], "plain": []}
        for _ in range(repeat):
            n = next(passes)
            times["fenced"].append(median_ms(fenced, work.units, 1))
            times["plain"].append(median_ms(plain_write, work.units, 1))
        row(f"publish a part ({statistics.mean(len(d) for d in data.values()) / 1024:.0f} KiB): fenced vs plain write",
            statistics.median(times["fenced"]), statistics.median(times["plain"]))
        fence = lease.fence
        row("one lease check (before every write)", median_ms(lambda _: fence.check(), list(range(20)), repeat), None, "ms")
        row("one lease renewal (every lease/6 s: 20 s by default)", median_ms(lambda _: renew(lease), list(range(5)), repeat), None, "ms")
    finally:
        lease.release()
    return out


def renew(lease: Lease) -> None:
    """What the renewal thread does once (s2s/lease.py `_renew`)."""
    top = max(lease.store.epochs(), default=0)
    record, etag = lease.store.read(lease.epoch)
    assert top == lease.epoch and record["owner"] == lease.owner
    lease.etag = lease.store.rewrite(lease.epoch, lease._record(), etag or lease.etag)


def moto_server() -> tuple[subprocess.Popen, dict]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            urllib.request.urlopen(endpoint, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    return proc, {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench",
                  "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=40000)
    ap.add_argument("--rows-per-unit", type=int, default=2000, help="as --rows-per-shard (its default)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--s3", default="auto", help="an s3:// prefix to use; 'auto' starts moto's server here; 'none' skips S3")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    print(f"  {'where':<6} {'what':<58} {'ours':>9} {'plain':>9} {'ratio':>7}")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows += measure("local", tmp, a.rows, a.rows_per_unit, a.repeat)
    server = None
    if a.s3 != "none":
        prefix = a.s3
        if a.s3 == "auto":
            server, env = moto_server()
            os.environ.update(env)
            prefix = "s3://protocol-costs/run"
            s3_client().create_bucket(Bucket=s3_parts(prefix)[0])
        try:
            rows += measure("s3", prefix, a.rows, a.rows_per_unit, a.repeat)
        finally:
            if server:
                server.terminate()
                server.wait(timeout=30)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
