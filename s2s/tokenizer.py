"""SentencePiece subwords: training on the train split and the fixed special ids every stage relies on."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import sentencepiece as spm

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


def train_sentencepiece(sentences: list[str], model_path: str | Path, vocab_size: int) -> Path:
    """Train a unigram model with byte fallback (no ` ⁇ ` for unseen characters) and write `model_path`.

    The vocabulary may come out smaller than asked for on a tiny corpus instead of failing.
    """
    model = io.BytesIO()
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(sentences),
            model_writer=model,
            vocab_size=vocab_size,
            model_type="unigram",
            character_coverage=1.0,
            byte_fallback=True,
            hard_vocab_limit=False,
            pad_id=PAD_ID,
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            input_sentence_size=2_000_000,
            shuffle_input_sentence=False,  # the whole train split fits: no sampling, same model every time
            num_threads=2,
            minloglevel=2,
        )
    except RuntimeError as e:
        if "Vocabulary size is smaller than required_chars" in str(e):
            raise ValueError(f"vocabulary size {vocab_size} is too small for {Path(model_path).name}: byte fallback needs "
                             f"256 byte pieces plus every character of the corpus ({e}). Raise --src/--tgt-vocab-size.") from e
        raise
    path = Path(model_path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(model.getvalue())
    return path


def load_sentencepiece(model_path: str | Path) -> spm.SentencePieceProcessor:
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: SentencePiece model missing")
    sp = spm.SentencePieceProcessor(model_file=str(path))
    if (sp.pad_id(), sp.unk_id(), sp.bos_id(), sp.eos_id()) != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
        raise ValueError(f"{path}: special ids are not pad=0 unk=1 bos=2 eos=3; it was not made by s2s-job")
    return sp


def pad_ids(seqs, pad_id: int = PAD_ID) -> tuple[np.ndarray, np.ndarray]:
    """Right-pad id sequences (lists or arrays) into an int64 (B, S) array; also return the (B,) lengths."""
    lens = np.asarray([len(s) for s in seqs], dtype=np.int64)
    out = np.full((len(seqs), int(lens.max())), pad_id, dtype=np.int64)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out, lens
