"""Text in, text out: tokenization, length-sorted sub-batches, the search, and results in input order.

The engine is anything with `encode(src_ids, src_lens) -> state` and `step(prev, state)`: `TorchEngine`
below for evaluation, `s2s.engine.OrtEngine` for the translate job. Both share this code.
"""

from __future__ import annotations

import dataclasses
import math
import unicodedata
import zlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import regex
import sentencepiece as spm

from s2s.config import DecodeConfig
from s2s.glossary import matched_terms, terms_met
from s2s.quality import LENGTH_SLACK, row_flags
from s2s.search import Constraints, Hypothesis, Sampling, State, beam_search, greedy_search
from s2s.tokenizer import BOS_ID, EOS_ID, pad_ids

if TYPE_CHECKING:
    import torch


@dataclass
class Translation:
    translation: str | None
    score: float | None  # sum of token log-probabilities of the best hypothesis
    src_tokens: int
    tgt_tokens: int
    nbest: list[tuple[str, float]] = field(default_factory=list)
    error: str | None = None
    tokens: list[int] = field(default_factory=list)  # target ids of the best hypothesis
    token_scores: list[float] | None = None  # with return_token_scores: each of its tokens' log-prob
    alignment: list[int] | None = None  # with return_alignment: the source position each token attended to most
    flags: list[str] | None = None  # with check_rows: what s2s.quality.row_flags finds in the translation written
    first_flags: list[str] | None = None  # ... and in the first one, before the remedy
    terms_required: list[str] | None = None  # with a glossary: the target terms the source's matched terms require
    terms_met: list[str] | None = None  # ... and those the translation holds


class Engine(Protocol):
    def encode(self, src_ids: np.ndarray, src_lens: np.ndarray) -> State: ...
    def step(self, prev: np.ndarray, state: State) -> tuple[np.ndarray, State]: ...


class TorchEngine:
    """The PyTorch model as a step function (evaluation, the export parity gate, benchmarks).

    It runs where the model's weights are: on a GPU the state and the log-probs stay there between steps
    (the search reduces them on the device); on the CPU the log-probs are numpy arrays."""

    def __init__(self, model: torch.nn.Module):
        import torch  # imported here so that the Ray workers that only read and write Parquet never load torch

        self.torch, self.model = torch, model.eval()
        self.device = next(model.parameters()).device

    def encode(self, src_ids: np.ndarray, src_lens: np.ndarray) -> State:
        with self.torch.inference_mode():
            memory, mask, h, c, feed = self.model.encode(self.torch.from_numpy(src_ids).to(self.device),
                                                         self.torch.from_numpy(src_lens).to(self.device))
        return {"h": h, "c": c, "feed": feed, "memory": memory, "mask": mask}

    def step(self, prev: np.ndarray, state: State) -> tuple[np.ndarray, State]:
        with self.torch.inference_mode():
            lp, h, c, feed, attn = self.model.decode_step(self.torch.from_numpy(prev).to(self.device), state["h"], state["c"],
                                                          state["feed"], state["memory"], state["mask"])
        lp = lp.float() if self.device.type == "cuda" else lp.float().numpy()
        return lp, {**state, "h": h, "c": c, "feed": feed, "attention": attn}


def attention_of(engine: Engine, src_ids: list[int], out_ids: list[int]) -> np.ndarray:
    """Attention (len(out_ids) + 1, len(src_ids)) of each output step over the source, EOS's step last."""
    src, lens = pad_ids([src_ids])
    state = engine.encode(src, lens)
    prev, rows = BOS_ID, []
    for tok in out_ids + [EOS_ID]:
        _, state = engine.step(np.asarray([prev], dtype=np.int64), state)
        rows.append(np.asarray(state["attention"], dtype=np.float32)[0])
        prev = tok
    return np.stack(rows)


# Characters that show nothing. Unicode's Default_Ignorable_Code_Point property names those a renderer does
# not draw (zero-width space and joiners, the BOM, the soft hyphen, variation selectors, the combining grapheme
# joiner U+034F, Hangul fillers, tag characters, and code points reserved as such): they are dropped. Controls
# and separators (Cc, Z*) read as spaces. A text left with nothing has nothing to translate; inside a text
# these characters only turn into byte-fallback tokens the model never saw in training.
IGNORABLE = regex.compile(r"\p{Default_Ignorable_Code_Point}+")
SPACE_LIKE = regex.compile(r"[\p{Cc}\p{Z}]+")


def as_text(value: Any) -> tuple[str | None, str | None]:
    """(text to translate, None), or (None, why the row cannot be translated).

    Takes whatever a Parquet cell holds: str, bytes (a binary column, or a string column whose bytes are not
    UTF-8, which the job reads as bytes so that one bad row cannot stop a whole shard), None or anything else.
    Default-ignorable characters are dropped and controls read as spaces (see IGNORABLE).
    """
    if value is None:
        return None, "null text"
    if isinstance(value, (bytes, bytearray)):
        try:
            value = bytes(value).decode("utf-8")
        except UnicodeDecodeError as e:
            return None, f"text is not valid UTF-8 (byte 0x{value[e.start]:02x} at offset {e.start}); fix the encoding of this row"
    if not isinstance(value, str):
        return None, f"text is {type(value).__name__}, not a string"
    if not value.strip():
        return None, "empty or whitespace-only text"
    if any(unicodedata.category(ch) == "Cs" for ch in value):
        return None, "text has unpaired surrogates, which are not Unicode text"
    visible = " ".join(SPACE_LIKE.sub(" ", IGNORABLE.sub("", value)).split())
    if not visible:
        return None, ("no visible characters (only default-ignorable, control or space characters, such as U+200B, U+034F "
                      "or a BOM)")
    return visible, None


def remedy(cfg: DecodeConfig, flags: list[str], src_tokens: int, length_ratio: dict | None) -> DecodeConfig | None:
    """The decode settings for a second try at a flagged row, or None where no setting helps (a copy, unknown
    pieces): a loop or an overlong output gets no_repeat_ngram_size 3 (and, overlong, the training data's
    length bound); a short one a minimum length from the same data."""
    changes: dict[str, Any] = {}
    if "repeat" in flags or "too_long" in flags:
        changes["no_repeat_ngram_size"] = cfg.no_repeat_ngram_size or 3
    if "too_long" in flags and length_ratio:
        changes["max_length_a"], changes["max_length_b"] = length_ratio["high"], LENGTH_SLACK
    if "too_short" in flags and length_ratio:
        changes["min_decoding_length"] = min(cfg.max_decoding_length, max(1, math.ceil(length_ratio["low"] * src_tokens - LENGTH_SLACK)))
    return dataclasses.replace(cfg, **changes) if changes else None


class Translator:
    def __init__(self, engine: Engine, src_sp: spm.SentencePieceProcessor, tgt_sp: spm.SentencePieceProcessor, config: DecodeConfig = DecodeConfig(),
                 length_ratio: dict | None = None):
        """`length_ratio`: the training data's bounds on target/source subwords (the model directory's manifest), for
        the length flags; without it rows are checked for copies, unknown pieces and loops only."""
        self.engine, self.src_sp, self.tgt_sp, self.config, self.length_ratio = engine, src_sp, tgt_sp, config, length_ratio
        # with a glossary, the target pieces that continue a word (no "\u2581" before a letter or digit): never right after a term
        self.glue = np.asarray([i for i in range(tgt_sp.get_piece_size()) if not tgt_sp.is_control(i) and not tgt_sp.is_unknown(i)
                                and tgt_sp.id_to_piece(i)[:1].isalnum()], dtype=np.int64) if config.glossary else None
        # the most characters one source piece covers ("\u2581" stands for the space before a word)
        self.max_piece_chars = max(len(src_sp.id_to_piece(i)) for i in range(src_sp.get_piece_size()) if not src_sp.is_unknown(i)
                                   and not src_sp.is_control(i) and not src_sp.is_byte(i))

    def encode_source(self, text: str) -> tuple[list[int] | None, int, str | None]:
        """Source ids with EOS (None if refused), the text's token count, and why it was refused.

        A text longer than `max_input_tokens` pieces can cover is refused (or cut) before it is tokenized,
        so a 5,000-word line costs no more than a normal one. The token count of such a text is not known: 0.
        """
        limit = self.config.max_input_tokens
        max_chars = limit * self.max_piece_chars  # no text of more characters fits in `limit` pieces, once in NFKC
        if len(text) > max_chars and not self.config.truncate_long_input and len(unicodedata.normalize("NFKC", text)) > max_chars:
            return None, 0, (f"input has {len(text)} characters, more than max_input_tokens={limit} tokens can hold "
                             f"(truncate or raise the limit)")
        ids = self.src_sp.encode(text[: 2 * max_chars])  # enough for `limit` pieces: NFKC at most halves a text
        n = len(ids)
        if n > limit:
            if not self.config.truncate_long_input:
                return None, n, f"input has {n} tokens, over max_input_tokens={limit} (truncate or raise the limit)"
            ids = ids[:limit]
        return ids + [EOS_ID], n, None

    def translate(self, texts: list[Any], prefixes: list[str | None] | None = None) -> list[Translation]:
        """Translate a list of texts; results come back in input order, bad rows with an `error`.

        `prefixes` (one per text, or None) force the start of each translation (empty or None: the config's
        `target_prefix`). Identical (text, prefix) pairs are decoded once. Inputs are sorted by length and cut
        into sub-batches of at most `max_batch_tokens` padded source tokens.
        """
        results: list[Translation | None] = [None] * len(texts)
        unique: dict[tuple[str, str], list[int]] = {}  # (text, prefix) -> row positions
        for i, value in enumerate(texts):
            text, err = as_text(value)
            if err:
                results[i] = Translation(None, None, 0, 0, error=err)
            else:
                unique.setdefault((text, (prefixes[i] if prefixes else None) or self.config.target_prefix), []).append(i)
        encoded = []
        for (text, prefix), rows in unique.items():
            ids, n_tokens, err = self.encode_source(text)
            if err:
                for r in rows:
                    results[r] = Translation(None, None, n_tokens, 0, error=err)
            else:
                terms = matched_terms(text, self.config.glossary) if self.config.glossary else []
                encoded.append((ids, self.tgt_sp.encode(prefix) if prefix else [], rows, text, terms))
        encoded.sort(key=lambda e: len(e[0]))
        for chunk in self._chunks(encoded):
            required = [[self.tgt_sp.encode(term) for term in e[4]] for e in chunk]
            out = self._decode([e[0] for e in chunk], [e[1] for e in chunk], self.config)
            if self.config.glossary:
                out = self._require_terms(chunk, required, out)
            if self.config.check_rows:
                out = self._check(chunk, required, out)
            for (ids, prefix, rows, text, terms), t in zip(chunk, out):
                if self.config.glossary:
                    t.terms_required, t.terms_met = terms, terms_met(t.translation or "", terms)
                for r in rows:
                    results[r] = t
        return results  # type: ignore[return-value]

    def _require_terms(self, chunk: list, required: list, out: list[Translation]) -> list[Translation]:
        """Decode again, constrained to their glossary terms, the rows whose translation misses one.

        A row whose free translation already holds its terms keeps it: constrained search splits the beam
        between hypotheses by how much of the terms they hold, and with a beam of 4 the model's own wording
        often falls out of it (measured in docs/results.md), so it is spent only where it is needed."""
        redo = [i for i, (e, t) in enumerate(zip(chunk, out)) if len(terms_met(t.translation or "", e[4])) < len(e[4])]
        if not redo:
            return out
        out = list(out)
        for i, t in zip(redo, self._decode([chunk[i][0] for i in redo], [chunk[i][1] for i in redo], self.config, [required[i] for i in redo])):
            out[i] = t
        return out

    def _check(self, chunk: list, required: list, out: list[Translation]) -> list[Translation]:
        """Flag each translation; where a remedy applies, decode the row once more with it (the rows that share a
        remedy in one batch) and keep that result unless it is flagged worse (more flags)."""
        again: dict[DecodeConfig, list[int]] = {}  # remedy -> positions in the chunk
        for i, ((_, _, _, text, _), t) in enumerate(zip(chunk, out)):
            t.flags = t.first_flags = row_flags(text, t.translation or "", t.src_tokens, t.tgt_tokens, self.length_ratio)
            cfg = remedy(self.config, t.flags, t.src_tokens, self.length_ratio) if t.flags else None
            if cfg is not None:
                again.setdefault(cfg, []).append(i)
        out = list(out)
        for cfg, positions in again.items():
            redone = self._decode([chunk[i][0] for i in positions], [chunk[i][1] for i in positions], cfg, [required[i] for i in positions])
            for i, t in zip(positions, redone):
                final = row_flags(chunk[i][3], t.translation or "", t.src_tokens, t.tgt_tokens, self.length_ratio)
                if len(final) <= len(out[i].first_flags):
                    t.flags, t.first_flags = final, out[i].first_flags
                    out[i] = t
        return out

    def _chunks(self, encoded: list):
        chunk: list = []
        for item in encoded:  # sorted by length, so the last item is the longest
            if chunk and len(item[0]) * (len(chunk) + 1) > self.config.max_batch_tokens:
                yield chunk
                chunk = []
            chunk.append(item)
        if chunk:
            yield chunk

    def _decode(self, batch_ids: list[list[int]], prefixes: list[list[int]], cfg: DecodeConfig,
                required: list[list[list[int]]] | None = None) -> list[Translation]:
        """Decode one sub-batch; `required`: per row, the token sequences (glossary terms) its output must hold."""
        src, lens = pad_ids(batch_ids)
        max_len = np.minimum(cfg.max_length_a * lens + cfg.max_length_b, cfg.max_decoding_length).astype(np.int64)
        # room for a forced prefix, the required terms, and one more token
        max_len = np.maximum(max_len, [len(p) + sum(map(len, r)) + 1 for p, r in zip(prefixes, required or [[]] * len(prefixes))])
        forced = prefixes if any(prefixes) else None
        state = self.engine.encode(src, lens)
        c = Constraints(cfg.no_repeat_ngram_size, cfg.repetition_penalty, cfg.min_decoding_length)
        details = cfg.return_token_scores or cfg.return_alignment
        if cfg.beam_size == 1:
            sampling = Sampling(cfg.sampling_topk, cfg.sampling_topp, cfg.sampling_temperature)
            # each sentence's draws seeded by the seed and its own ids: the same in any batch, any order, any run
            seeds = [[cfg.sampling_seed, zlib.crc32(np.asarray(ids, dtype=np.int64).tobytes())] for ids in batch_ids]
            nbests = [[h] for h in greedy_search(self.engine.step, state, len(batch_ids), BOS_ID, EOS_ID, max_len, c, sampling, seeds,
                                                 forced, details)]
        else:
            nbests = beam_search(self.engine.step, state, len(batch_ids), BOS_ID, EOS_ID, max_len, cfg.beam_size, cfg.length_penalty, cfg.nbest,
                                 c, forced, details, required, self.glue)
        out = []
        for src_len, hyps in zip(lens, nbests):
            best: Hypothesis = hyps[0]
            texts = [(self.tgt_sp.decode(h.tokens), h.score) for h in hyps]
            out.append(Translation(texts[0][0], best.score, int(src_len) - 1, len(best.tokens), texts if cfg.nbest > 1 else [], None, best.tokens,
                                   best.token_scores if cfg.return_token_scores else None, best.alignment if cfg.return_alignment else None))
        return out
