"""`s2s-job report`: a translate run's run.json as a readable summary, or two runs side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

# (label, path into run.json) in the order a person reads them
FIELDS = [
    ("input", ("input",)),
    ("output", ("output",)),
    ("complete", ("complete",)),
    ("rows", ("rows",)),
    ("translated", ("translated",)),
    ("errors", ("errors",)),
    ("error rate", ("error_rate",)),
    ("source tokens", ("src_tokens",)),
    ("target tokens", ("tgt_tokens",)),
    ("wall seconds", ("wall_seconds",)),
    ("sentences/s", ("sentences_per_s",)),
    ("tokens/s", ("tokens_per_s",)),
    ("providers", ("providers",)),
    ("beam size", ("decode", "beam_size")),
    ("model sha256", ("model_sha256",)),
    ("length ratio", ("quality", "length_ratio")),
    ("copy rate", ("quality", "copy_rate")),
    ("unknown-token rate", ("quality", "unknown_token_rate")),
    ("repeated 4-gram rate", ("quality", "repeated_4gram_rate")),
    ("BLEU", ("quality", "bleu")),
    ("chrF", ("quality", "chrf")),
]


def load_run(output_dir: str | Path) -> dict:
    path = Path(output_dir) / "run.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no run.json; is {output_dir} the --output of a translate run?")
    return json.loads(path.read_text())


def _get(run: dict, keys: tuple[str, ...]) -> Any:
    value: Any = run
    for k in keys:
        value = value.get(k) if isinstance(value, dict) else None
    return value


def _show(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(map(str, value)) or "-"
    return str(value)


def format_report(run: dict) -> str:
    width = max(len(label) for label, _ in FIELDS)
    lines = [f"{label:<{width}}  {_show(_get(run, keys))}" for label, keys in FIELDS]
    for kind, count in sorted((run.get("error_kinds") or {}).items()):
        lines.append(f"{'  error: ' + kind:<{width}}  {count}")
    return "\n".join(lines)


def format_comparison(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> str:
    """Two runs side by side, with B's change relative to A for the numbers."""
    width = max(len(label) for label, _ in FIELDS)
    cols = [max(12, len(names[0])), max(12, len(names[1]))]
    lines = [f"{'':<{width}}  {names[0]:>{cols[0]}}  {names[1]:>{cols[1]}}  change"]
    for label, keys in FIELDS:
        va, vb = _get(a, keys), _get(b, keys)
        change = ""
        if isinstance(va, (int, float)) and isinstance(vb, (int, float)) and not isinstance(va, bool):
            change = f"{vb - va:+.4g}" + (f" ({(vb - va) / va:+.1%})" if va else "")
        lines.append(f"{label:<{width}}  {_show(va):>{cols[0]}}  {_show(vb):>{cols[1]}}  {change}")
    return "\n".join(lines)
