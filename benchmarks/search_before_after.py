"""The search (s2s/search.py) at this checkout and at an earlier commit, on the same engine and sentences, in one process.

    python benchmarks/search_before_after.py --ref f431667 --model models/eng-fra --run runs/eng-fra
    python benchmarks/search_before_after.py --ref HEAD --sentences 16 --rounds 1 ...   # a smoke run

What a change to the search costs on the CPU path: the earlier commit's s2s/search.py is loaded from a temporary
git worktree as a second module, and the translator is given one search or the other (the engine, the tokenizers,
the batching and the sentences are the same objects). Each round translates the sentences with both, in an order
that alternates from round to round, for each decode (greedy and beam 4) and batch size; the median round is
kept. The outputs of the two must be identical, or it stops. Printed: sentences/s of each, and after/before.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
from run import MATMUL_SECONDS_HELP, checkout_at, cpu_info, matmul_gflops, test_split, timed_translate

import s2s.translator
from s2s.config import DecodeConfig
from s2s.engine import load_translator


def load_search(path: Path):
    """A search module from another checkout, under its own name (it imports nothing from s2s)."""
    spec = importlib.util.spec_from_file_location("search_before", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def use(search) -> None:
    """The translator decodes with this module's search from now on."""
    s2s.translator.beam_search, s2s.translator.greedy_search = search.beam_search, search.greedy_search


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the earlier commit (anything `git worktree add` takes)")
    ap.add_argument("--model", type=Path, default=Path("models/eng-fra"))
    ap.add_argument("--run", type=Path, default=Path("runs/eng-fra"), help="its training run (the test split's sentences)")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batches", default="1,64", help="batch sizes, comma-separated")
    ap.add_argument("--rounds", type=int, default=5, help="alternated rounds per decode and batch size (median kept)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="onnxruntime threads")
    ap.add_argument("--matmul-seconds", type=float, default=2.0, help=MATMUL_SECONDS_HELP)
    a = ap.parse_args()

    after = sys.modules["s2s.search"]
    with tempfile.TemporaryDirectory(prefix="s2s-search-before-") as tmp, checkout_at(a.ref, Path(tmp) / "before") as commit:
        before = load_search(Path(tmp) / "before" / "s2s" / "search.py")

    texts = test_split(a.run)[0][: a.sentences]
    print(f"CPU {cpu_info('model name')}; fp32 matmul {matmul_gflops(__import__('torch').float32, threads=a.threads, seconds=a.matmul_seconds):,.0f} GFLOP/s; "
          f"before: s2s/search.py at {commit}; {len(texts)} test sentences; {a.threads} onnxruntime thread(s)")
    print(f"  {'decode':<8} {'batch':>5} {'before':>10} {'after':>10} {'after/before':>13}   sent/s, median of {a.rounds} alternated rounds")
    for beam in (1, 4):
        translator = load_translator(a.model, DecodeConfig(beam_size=beam, max_batch_tokens=1 << 20), threads=a.threads)
        if beam == 1:
            print(f"  engine: {translator.engine.provider}, variant {translator.engine.variant}")
        for batch in (int(b) for b in a.batches.split(",")):
            speed: dict[str, list[float]] = {"before": [], "after": []}
            outputs = {}
            for r in range(a.rounds):
                for name in (("before", "after") if r % 2 == 0 else ("after", "before")):
                    use(before if name == "before" else after)
                    timed_translate(translator, texts[:batch], batch)  # warm-up at this shape
                    rate, out = timed_translate(translator, texts, batch)
                    speed[name].append(rate)
                    outputs[name] = out
            use(after)
            if outputs["before"] != outputs["after"]:
                sys.exit(f"beam {beam} batch {batch}: the two searches translated differently; a speed ratio would compare different work")
            b, f = float(np.median(speed["before"])), float(np.median(speed["after"]))
            print(f"  {'greedy' if beam == 1 else f'beam {beam}':<8} {batch:>5} {b:>10.1f} {f:>10.1f} {f / b:>12.2f}x   "
                  f"rounds: before {', '.join(f'{x:.0f}' for x in speed['before'])}; after {', '.join(f'{x:.0f}' for x in speed['after'])}")


if __name__ == "__main__":
    main()
