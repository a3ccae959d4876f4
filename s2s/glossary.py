"""A glossary: source terms whose translation the output must use (`translate --glossary terms.tsv`).

The file is UTF-8 text, one `source term<TAB>target term` per line; empty lines and lines starting with `#`
are skipped. A source term matches a text case-insensitively as a whole word or phrase; each matched term's
target is then required in the translation, by lexically constrained beam search (s2s.search), and each row
records which targets were required and which the translation holds (`terms_required`, `terms_met`).
"""

from __future__ import annotations

from functools import lru_cache

import regex

Glossary = tuple[tuple[str, str], ...]


def read_glossary(path: str) -> Glossary:
    """The (source, target) pairs of a glossary file (local, or any URI pyarrow reads: s3://, gs://)."""
    from s2s.storage import filesystem

    fs, where = filesystem(path)
    try:
        with fs.open_input_stream(where) as f:
            raw = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such glossary file (one 'source term<TAB>target term' per line)") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}); save the glossary as UTF-8") from None
    pairs: dict[str, tuple[str, str, int]] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = [f.strip() for f in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise ValueError(f"{path}, line {n}: {line!r} is not 'source term<TAB>target term' (two non-empty fields, "
                             "one tab between them)")
        key = fields[0].casefold()
        if key in pairs and pairs[key][1] != fields[1]:
            raise ValueError(f"{path}, line {n}: {fields[0]!r} is also on line {pairs[key][2]} with another target "
                             f"({pairs[key][1]!r}, here {fields[1]!r}); keep one")
        pairs.setdefault(key, (fields[0], fields[1], n))
    if not pairs:
        raise ValueError(f"{path}: no terms (one 'source term<TAB>target term' per line)")
    return tuple((s, t) for s, t, _ in pairs.values())


@lru_cache(maxsize=None)  # each term compiled once, not once per row it is looked for in
def _whole(term: str) -> regex.Pattern:
    return regex.compile(r"(?<!\w)" + regex.escape(term) + r"(?!\w)", regex.IGNORECASE)


def matched_terms(text: str, glossary: Glossary) -> list[str]:
    """The target terms of the glossary entries whose source term `text` holds, in glossary order, each once."""
    out: list[str] = []
    for source, target in glossary:
        if target not in out and _whole(source).search(text):
            out.append(target)
    return out


def terms_met(translation: str, targets: list[str]) -> list[str]:
    """The targets that `translation` holds, as whole words, case-insensitively."""
    return [t for t in targets if _whole(t).search(translation)]
