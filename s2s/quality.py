"""Quality signals of a translate run that need no reference, and BLEU/chrF where references exist.

A scheduler cannot read translations every night; these numbers move when something breaks: a length
ratio far from the training data's, sources copied through untranslated, unknown tokens, or a decoder
stuck repeating itself.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sacrebleu

UNKNOWN_PIECE = "\u2047"  # what SentencePiece writes for an unknown token (" ⁇ ")


def has_repeated_ngram(text: str, n: int = 4) -> bool:
    """Whether some word n-gram occurs twice in `text` (a decoder stuck in a loop)."""
    words = text.split()
    seen = set()
    for i in range(len(words) - n + 1):
        gram = tuple(words[i : i + n])
        if gram in seen:
            return True
        seen.add(gram)
    return False


def as_references(value: Any) -> list[str]:
    """A reference cell as a list: one string, a list of strings, or nothing."""
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [v for v in value if isinstance(v, str)]


# Per-row flags: the same signals, judged row by row before the row is written (s2s.translator re-decodes a
# flagged row once with the remedy REMEDIES names). The length bounds come from the training data (export
# records the ratio of target to source subwords that holds for all but the outer 0.5% of each side).
FLAGS = ("copy", "unknown", "repeat", "too_long", "too_short")
LENGTH_SLACK = 2  # subwords either side of the ratio's bounds, so that short sentences are not flagged for one token


def row_flags(source: str, translation: str, src_tokens: int, tgt_tokens: int, length_ratio: dict | None) -> list[str]:
    """What looks wrong with one translation, without a reference (FLAGS, in that order)."""
    flags = []
    if translation.strip() and source.strip().casefold() == translation.strip().casefold():
        flags.append("copy")
    if UNKNOWN_PIECE in translation:
        flags.append("unknown")
    if has_repeated_ngram(translation):
        flags.append("repeat")
    if length_ratio:
        if tgt_tokens > length_ratio["high"] * src_tokens + LENGTH_SLACK:
            flags.append("too_long")
        elif tgt_tokens < length_ratio["low"] * src_tokens - LENGTH_SLACK:
            flags.append("too_short")
    return flags


def training_length_ratio(train_parquet: Path, outer: float = 0.005) -> dict:
    """Target/source subwords over the training pairs, the outer `outer` of each side cut off: the bounds the
    translator's length flags hold a translation to (s2s.quality.row_flags)."""
    import numpy as np
    import pyarrow.parquet as pq

    t = pq.read_table(train_parquet, columns=["src_ids", "tgt_ids"])
    src = np.array([len(x) - 1 for x in t.column("src_ids").to_pylist()])  # EOS
    tgt = np.array([len(x) - 2 for x in t.column("tgt_ids").to_pylist()])  # BOS, EOS
    ratio = tgt / np.maximum(src, 1)
    return {"low": round(float(np.quantile(ratio, outer)), 4), "high": round(float(np.quantile(ratio, 1 - outer)), 4), "outer": outer}


COUNT_FIELDS = ("rows", "src_tokens", "tgt_tokens", "copies", "unknown", "repeated")


@dataclass
class QualityCounts:
    """Running totals over the translated rows (rows with an error do not count)."""

    rows: int = 0
    src_tokens: int = 0
    tgt_tokens: int = 0
    copies: int = 0
    unknown: int = 0
    repeated: int = 0
    hypotheses: list[str] = field(default_factory=list)  # only kept for rows that have references
    references: list[list[str]] = field(default_factory=list)

    def add(self, source: str, translation: str, src_tokens: int, tgt_tokens: int) -> None:
        self.rows += 1
        self.src_tokens += src_tokens
        self.tgt_tokens += tgt_tokens
        self.copies += source.strip().casefold() == translation.strip().casefold()
        self.unknown += translation.count(UNKNOWN_PIECE)
        self.repeated += has_repeated_ngram(translation)

    def add_references(self, translation: str, references: list[str]) -> None:
        self.hypotheses.append(translation)
        self.references.append(references)

    def counts(self) -> dict[str, int]:
        """The totals without the kept texts: what a shard stores, and `add_counts` sums."""
        return {k: getattr(self, k) for k in COUNT_FIELDS}

    def add_counts(self, counts: dict[str, int]) -> None:
        for k in COUNT_FIELDS:
            setattr(self, k, getattr(self, k) + counts[k])

    def signals(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "length_ratio": round(self.tgt_tokens / self.src_tokens, 4) if self.src_tokens else None,
            "copy_rate": round(self.copies / self.rows, 6) if self.rows else None,
            "unknown_token_rate": round(self.unknown / self.tgt_tokens, 6) if self.tgt_tokens else None,
            "repeated_4gram_rate": round(self.repeated / self.rows, 6) if self.rows else None,
        }
        if self.hypotheses:
            out.update({"reference_rows": len(self.hypotheses), **corpus_scores(self.hypotheses, self.references)})
        return out


def corpus_scores(hypotheses: list[str], references: list[list[str]]) -> dict[str, float]:
    """BLEU and chrF of hypotheses against a variable number of references per sentence."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses but {len(references)} reference lists")
    if not hypotheses:
        return {"bleu": 0.0, "chrf": 0.0}
    n_streams = max(len(r) for r in references)
    # sacrebleu takes one stream per reference slot; None marks a sentence with fewer references
    streams = [[refs[i] if i < len(refs) else None for refs in references] for i in range(n_streams)]
    bleu = sacrebleu.corpus_bleu(hypotheses, streams)
    chrf = sacrebleu.corpus_chrf(hypotheses, streams)
    return {"bleu": round(bleu.score, 2), "chrf": round(chrf.score, 2)}
