"""The vocabulary map: which target tokens a batch of source tokens can plausibly produce.

CTranslate2's `use_vmap` idea. Decoding then projects onto a shortlist (the most frequent target tokens
plus, for each source token in the batch, the target tokens that co-occur with it most in the training
pairs) instead of the whole target vocabulary; the output projection is the largest matrix in a
decoder step. It is an approximation, so export measures its valid BLEU next to the full softmax.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from s2s.tokenizer import EOS_ID

VMAP_FILE = "vmap.npz"
FIRST_PIECE = EOS_ID + 1  # ids below are pad, unk, bos, eos


def build_vmap(train_parquet: Path, src_vocab: int, tgt_vocab: int, per_source: int, frequent: int) -> dict[str, np.ndarray]:
    """By source token, its `per_source` most co-occurring target tokens (by p(t|s), then p(s|t)); and the
    `frequent` most frequent target tokens. Counts are per sentence pair (a token counts once per side)."""
    table = pq.read_table(train_parquet, columns=["src_ids", "tgt_ids"])
    keys, df_src, df_tgt = [], np.zeros(src_vocab, np.int64), np.zeros(tgt_vocab, np.int64)
    for s, t in zip(table.column("src_ids").to_numpy(zero_copy_only=False), table.column("tgt_ids").to_numpy(zero_copy_only=False)):
        s, t = np.unique(s), np.unique(t)
        df_src[s] += 1
        df_tgt[t] += 1
        keys.append((s[:, None].astype(np.int64) * tgt_vocab + t[None, :]).ravel())
    pairs, counts = np.unique(np.concatenate(keys), return_counts=True)
    src_of, tgt_of = pairs // tgt_vocab, pairs % tgt_vocab
    real = tgt_of >= FIRST_PIECE  # BOS/EOS are in every target: they would take the best slots of every row
    pairs, counts, src_of, tgt_of = pairs[real], counts[real], src_of[real], tgt_of[real]
    half = max(1, per_source // 2)
    by_source = np.full((src_vocab, per_source), -1, dtype=np.int32)
    # two rankings, half the slots each: p(t|s) finds the usual translations, p(s|t) the rare specific ones
    for slot0, score in ((0, counts / df_src[src_of]), (half, np.where(counts >= 2, counts / df_tgt[tgt_of], 0.0))):
        order = np.lexsort((-score, src_of))  # by source token, best first
        s_sorted = src_of[order]
        starts = np.searchsorted(s_sorted, np.arange(src_vocab))
        rank = np.arange(len(order)) - starts[s_sorted]
        width = half if slot0 == 0 else per_source - half
        keep = (rank < width) & (score[order] > 0)
        by_source[s_sorted[keep], slot0 + rank[keep]] = tgt_of[order][keep]
    df_tgt[:FIRST_PIECE] = 0
    return {"by_source": by_source, "frequent": np.argsort(-df_tgt, kind="stable")[:frequent].astype(np.int32)}


def shortlist(vmap: dict[str, np.ndarray], src_ids: np.ndarray, always: tuple[int, ...]) -> np.ndarray:
    """Sorted target ids a batch may produce: the frequent ones, each source token's, and `always` (EOS, UNK)."""
    cand = vmap["by_source"][np.unique(src_ids)].ravel()
    return np.unique(np.concatenate([vmap["frequent"], cand[cand >= 0], np.asarray(always, dtype=np.int32)]))
