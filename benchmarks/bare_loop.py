"""The pipeline benchmark's baseline: the same translator in one plain process, no Ray.

    python benchmarks/bare_loop.py INPUT.parquet OUTPUT_DIR --model models/eng-fra [--beam-size 1] [--threads 2]

Reads the Parquet file, translates it shard by shard (`--rows-per-shard`, as `s2s-job translate` cuts it)
and writes one Parquet file per shard. `benchmarks/run.py` starts it as its own process and times the
whole process, as it does `s2s-job translate`: both pay the interpreter's start, imports and model load.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from s2s.engine import load_translator
from s2s.config import DecodeConfig


def bare_loop(input_path: Path, output: Path, model: Path, decode: DecodeConfig, threads: int, rows_per_shard: int) -> None:
    translator = load_translator(model, decode, threads=threads)
    table = pq.read_table(input_path)
    output.mkdir(parents=True, exist_ok=True)
    for start in range(0, table.num_rows, rows_per_shard):
        part = table.slice(start, rows_per_shard)
        res = translator.translate(part.column("src").to_pylist())
        part = part.append_column("translation", pa.array([r.translation for r in res], pa.string()))
        pq.write_table(part.append_column("score", pa.array([r.score for r in res], pa.float64())),
                       output / f"part-{start:010d}.parquet", compression="zstd")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("input", type=Path)
    ap.add_argument("output", type=Path)
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--beam-size", type=int, default=1)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows-per-shard", type=int, default=2000)
    a = ap.parse_args()
    bare_loop(a.input, a.output, a.model, DecodeConfig(beam_size=a.beam_size), a.threads, a.rows_per_shard)


if __name__ == "__main__":
    main()
