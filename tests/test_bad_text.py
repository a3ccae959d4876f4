"""Whatever a Parquet cell holds, the translator gives back one result for it: a translation or an error.

Property-based (Hypothesis): random Unicode (surrogates and control characters included), random bytes,
None, other types and very long lines, through the translator in-process and through the Ray job.
"""

import pyarrow as pa
import regex
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s2s.engine import load_translator
from s2s.config import DecodeConfig
from s2s.translator import as_text

FAST = DecodeConfig(max_decoding_length=20)

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=40)  # surrogates too, which are not Unicode text
CELLS = st.one_of(st.none(), ANY_TEXT, st.binary(max_size=40), st.integers(), st.text(min_size=3000, max_size=6000),
                  st.sampled_from(["Hello.", "I like cats.", "\u200b", "\ufeffHi.", " \t\n", "", "\x00\x1b[31m"]))


# every default-ignorable code point (Unicode's DerivedCoreProperties, through the regex module's tables)
IGNORABLE = [chr(c) for c in range(0x110000) if 0xD800 > c or c > 0xDFFF if regex.match(r"\p{Default_Ignorable_Code_Point}", chr(c))]
SPACES = [" ", "\t", "\n", "\x00", "\x1b", "\u2028", "\u3000", "\u00a0"]
VISIBLE = st.characters(exclude_categories=("Cc", "Cs", "Zs", "Zl", "Zp")).filter(lambda ch: not regex.match(r"\p{DI}", ch))


@given(st.text(st.sampled_from(IGNORABLE + SPACES), min_size=1, max_size=12))
def test_a_text_of_ignorable_characters_has_nothing_to_translate(value):
    text, error = as_text(value)
    assert text is None and error.startswith(("no visible characters", "empty or whitespace-only text")), (value, error)


@given(st.text(st.sampled_from(IGNORABLE + SPACES), max_size=6), VISIBLE, st.text(st.sampled_from(IGNORABLE + SPACES), max_size=6))
def test_ignorable_characters_around_a_visible_one_are_dropped(before, visible, after):
    text, error = as_text(before + visible + after)
    assert error is None and text == visible and not any(ch in IGNORABLE for ch in text)


@pytest.fixture(scope="module")
def translator(tiny_model_dir):
    return load_translator(tiny_model_dir, FAST, device="cpu")


@pytest.mark.parametrize("value,text,error", [
    ("  Hello   world. ", "Hello world.", None),
    ("\ufeffHello\u200b.", "Hello.", None),
    ("co\u00adoperate\u034f", "cooperate", None),  # a soft hyphen and a combining grapheme joiner are not drawn
    ("\u034f", None, "no visible characters"),  # U+034F is a combining mark (Mn) that is default-ignorable
    ("\u3164\u115f", None, "no visible characters"),  # Hangul fillers are letters (Lo) that are default-ignorable
    (b"caf\xc3\xa9", "caf\u00e9", None),
    (b"caf\xe9", None, "text is not valid UTF-8 (byte 0xe9 at offset 3)"),
    ("\u200b\u2060\ufeff", None, "no visible characters"),
    ("\x00\x01\x7f", None, "no visible characters"),
    ("a\ud800b", None, "text has unpaired surrogates"),
    (None, None, "null text"),
    ("   ", None, "empty or whitespace-only text"),
    (3.5, None, "text is float, not a string"),
])
def test_what_counts_as_text(value, text, error):
    got_text, got_error = as_text(value)
    assert got_text == text and (got_error or "").startswith(error or "")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.lists(CELLS, max_size=12))
def test_every_value_gets_one_result(translator, values):
    results = translator.translate(values)
    assert len(results) == len(values)
    for value, r in zip(values, results):
        assert (r.translation is None) != (r.error is None), (value, r)
        if r.error is None:
            assert isinstance(r.translation, str) and r.score is not None and 0 < r.src_tokens <= FAST.max_input_tokens


def test_a_long_line_is_refused_before_it_is_tokenized(translator, tiny_model_dir):
    """A 5,000-word line is refused on its length alone; with truncation only the part that fits is tokenized."""
    seen = []

    class Recording:  # stands in for the SentencePiece model, recording what it is asked to tokenize
        def __init__(self, sp):
            self.sp = sp

        def encode(self, text):
            seen.append(len(text))
            return self.sp.encode(text)

    line = " ".join(["translation"] * 5000)
    real = translator.src_sp
    translator.src_sp = Recording(real)
    try:
        refused = translator.translate([line])[0]
        assert refused.error.startswith(f"input has {len(line)} characters, more than max_input_tokens=250") and seen == []
        cut = load_translator(tiny_model_dir, DecodeConfig(max_decoding_length=20, truncate_long_input=True),
                              device="cpu")
        cut.src_sp = Recording(real)
        result = cut.translate([line])[0]
        assert result.error is None and result.src_tokens == 250 and max(seen) <= 2 * 250 * cut.max_piece_chars < len(line)
    finally:
        translator.src_sp = real


@settings(max_examples=3, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(values=st.lists(st.one_of(st.none(), ANY_TEXT.map(lambda s: s.encode("utf-8", "surrogatepass")), st.binary(max_size=40),
                                 st.sampled_from([b"Hello.", b"\xef\xbb\xbf", "\u200b".encode()])), min_size=1, max_size=80))
def test_any_bytes_through_the_ray_job_every_row_once(tiny_model_dir, ray_2cpus, tmp_path_factory, values):
    from s2s.config import TranslateConfig
    from s2s.translate import run_translate

    folder = tmp_path_factory.mktemp("prop")
    column = pa.array(values, pa.binary()).view(pa.string())  # a string column whose bytes may not be UTF-8
    pq.write_table(pa.table({"text": column}), folder / "in.parquet")
    summary = run_translate(TranslateConfig(input=str(folder / "in.parquet"), output=str(folder / "out"), model=str(tiny_model_dir),
                                            decode=FAST, rows_per_shard=30, max_error_rate=1.0))
    rows = pq.read_table(folder / "out").to_pylist()
    assert sorted(int(r["row_id"].split("#")[1]) for r in rows) == list(range(len(values)))
    assert all((r["translation"] is None) != (r["error"] is None) for r in rows)
    assert summary["status"] == "complete" and summary["rows"] == len(values)
