"""`s2s-job report`: a translate run's _run.json as a readable summary, or two runs side by side."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path
from typing import Any

# (label, path into _run.json) in the order a person reads them
FIELDS = [
    ("input", ("input",)),
    ("output", ("output",)),
    ("status", ("status",)),
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
    """_run.json of a translate output folder (run.json before 2026-12), local or at any URI pyarrow reads."""
    import pyarrow.fs as pafs

    from s2s.commit import RUN_FILE
    from s2s.storage import filesystem

    spec = str(output_dir)
    fs, base = filesystem(spec)
    for name in (RUN_FILE, "run.json"):
        path = f"{base.rstrip('/')}/{name}"
        if fs.get_file_info(path).type == pafs.FileType.File:
            with fs.open_input_stream(path) as f:
                return json.loads(f.read())
    raise FileNotFoundError(f"{spec.rstrip('/')}/{RUN_FILE}: no {RUN_FILE}; is {output_dir} the --output of a translate run?")


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
    if isinstance(value, (list, tuple)):
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


# ---------------------------------------------------------------- the HTML page (report --html)


def _png_data_uri(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _score_per_token(row: dict) -> float:
    """A row's log-probability per output token, EOS included: comparable across lengths."""
    return row["score"] / max(row["tgt_tokens"] + 1, 1)


def _histograms(rows: list[dict]) -> tuple[str, str]:
    """Length-ratio and per-token score histograms of the translated rows, as data URIs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in rows if r["error"] is None and r["src_tokens"]]
    ratios = [r["tgt_tokens"] / r["src_tokens"] for r in ok]
    scores = [_score_per_token(r) for r in ok]
    uris = []
    for values, xlabel, title in ((ratios, "target tokens / source tokens", "Length ratio per row"),
                                  (scores, "log-probability per output token", "Score per row")):
        fig, ax = plt.subplots(figsize=(6, 3.4), constrained_layout=True)
        ax.hist(values, bins=40, color="#3b75af")
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("rows")
        ax.grid(alpha=0.3)
        uris.append(_png_data_uri(fig))
    return uris[0], uris[1]


def _training_curves(run: dict) -> str | None:
    """The model's training curves as a data URI, when the run directory it came from is still there."""
    try:
        manifest = json.loads((Path(run["model"]) / "manifest.json").read_text())
        run_dir = Path(manifest["training"]["run_dir"])
        from s2s.plots import plot_curves

        buf = io.BytesIO()
        plot_curves([run_dir], buf)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    except (OSError, KeyError, ValueError):
        return None


def write_html(output_dir: str | Path, out: str | Path, samples: int = 50) -> Path:
    """One self-contained HTML page for a translate run: figures, errors, histograms, worst rows, curves."""
    from html import escape

    import pyarrow.fs as pafs
    import pyarrow.parquet as pq

    from s2s.storage import filesystem

    run = load_run(output_dir)
    fs, base = filesystem(str(output_dir))
    parts = sorted(i.path for i in fs.get_file_info(pafs.FileSelector(base)) if i.base_name.startswith("part-"))
    table = pq.read_table(parts, filesystem=fs) if parts else None
    named = run.get("result_columns") or {}  # where the results went (--result-prefix); older runs: the plain names
    if table is not None:
        table = table.rename_columns([{v: k for k, v in named.items() if k != "row_id"}.get(c, c) for c in table.column_names])
    rows = table.to_pylist() if table is not None else []
    text_col = next((c for c in ("text", "src", "source") if table is not None and c in table.column_names), None)
    id_col = "row_id" if table is not None and "row_id" in table.column_names else None

    def figure_rows(d: dict, prefix: str = "") -> list[str]:
        out_rows = []
        for k, v in d.items():
            if isinstance(v, dict):
                out_rows += figure_rows(v, f"{prefix}{k}.")
            else:
                out_rows.append(f"<tr><th>{escape(prefix + k)}</th><td>{escape(_show(v))}</td></tr>")
        return out_rows

    ratio_uri, score_uri = _histograms(rows) if rows else ("", "")
    curves = _training_curves(run)
    translated = [r for r in rows if r["error"] is None]
    worst = sorted(translated, key=_score_per_token)[:samples]
    sample_rows = "".join(
        f"<tr><td>{escape(str(r.get(id_col, '')))}</td><td>{escape(str(r.get(text_col, '')))}</td>"
        f"<td>{escape(r['translation'] or '')}</td><td>{_score_per_token(r):.3f}</td></tr>" for r in worst)
    errors = [r for r in rows if r["error"] is not None][:20]
    error_rows = "".join(f"<tr><td>{escape(str(r.get(id_col, '')))}</td><td>{escape(r['error'])}</td></tr>" for r in errors)
    kinds = "".join(f"<tr><th>{escape(k)}</th><td>{v}</td></tr>" for k, v in sorted((run.get("error_kinds") or {}).items()))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>s2s-job run: {escape(str(run.get('output')))}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: left; vertical-align: top; font-size: 14px; }}
th {{ background: #f3f3f3; font-weight: 600; }}
.figs {{ columns: 2; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Translate run {escape(str(run.get('output')))}</h1>
<p>{run.get('rows')} rows, {run.get('errors')} errors ({100 * (run.get('error_rate') or 0):.2f}%),
{escape(_show(run.get('sentences_per_s')))} sentences/s on {escape(_show(run.get('providers')))}.</p>
<h2>Histograms</h2>
<p><img alt="length ratio histogram" src="{ratio_uri}"> <img alt="score histogram" src="{score_uri}"></p>
<h2>Lowest-scoring rows (per output token), first {len(worst)}</h2>
<table><tr><th>id</th><th>source</th><th>translation</th><th>score/token</th></tr>{sample_rows}</table>
<h2>Errors</h2>
<table>{kinds or '<tr><td>none</td></tr>'}</table>
{f'<table><tr><th>id</th><th>error</th></tr>{error_rows}</table>' if errors else ''}
<h2>Model training curves</h2>
{f'<p><img alt="training curves" src="{curves}"></p>' if curves else '<p>The training run directory named in the model manifest is not here.</p>'}
<h2>_run.json</h2>
<table>{''.join(figure_rows(run))}</table>
</body></html>
"""
    out = Path(out)
    out.write_text(page, encoding="utf-8")
    return out
