"""What checking each row costs and buys: `s2s-job translate` on the test split with the checks (the default)
and with `--no-check-rows`, side by side, in alternated passes.

    python benchmarks/row_checks.py --model models/eng-fra --run runs/eng-fra
    python benchmarks/row_checks.py --model M --run R --passes 1 --rows 200    # a smoke run (CI)

Printed per side: the median pass's rows/s in Ray Data's execution and for the whole process, test BLEU and
chrF against the split's references (the default decode: beam 4, the CPU default variant), and the rows per
flag before and after the remedy (from _run.json's row_flags); then checked/unchecked for speed and BLEU.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from run import machine_line, median_run, run_translate_cli, side_by_side_args


def main() -> None:
    a = side_by_side_args(__doc__).parse_args()
    print(machine_line(a.model, a.matmul_seconds), flush=True)
    test = pq.read_table(a.run / "data" / "test.parquet", columns=["src", "refs"])
    if a.rows:
        test = test.slice(0, a.rows)
    sides = {"checked": [], "unchecked": ["--no-check-rows"]}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    with tempfile.TemporaryDirectory(prefix="s2s-row-checks-") as work:
        src = Path(work) / "test.parquet"
        pq.write_table(pa.table({"src": test.column("src"), "refs": test.column("refs")}), src)
        for p in range(a.passes):
            for side in (list(sides) if p % 2 == 0 else list(sides)[::-1]):
                r = run_translate_cli(src, Path(work) / f"out-{side}", a.model, ["--reference-column", "refs", *sides[side]])
                runs[side].append(r)
                print(f"  pass {p + 1} {side:9} {r['process_wall_s']:6.1f} s  {test.num_rows / r['phase_seconds']['translate_s']:7.1f} rows/s "
                      f"in Ray Data  BLEU {r['quality']['bleu']:.2f}", flush=True)
    med = {side: median_run(rs) for side, rs in runs.items()}
    for side, r in med.items():
        print(f"{side:9}: {test.num_rows / r['phase_seconds']['translate_s']:.1f} rows/s in Ray Data's execution, "
              f"{test.num_rows / r['process_wall_s']:.1f} for the whole process; BLEU {r['quality']['bleu']:.2f}, chrF {r['quality']['chrf']:.2f}")
        if r.get("row_flags"):
            print(f"           rows per flag before the remedy {r['row_flags'].get('before_remedy')}, after {r['row_flags'].get('after_remedy')} "
                  f"(of {r['rows']:,})")
    c, u = med["checked"], med["unchecked"]
    print(f"checked/unchecked: speed {u['phase_seconds']['translate_s'] / c['phase_seconds']['translate_s']:.3f}x in Ray Data, "
          f"{u['process_wall_s'] / c['process_wall_s']:.3f}x whole process; BLEU {c['quality']['bleu'] - u['quality']['bleu']:+.2f}")
    if a.json:
        a.json.write_text(json.dumps(runs, indent=1, default=str))


if __name__ == "__main__":
    main()
