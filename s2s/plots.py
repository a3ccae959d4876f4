"""Pictures: training curves from metrics.jsonl, and a source-by-target attention map. matplotlib, Agg."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import IO

# matplotlib's first import on a machine builds its font cache and logs "generated new fontManager" at INFO,
# which a training worker's console shows in the middle of the run: not a line for people
logging.getLogger("matplotlib.font_manager").setLevel(logging.WARNING)
import matplotlib  # noqa: E402

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """The (train interval, validation) records of a run's metrics.jsonl, by step.

    Validation records are the epochs' and, last, the weight average's ("kind": "average"). A resumed
    run logs again the steps it redoes after its last checkpoint; the later record wins.
    """
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no metrics.jsonl; is {run_dir} a training run directory?")
    by_step: dict[tuple[str, int], dict] = {}
    for line in path.read_text().splitlines():
        if line.strip():
            r = json.loads(line)
            by_step[(r["kind"], r["step"])] = r
    records = sorted(by_step.values(), key=lambda r: r["step"])
    return ([r for r in records if r["kind"] == "train"],
            [r for r in records if r["kind"] == "epoch"] + [r for r in records if r["kind"] == "average"])


def plot_attention(matrix, src_pieces: list[str], tgt_pieces: list[str], out: str | Path, title: str = "") -> Path:
    """Heatmap of attention weights: target subwords down, source subwords across."""
    import textwrap

    rows, cols = len(tgt_pieces), len(src_pieces)
    width = min(max(6.0, 2 + 0.45 * cols), 24)
    fig, ax = plt.subplots(figsize=(width, min(2 + 0.4 * rows, 24)), constrained_layout=True)
    image = ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(cols), src_pieces, rotation=60, ha="right", fontsize=9)
    ax.set_yticks(range(rows), tgt_pieces, fontsize=9)
    ax.set_xlabel("source subwords")
    ax.set_ylabel("output subwords")
    if title:  # wrapped to the figure's width so a long sentence is not cut off
        lines = [textwrap.fill(line, width=int(width * 11)) for line in title.splitlines()]
        ax.set_title("\n".join(lines), fontsize=10)
    fig.colorbar(image, ax=ax, fraction=0.04, label="attention weight")
    out = Path(out)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def draw_translation_attention(translator, text: str, translation, out: str | Path) -> Path:
    """The attention map of `translation` (a Translation of `text` by `translator`) as a PNG."""
    from s2s.translator import attention_of

    src_ids, _, err = translator.encode_source(text)
    if err or translation.error:
        raise ValueError(f"{text!r}: {err or translation.error}")
    matrix = attention_of(translator.engine, src_ids, translation.tokens)
    src = [translator.src_sp.id_to_piece(i) for i in src_ids]
    tgt = [translator.tgt_sp.id_to_piece(i) for i in translation.tokens] + ["</s>"]
    return plot_attention(matrix, src, tgt, out, f"{text}\n→ {translation.translation}")


X_AXES = {"step": "optimizer step", "minutes": "training minutes (wall clock)"}


def plot_curves(run_dirs: list[str | Path], out: str | Path | IO[bytes], x: str = "step") -> str | Path | IO[bytes]:
    """Train/valid loss, valid BLEU and chrF, and tokens/s against steps or minutes; several runs overlaid.

    Against minutes, runs made on the same machine compare as BLEU per CPU-minute. A star marks the
    validation of the weight average at the end of a run.
    """
    if x not in X_AXES:
        raise ValueError(f"x must be one of {sorted(X_AXES)}, got {x!r}")

    def at(r: dict) -> float:
        return r["step"] if x == "step" else r["elapsed_s"] / 60

    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    (ax_loss, ax_bleu), (ax_chrf, ax_speed) = axes
    for run in run_dirs:
        train, validations = read_metrics(run)
        epochs = [r for r in validations if r["kind"] == "epoch"]
        averages = [r for r in validations if r["kind"] == "average"]
        name = Path(run).name
        if train:
            line, = ax_loss.plot([at(r) for r in train], [r["loss"] for r in train], label=f"{name} train", alpha=0.8)
            ax_speed.plot([at(r) for r in train], [r["tokens_per_s"] for r in train], label=name, color=line.get_color())
            color = line.get_color()
        else:
            color = None
        if epochs:
            xs = [at(r) for r in epochs]
            ax_loss.plot(xs, [r["valid_loss"] for r in epochs], "o--", color=color, label=f"{name} valid")
            ax_bleu.plot(xs, [r["valid_bleu"] for r in epochs], "o-", color=color, label=name)
            ax_chrf.plot(xs, [r["valid_chrf"] for r in epochs], "o-", color=color, label=name)
        for r in averages:
            ax_bleu.plot([at(r)], [r["valid_bleu"]], "*", markersize=12, color=color, label=f"{name} averaged")
            ax_chrf.plot([at(r)], [r["valid_chrf"]], "*", markersize=12, color=color)
    for ax, title, ylabel in ((ax_loss, "Loss (train: label-smoothed; valid: NLL)", "loss per token"),
                              (ax_bleu, "Valid BLEU (greedy, multi-reference)", "BLEU"),
                              (ax_chrf, "Valid chrF", "chrF"),
                              (ax_speed, "Training throughput", "target tokens/s")):
        ax.set_title(title)
        ax.set_xlabel(X_AXES[x])
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.savefig(out, dpi=100, format="png")  # a path or an open binary file
    plt.close(fig)
    return out
