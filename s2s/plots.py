"""Pictures: training curves from metrics.jsonl, and a source-by-target attention map. matplotlib, Agg."""

from __future__ import annotations

import json
from pathlib import Path
from typing import IO

import matplotlib

matplotlib.use("Agg")  # no display needed
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """The (train interval, epoch) records of a run's metrics.jsonl, by step.

    A resumed run logs again the steps it redoes after its last checkpoint; the later record wins.
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
    return [r for r in records if r["kind"] == "train"], [r for r in records if r["kind"] == "epoch"]


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


def plot_curves(run_dirs: list[str | Path], out: str | Path | IO[bytes]) -> str | Path | IO[bytes]:
    """Train/valid loss, valid BLEU and chrF, and tokens/s against steps; several runs overlaid."""
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5), constrained_layout=True)
    (ax_loss, ax_bleu), (ax_chrf, ax_speed) = axes
    for run in run_dirs:
        train, epochs = read_metrics(run)
        name = Path(run).name
        if train:
            steps = [r["step"] for r in train]
            line, = ax_loss.plot(steps, [r["loss"] for r in train], label=f"{name} train", alpha=0.8)
            ax_speed.plot(steps, [r["tokens_per_s"] for r in train], label=name, color=line.get_color())
            color = line.get_color()
        else:
            color = None
        if epochs:
            e_steps = [r["step"] for r in epochs]
            ax_loss.plot(e_steps, [r["valid_loss"] for r in epochs], "o--", color=color, label=f"{name} valid")
            ax_bleu.plot(e_steps, [r["valid_bleu"] for r in epochs], "o-", color=color, label=name)
            ax_chrf.plot(e_steps, [r["valid_chrf"] for r in epochs], "o-", color=color, label=name)
    for ax, title, ylabel in ((ax_loss, "Loss (train: label-smoothed; valid: NLL)", "loss per token"),
                              (ax_bleu, "Valid BLEU (greedy, multi-reference)", "BLEU"),
                              (ax_chrf, "Valid chrF", "chrF"),
                              (ax_speed, "Training throughput", "target tokens/s")):
        ax.set_title(title)
        ax.set_xlabel("optimizer step")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.savefig(out, dpi=100, format="png")  # a path or an open binary file
    plt.close(fig)
    return out
