"""Parallel text: loading, cleaning, the train/valid/test split, and token-budget batching.

Nothing here knows about Ray or the CLI; the training loop and the tests call it directly.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from s2s.tokenizer import pad_ids

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# The bundled Tatoeba copy is package data (s2s/bundled/tatoeba-eng-fra/README.md): found after any install.
BUNDLED_DATA = Path(__file__).resolve().parent / "bundled" / "tatoeba-eng-fra" / "eng-fra.parquet"


class DataError(ValueError):
    """Bad input data: the message names the file or column and what to do."""


@dataclass(frozen=True)
class Pairs:
    """Aligned source/target sentences and how many input rows were dropped on the way."""

    src: list[str]
    tgt: list[str]
    skipped: int = 0


@dataclass(frozen=True)
class Splits:
    """Training pairs (one per row) and valid/test grouped by source sentence, with every reference."""

    train: Pairs
    valid: list[tuple[str, list[str]]]
    test: list[tuple[str, list[str]]]


def read_table(path: str | Path, columns: list[str]) -> pa.Table:
    """Read Parquet (a file or a folder of them), or TSV with a header row, keeping `columns`; a local path or a
    URI (s3://...). Raise DataError naming what is wrong."""
    import pyarrow.fs as pafs

    from s2s.storage import filesystem

    columns = list(dict.fromkeys(columns))  # the same column on both sides is read once

    try:
        fs, where = filesystem(str(path))
        info = fs.get_file_info(where)
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(f"{path}: cannot be opened ({e}). Check the path and, for object storage, the AWS_* settings.") from e
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{path}: no such file. Pass --data with a Parquet or TSV file of sentence pairs.")
    suffix = Path(where).suffix.lower()
    if info.type == pafs.FileType.Directory or suffix in {".parquet", ".pq"}:
        try:
            schema = (pq.read_schema(where, filesystem=fs) if info.type == pafs.FileType.File
                      else pq.ParquetDataset(where, filesystem=fs).schema)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: not a readable Parquet file ({e}). Check the file or re-export it.") from e
        _check_columns(path, schema.names, columns)
        try:
            return pq.read_table(where, columns=columns, filesystem=fs)
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{path}: corrupt Parquet data ({e}). Re-export the file.") from e
    if suffix in {".tsv", ".txt", ".tab"}:
        import pyarrow.csv as pcsv

        try:
            with fs.open_input_stream(where) as f:
                table = pcsv.read_csv(
                    f,
                    parse_options=pcsv.ParseOptions(delimiter="\t", quote_char=False),
                    convert_options=pcsv.ConvertOptions(column_types={c: pa.string() for c in columns}),
                )
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                raise DataError(f"{path}: the file is empty; it needs a header row naming the columns.") from e
            raise DataError(f"{path}: cannot parse as TSV ({e}).") from e
        _check_columns(path, table.column_names, columns)
        return table.select(columns)
    raise DataError(f"{path}: unknown file type {suffix!r}; use .parquet or .tsv (with a header row).")


def _check_columns(path: str | Path, present: list[str], wanted: list[str]) -> None:
    missing = [c for c in wanted if c not in present]
    if missing:
        raise DataError(
            f"{path}: no column {', '.join(map(repr, missing))}; the file has {present}. "
            "Name the right ones with --source-column/--target-column."
        )


def load_pairs(path: str | Path, source_column: str, target_column: str) -> Pairs:
    """Load sentence pairs; rows with a null, empty or whitespace-only side are skipped and counted."""
    table = read_table(path, [source_column, target_column])
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows. Point --data at a file with sentence pairs.")
    src_col = table.column(source_column).to_pylist()
    tgt_col = table.column(target_column).to_pylist()
    src, tgt, skipped = [], [], 0
    for s, t in zip(src_col, tgt_col):
        if not isinstance(s, str) or not isinstance(t, str) or not s.strip() or not t.strip():
            skipped += 1
            continue
        src.append(s.strip())
        tgt.append(t.strip())
    if not src:
        raise DataError(f"{path}: all {table.num_rows} rows have a null or empty sentence; nothing to train on.")
    if skipped:
        log.warning("%s: skipped %d of %d rows with a null or empty sentence", path, skipped, table.num_rows)
    return Pairs(src, tgt, skipped)


_PUNCT_OR_SPACE = re.compile(r"[\W_]+", re.UNICODE)


def split_key(sentence: str) -> str:
    """The identity of a source sentence for splitting: case, spacing and punctuation do not count.

    "Go." and "Go!" share a key, so near-duplicates cannot straddle train and test.
    """
    return _PUNCT_OR_SPACE.sub(" ", sentence.casefold()).strip()


def split_bucket(sentence: str) -> float:
    """A stable number in [0, 1) for a source sentence, the same on every machine and Python version."""
    digest = hashlib.sha1(split_key(sentence).encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def split_pairs(pairs: Pairs, valid_frac: float = 0.02, test_frac: float = 0.02) -> Splits:
    """Split by source sentence (never by row): every target variant of a source stays in one split."""
    train_src, train_tgt = [], []
    held: dict[str, dict[str, list[str]]] = {"valid": {}, "test": {}}
    for s, t in zip(pairs.src, pairs.tgt):
        b = split_bucket(s)
        name = "valid" if b < valid_frac else "test" if b < valid_frac + test_frac else "train"
        if name == "train":
            train_src.append(s)
            train_tgt.append(t)
        else:
            held[name].setdefault(s, []).append(t)
    return Splits(
        train=Pairs(train_src, train_tgt, pairs.skipped),
        valid=sorted(held["valid"].items()),
        test=sorted(held["test"].items()),
    )


def token_batches(
    src_lens: np.ndarray, tgt_lens: np.ndarray, max_tokens: int, seed: int, world_size: int = 1
) -> list[np.ndarray]:
    """Group example indices into batches of at most `max_tokens` padded tokens, by similar length.

    Examples are sorted by (target, source) length with a random tie-break, cut into batches whose padded
    size (rows x longest side) fits the budget, and the batch order is shuffled. The count is trimmed to
    a multiple of `world_size` so every DDP worker runs the same number of steps.
    """
    rng = np.random.default_rng(seed)
    order = np.lexsort((rng.random(len(src_lens)), src_lens, tgt_lens))
    batches, start = [], 0
    longest = 0
    for i, idx in enumerate(order):
        longest_if_added = max(longest, src_lens[idx], tgt_lens[idx])
        if i > start and longest_if_added * (i - start + 1) > max_tokens:
            batches.append(order[start:i])
            start, longest = i, max(src_lens[idx], tgt_lens[idx])
        else:
            longest = longest_if_added
    if start < len(order):
        batches.append(order[start:])
    rng.shuffle(batches)
    keep = len(batches) - len(batches) % world_size
    return batches[:keep]


def pad_batch(seqs: list[np.ndarray] | list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`pad_ids` as (B, T) and (B,) LongTensors, for training."""
    import torch  # here: the CLI imports this module for its defaults, and torch takes a second to import

    ids, lens = pad_ids(seqs, pad_id)
    return torch.from_numpy(ids), torch.from_numpy(lens)
