"""A translate run's outcome: each part's counts (kept in its footer) and the run's summary, `_run.json`.

    status        complete            every planned unit is in a verified part and the error rate is within
                                      --max-error-rate: _SUCCESS is written, exit 0
                  failed_error_rate   every unit is committed but too many rows have an error: exit 1, and
                                      exit 1 again on --resume until the gate is raised
                  incomplete          the run stopped (Ray, storage, a changed input, a lost lease): exit 3;
                                      what was committed is kept for --resume
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from s2s.quality import QualityCounts


def error_kinds(errors: list) -> dict[str, int]:
    kinds: dict[str, int] = {}
    for e in errors:
        if e is not None:
            key = e.split(" (")[0].split(":")[0].split(";")[0] if not e.startswith("input has") else "input over max_input_tokens"
            kinds[key] = kinds.get(key, 0) + 1
    return kinds


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, (bytes, bytearray)) else value


def part_counts(rows: pa.Table, text_column: str, names: dict[str, str]) -> dict:
    """A part's counts for _run.json: rows, errors by kind, tokens, and the quality counts (texts stored as
    Parquet BINARY count as UTF-8)."""
    errors = rows.column(names["error"]).to_pylist()
    quality = QualityCounts()
    ok = rows.filter(pc.is_null(rows.column(names["error"])))
    for source, translation, src_tokens, tgt_tokens in zip(*(ok.column(c).to_pylist() for c in
                                                             (text_column, names["translation"], names["src_tokens"], names["tgt_tokens"]))):
        quality.add(_text(source), translation, src_tokens, tgt_tokens)
    counts = {"rows": rows.num_rows, "errors": sum(e is not None for e in errors), "error_kinds": error_kinds(errors),
              "src_tokens": int(pc.sum(rows.column(names["src_tokens"])).as_py() or 0),
              "tgt_tokens": int(pc.sum(rows.column(names["tgt_tokens"])).as_py() or 0), "quality": quality.counts()}
    if "flags" in names:  # rows checked before they were written: each flag, before and after the remedy
        counts["row_flags"] = {when: flag_counts(rows.column(names[key]).to_pylist())
                               for when, key in (("before_remedy", "first_flags"), ("after_remedy", "flags"))}
    if "terms_required" in names:  # a glossary: its target terms required and met, over the part's rows
        counts["glossary"] = glossary_counts(rows.column(names["terms_required"]).to_pylist(), rows.column(names["terms_met"]).to_pylist())
    return counts


def glossary_counts(required: list, met: list) -> dict[str, int]:
    """Rows with a glossary term, terms required, and terms met (a row counts each of its terms)."""
    return {"rows_with_terms": sum(bool(r) for r in required), "required": sum(len(r or []) for r in required),
            "met": sum(len(m or []) for m in met)}


def flag_counts(cells: list) -> dict[str, int]:
    """Rows per flag (a row counts once per flag it has)."""
    return dict(Counter(f for flags in cells for f in flags or []))


def outcome(complete: bool, rows: int, errors: int, max_error_rate: float) -> dict:
    """The run's status (see the module docstring) and its error rate."""
    rate = round(errors / rows, 6) if rows else 0.0
    status = "incomplete" if not complete else "failed_error_rate" if rate > max_error_rate else "complete"
    return {"status": status, "complete": complete, "error_rate": rate, "max_error_rate": max_error_rate}


def summarize(parts: dict[str, dict], fresh: set[str], units: list[dict], complete: bool, wall: float, max_error_rate: float,
              references: QualityCounts | None = None) -> dict:
    """Counts over every verified part (earlier runs' included); speed over the parts this run wrote."""
    rows = errors = src_tokens = tgt_tokens = repaired = 0
    kinds, terms, flagged = Counter(), Counter(), {}  # summed over the parts: error kinds, glossary counts, flags by when
    quality = references or QualityCounts()
    for stats in parts.values():
        terms.update(stats.get("glossary", {}))
        for when, counts in stats.get("row_flags", {}).items():
            flagged.setdefault(when, Counter()).update(counts)
        rows, errors = rows + stats["rows"], errors + stats["errors"]
        src_tokens, tgt_tokens = src_tokens + stats["src_tokens"], tgt_tokens + stats["tgt_tokens"]
        quality.add_counts(stats["quality"])
        repaired += stats.get("repaired_utf8_cells", 0)
        kinds.update(stats["error_kinds"])
    now = [parts[n] for n in fresh if n in parts]
    rows_now, tokens_now = sum(s["rows"] for s in now), sum(s["tgt_tokens"] for s in now)
    return {
        **outcome(complete, rows, errors, max_error_rate),
        "shards_total": len(units), "shards_committed": len(parts), "shards_done_before": len(parts) - len(now), "shards_done_now": len(now),
        "rows_total": sum(u["stop"] - u["start"] for u in units),
        "rows": rows, "translated": rows - errors, "errors": errors, "error_kinds": dict(kinds),
        "src_tokens": src_tokens, "tgt_tokens": tgt_tokens, "repaired_utf8_cells": repaired,
        "rows_this_run": rows_now, "wall_seconds": round(wall, 2),
        "sentences_per_s": round(rows_now / wall, 2) if wall else 0.0, "tokens_per_s": round(tokens_now / wall, 2) if wall else 0.0,
        "providers": sorted({s["provider"] for s in now}), "variants": sorted({s.get("variant", "") for s in now} - {""}),
        "nodes": sorted({s["node"] for s in now}),
        # which engine wrote each part of this run: provider, variant, node and GPUs (Ray's ids; "" on CPUs)
        "part_engines": {n: {k: parts[n].get(k, "") for k in ("provider", "variant", "node", "gpus")} for n in sorted(fresh) if n in parts},
        "quality": quality.signals(),
        "row_flags": {when: dict(counts) for when, counts in flagged.items()},  # rows per flag before and after the remedy (s2s.quality.row_flags), where rows were checked
        **({"glossary": {**dict(terms), "met_rate": round(terms["met"] / terms["required"], 6) if terms.get("required") else None}} if terms else {}),
    }


def run_record(input: str, output: str, model: str, manifest: dict, decode, summary: dict, names: dict[str, str],
               epoch: int | None = None, skipped: str = "") -> dict:
    """The run's record (`_run.json`, and what `--json` prints) around `summarize`'s counts: what was translated
    where, with which model, settings and libraries. Parquet and text runs write the same one."""
    from s2s.engine import library_versions

    return {"input": input, "output": output, "model": model, "epoch": epoch, "model_sha256": fingerprint(manifest["files"]),
            **summary, "inputs_skipped": skipped, "decode": decode.recorded(), "result_columns": names,
            "model_manifest": {k: manifest.get(k) for k in ("created", "exporter", "opset", "default_cpu_variant", "vocab_sizes", "limits")},
            "versions": library_versions()}


def one_line(summary: dict) -> str:
    """The run's outcome for people, on stderr at its end (both modes)."""
    lines = f"{summary['lines']:,} lines ({summary['empty']:,} empty): " if "lines" in summary else ""
    return (f"{lines}{summary['rows']:,} rows, {summary['translated']:,} translated, {summary['errors']:,} error(s) "
            f"({summary['error_rate']:.2%}), {summary['sentences_per_s']} sentences/s, {summary['tokens_per_s']} tokens/s, "
            f"provider {', '.join(summary['providers']) or 'none (nothing to do)'}, {summary['wall_seconds']} s")


def fingerprint(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=_plain).encode()).hexdigest()


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"cannot fingerprint {type(value).__name__}")
