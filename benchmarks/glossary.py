"""What a glossary buys and costs: `s2s-job translate` on the test split with `--glossary` and without, side by
side, in alternated passes.

    python benchmarks/glossary.py --model models/eng-fra --run runs/eng-fra
    python benchmarks/glossary.py --model M --run R --passes 1 --rows 200    # a smoke run (CI)

The glossary is built from the test split's own references, as constrained-decoding papers do: an English word
and a French word of four letters or more that occur in at least `--min-count` rows and whose rows agree
(Dice coefficient of the rows holding each, source against references, at least `--min-dice`) become a term.
Printed per side: the share of required terms the output holds (the same count for both sides: the side without
a glossary says them by itself or not), BLEU and chrF on all rows and on the rows with a term, and the median
pass's rows/s; then glossary/plain for each.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from run import machine_line, median_run, run_translate_cli, side_by_side_args

from s2s.glossary import matched_terms, terms_met
from s2s.quality import corpus_scores

WORD = re.compile(r"\w{4,}")


def build_glossary(sources: list[str], references: list[list[str]], min_count: int, min_dice: float) -> list[tuple[str, str]]:
    """(English word, French word) pairs whose rows agree: each English word's best French word by Dice."""
    src_words = [set(WORD.findall(s.lower())) for s in sources]
    ref_words = [set(WORD.findall(" ".join(r).lower())) for r in references]
    src_count, ref_count = Counter(w for ws in src_words for w in ws), Counter(w for ws in ref_words for w in ws)
    pair = Counter((e, f) for es, fs in zip(src_words, ref_words) for e in es if src_count[e] >= min_count for f in fs if ref_count[f] >= min_count)
    best: dict[str, tuple[float, str]] = {}
    for (e, f), n in pair.items():
        dice = 2 * n / (src_count[e] + ref_count[f])
        if dice >= min_dice and dice > best.get(e, (0.0, ""))[0]:
            best[e] = (dice, f)
    return sorted((e, f) for e, (_, f) in best.items())


def read_output(out: Path) -> list[str]:
    rows = pq.read_table(out, columns=["row_id", "translation"]).to_pylist()
    rows.sort(key=lambda r: int(r["row_id"].rsplit("#", 1)[1]))
    return [r["translation"] or "" for r in rows]


def main() -> None:
    ap = side_by_side_args(__doc__)
    ap.add_argument("--min-count", type=int, default=5)
    ap.add_argument("--min-dice", type=float, default=0.6)
    a = ap.parse_args()
    print(machine_line(a.model, a.matmul_seconds), flush=True)
    test = pq.read_table(a.run / "data" / "test.parquet", columns=["src", "refs"])
    if a.rows:
        test = test.slice(0, a.rows)
    sources, refs = test.column("src").to_pylist(), test.column("refs").to_pylist()
    glossary = build_glossary(sources, refs, a.min_count, a.min_dice)
    required = [matched_terms(s, tuple(glossary)) for s in sources]
    with_terms = [i for i, r in enumerate(required) if r]
    in_refs = sum(len(terms_met(" ".join(refs[i]), required[i])) for i in with_terms)  # how often the glossary agrees with the row's references
    agreed = [i for i in with_terms if terms_met(" ".join(refs[i]), required[i]) == required[i]]  # rows whose references hold all their terms
    print(f"glossary: {len(glossary)} terms from {test.num_rows:,} rows (min count {a.min_count}, Dice >= {a.min_dice}), e.g. "
          f"{', '.join(f'{e}->{f}' for e, f in glossary[:8])}; {len(with_terms):,} rows hold a term, "
          f"{sum(map(len, required)):,} terms required, of which the rows' references hold {in_refs:,}", flush=True)
    runs: dict[str, list[dict]] = {"glossary": [], "plain": []}
    outputs: dict[str, list[str]] = {}
    with tempfile.TemporaryDirectory(prefix="s2s-glossary-") as work:
        src, terms = Path(work) / "test.parquet", Path(work) / "terms.tsv"
        pq.write_table(pa.table({"src": sources, "refs": refs}), src)
        terms.write_text("".join(f"{e}\t{f}\n" for e, f in glossary), encoding="utf-8")
        sides = {"glossary": ["--glossary", str(terms)], "plain": []}
        for p in range(a.passes):
            for side in (list(sides) if p % 2 == 0 else list(sides)[::-1]):
                r = run_translate_cli(src, Path(work) / f"out-{side}", a.model, ["--reference-column", "refs", *sides[side]])
                runs[side].append(r)
                outputs[side] = read_output(Path(work) / f"out-{side}")  # every pass decodes the same: the last is kept
                print(f"  pass {p + 1} {side:8} {r['process_wall_s']:6.1f} s  {test.num_rows / r['phase_seconds']['translate_s']:7.1f} rows/s "
                      f"in Ray Data  BLEU {r['quality']['bleu']:.2f}", flush=True)
    scores = {}
    for side, hyps in outputs.items():
        met = sum(len(terms_met(hyps[i], required[i])) for i in with_terms)
        scores[side] = {"terms_met": met, "terms_required": sum(map(len, required)), "all": corpus_scores(hyps, refs),
                        "rows_with_terms": corpus_scores([hyps[i] for i in with_terms], [refs[i] for i in with_terms]),
                        "rows_references_agree": corpus_scores([hyps[i] for i in agreed], [refs[i] for i in agreed]),
                        "rows_per_s": test.num_rows / median_run(runs[side])["phase_seconds"]["translate_s"]}
        s = scores[side]
        print(f"{side:8}: terms met {s['terms_met']:,} of {s['terms_required']:,} ({s['terms_met'] / max(1, s['terms_required']):.1%}); "
              f"BLEU {s['all']['bleu']:.2f} all rows, {s['rows_with_terms']['bleu']:.2f} rows with a term, "
              f"{s['rows_references_agree']['bleu']:.2f} the {len(agreed):,} whose references hold all their terms; chrF {s['all']['chrf']:.2f}, "
              f"{s['rows_with_terms']['chrf']:.2f}; {s['rows_per_s']:.1f} rows/s in Ray Data")
    g, p = scores["glossary"], scores["plain"]
    share = {k: v["terms_met"] / max(1, v["terms_required"]) for k, v in scores.items()}
    print(f"glossary/plain: terms met {share['glossary']:.1%} vs {share['plain']:.1%}, BLEU {g['all']['bleu'] - p['all']['bleu']:+.2f} all rows, "
          f"{g['rows_with_terms']['bleu'] - p['rows_with_terms']['bleu']:+.2f} rows with a term, "
          f"{g['rows_references_agree']['bleu'] - p['rows_references_agree']['bleu']:+.2f} rows whose references agree; speed {g['rows_per_s'] / p['rows_per_s']:.3f}x")
    if a.json:
        a.json.write_text(json.dumps({"glossary": glossary, "terms_in_references": in_refs, "scores": scores, "runs": runs}, indent=1, default=str))


if __name__ == "__main__":
    main()
