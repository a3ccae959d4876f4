"""BLEU per CPU-minute: short `s2s-job train` runs that each change one setting, side by side.

Every point trains with the same budget in steps sized to about `--minutes` of wall time on the
2-core dev machine, with the learning-rate schedule (warm-up, linear decay) compressed to that many
steps, so each point ends annealed rather than cut off mid-schedule. The table gives valid BLEU
(greedy, multi-reference), the minutes each really took (validation included: one at the epoch
boundary and one at the end), BLEU per CPU-minute, and the median target tokens/s.

    python benchmarks/train_sweep.py --out runs/sweep            # all points, in order
    python benchmarks/train_sweep.py --out runs/sweep --only base,hidden384
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

from s2s.plots import read_metrics

# name -> (flags, steps per minute measured on the dev machine, 2 workers x 1 thread, bf16)
S2S_JOB = shutil.which("s2s-job", path=os.path.dirname(sys.executable)) or "s2s-job"  # this venv's, even unactivated

POINTS: dict[str, tuple[list[str], float]] = {
    "base": ([], 38.0),  # 6,000 tokens/step at ~3,800 tokens/s
    "vocab4k": (["--src-vocab-size", "4000", "--tgt-vocab-size", "4000"], 38.0),
    "hidden384": (["--hidden-size", "384"], 42.0),
    "batch12k": (["--batch-tokens", "12000"], 17.0),
    "lr3e-3": (["--lr", "3e-3"], 38.0),
}


def last_validation(run: Path) -> dict:
    return read_metrics(run)[1][-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/sweep"))
    ap.add_argument("--minutes", type=float, default=11.0, help="target training minutes per point")
    ap.add_argument("--only", default="", help="comma-separated point names (default: all)")
    ap.add_argument("--json", type=Path, help="also write the table here")
    ap.add_argument("--data", help="the pairs to train on (default: train's own, the bundled Tatoeba copy)")
    ap.add_argument("--extra", default="", help="more `s2s-job train` flags for every point, e.g. a small model for a smoke run")
    args = ap.parse_args()
    names = [n for n in args.only.split(",") if n] or list(POINTS)
    cpus = os.cpu_count() or 1
    rows = []
    for name in names:
        flags, steps_per_min = POINTS[name]
        steps = int(steps_per_min * args.minutes)
        run = args.out / name
        args.out.mkdir(parents=True, exist_ok=True)
        done = (run / "metrics.jsonl").exists() and last_validation(run)["step"] == steps
        if not done:
            cmd = [S2S_JOB, "train", str(run), "--max-steps", str(steps), "--warmup-steps", str(max(1, steps // 5)),
                   "--max-minutes", str(args.minutes * 2), "--patience", "0", *flags, *args.extra.split(),
                   *(["--data", args.data] if args.data else [])]
            print("$", " ".join(cmd), flush=True)
            t0 = time.time()
            with open(args.out / f"{name}.log", "w") as log:
                rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT).returncode
            if rc:
                sys.exit(f"{name}: train exited {rc}; see {args.out / f'{name}.log'}")
            print(f"{name}: {time.time() - t0:.0f} s wall", flush=True)
        v = last_validation(run)
        minutes = v["elapsed_s"] / 60
        rows.append({"point": name, "flags": " ".join(flags) or "(defaults)", "steps": v["step"], "train_min": round(minutes, 1),
                     "cpu_min": round(minutes * cpus, 1), "valid_bleu": v["valid_bleu"], "valid_chrf": v["valid_chrf"],
                     "bleu_per_cpu_min": round(v["valid_bleu"] / (minutes * cpus), 3),
                     "tokens_per_s": int(statistics.median(r["tokens_per_s"] for r in read_metrics(run)[0]))})
    print(f"\n{'point':<10} {'flags':<44} {'steps':>5} {'min':>5} {'CPU-min':>7} {'BLEU':>6} {'chrF':>6} {'BLEU/CPU-min':>12} {'tok/s':>6}")
    for r in rows:
        print(f"{r['point']:<10} {r['flags']:<44} {r['steps']:>5} {r['train_min']:>5} {r['cpu_min']:>7} {r['valid_bleu']:>6} "
              f"{r['valid_chrf']:>6} {r['bleu_per_cpu_min']:>12} {r['tokens_per_s']:>6}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
