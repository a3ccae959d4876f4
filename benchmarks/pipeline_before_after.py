"""`s2s-job translate` at this checkout and at an earlier commit, each against the bare loop, side by side.

    python benchmarks/pipeline_before_after.py --ref 15cccef --model models/eng-fra --run runs/eng-fra
    python benchmarks/pipeline_before_after.py --ref HEAD --rows 2000 --passes 1 ...   # a smoke run

What a change to the translate job costs, measured in one run on one machine: the earlier commit is checked
out in a temporary git worktree, and its `s2s-job translate` processes run there, with the worktree first on
their PYTHONPATH (for the driver) and as their working directory (Ray's local workers put the driver's working
directory on their path ahead of the installed package; with the PYTHONPATH alone they import this checkout's
`s2s`). This checkout's runs start from its root. Each pass runs the
bare loop (benchmarks/bare_loop.py, no Ray), translate after and translate before, in an order that rotates
from pass to pass; the median pass of each is kept. Printed: rows/s of each, after/bare and before/bare
(process wall, and Ray Data's execution alone), and after/before.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from run import MATMUL_SECONDS_HELP, ROWS_PER_SHARD, checkout_at, cpu_info, int8_matmul_gops, matmul_gflops, median_run, repeated_parquet, run_bare_loop, run_translate_cli, test_split

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the earlier commit (anything `git worktree add` takes)")
    ap.add_argument("--model", type=Path, default=Path("models/eng-fra"))
    ap.add_argument("--run", type=Path, default=Path("runs/eng-fra"), help="its training run (the test split's sentences)")
    ap.add_argument("--rows", type=int, default=100000)
    ap.add_argument("--beam", type=int, default=1)
    ap.add_argument("--passes", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="the bare loop's onnxruntime threads")
    ap.add_argument("--json", type=Path, help="write every pass here too")
    ap.add_argument("--matmul-seconds", type=float, default=2.0, help=MATMUL_SECONDS_HELP)
    a = ap.parse_args()
    a.model, a.run = a.model.resolve(), a.run.resolve()

    with tempfile.TemporaryDirectory(prefix="s2s-before-after-") as tmp:
        work = Path(tmp)
        before = work / "before"
        with checkout_at(a.ref, before) as commit:
            env_before = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(before), os.environ.get("PYTHONPATH")) if p)}
            texts, _ = test_split(a.run)
            src = repeated_parquet(texts, a.rows, work / f"rows-{a.rows}.parquet")
            extra = ["--beam-size", str(a.beam)]
            sides = {
                "bare": lambda: run_bare_loop(src, work / "out-bare", a.model, a.beam, a.threads),
                "after": lambda: run_translate_cli(src, work / "out-after", a.model, extra, cwd=ROOT),
                "before": lambda: run_translate_cli(src, work / "out-before", a.model, extra, env_before, cwd=before),
            }
            runs: dict[str, list[dict]] = {k: [] for k in sides}
            order = list(sides)
            rates = (f"fp32 matmul {matmul_gflops(torch.float32, threads=a.threads, seconds=a.matmul_seconds):.1f} GFLOP/s, "
                     f"u8 x s8 {int8_matmul_gops(threads=a.threads, seconds=a.matmul_seconds):.1f} GOP/s ({a.threads} threads)")
            print(f"cpu: {cpu_info('model name')}, {os.cpu_count()} cpus, {rates}; {a.rows:,} rows, beam {a.beam}, rows per shard "
                  f"{ROWS_PER_SHARD}; before = {commit}", flush=True)
            for i in range(a.passes):
                for side in order[i % 3:] + order[: i % 3]:
                    r = sides[side]()
                    runs[side].append(r)
                    print(f"  pass {i + 1} {side:<6} {r['process_wall_s']:7.1f} s  {a.rows / r['process_wall_s']:7.1f} rows/s"
                          + (f"  (Ray Data's execution {r['phase_seconds']['translate_s']:.1f} s)" if "phase_seconds" in r else ""),
                          flush=True)

    med = {k: median_run(v) for k, v in runs.items()}
    rate = {k: a.rows / m["process_wall_s"] for k, m in med.items()}
    execution = {k: a.rows / med[k]["phase_seconds"]["translate_s"] for k in ("after", "before")}
    how = f"median of {a.passes} alternated passes" if a.passes > 1 else "one pass"
    print(f"{how}, {a.rows:,} rows:")
    print(f"  bare loop          {rate['bare']:8.1f} rows/s")
    print(f"  translate after    {rate['after']:8.1f} rows/s  {rate['after'] / rate['bare']:.2f}x the bare loop "
          f"(Ray Data's execution alone: {execution['after'] / rate['bare']:.2f}x)")
    print(f"  translate before   {rate['before']:8.1f} rows/s  {rate['before'] / rate['bare']:.2f}x the bare loop "
          f"(Ray Data's execution alone: {execution['before'] / rate['bare']:.2f}x)")
    print(f"  after / before     {rate['after'] / rate['before']:.3f}x")
    if a.json:
        a.json.write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "command": " ".join(sys.argv), "before": commit,
                                      "cpu": cpu_info("model name"), "rates": rates, "rows": a.rows, "passes": runs}, indent=1, default=str))


if __name__ == "__main__":
    main()
