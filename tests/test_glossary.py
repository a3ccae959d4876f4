"""A glossary (`--glossary terms.tsv`): read with errors that name the line, matched as whole words, honoured by
constrained beam search on the tiny model through every entry point (Translator, translate's Ray job, evaluate),
and reported per row and per run."""

import json
import re
import subprocess
import sys
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from s2s.cli import app
from s2s.config import DecodeConfig
from s2s.engine import load_translator
from s2s.glossary import matched_terms, read_glossary, terms_met

TARGET = "maison"  # a French word the tiny model has no reason to say for the term below


@pytest.fixture(scope="module")
def sentences(tiny_run):
    return pq.read_table(tiny_run / "data" / "test.parquet").column("src").to_pylist()[:80]


@pytest.fixture(scope="module")
def term(sentences):
    """The test sentences' most common word of four letters or more: the source term."""
    words = Counter(w.lower() for s in sentences for w in re.findall(r"[A-Za-z]{4,}", s))
    return words.most_common(1)[0][0]


def test_reading_a_glossary_names_the_line_and_what_to_do(tmp_path):
    ok = tmp_path / "ok.tsv"
    ok.write_text("# source\ttarget\n\ncat\tchat\nNew York\tNew York\nCAT\tchat\n", encoding="utf-8")
    assert read_glossary(str(ok)) == (("cat", "chat"), ("New York", "New York"))  # a repeated term with the same target: once
    for text, why in (("cat chat\n", "line 1"), ("cat\t\n", "line 1"), ("a\tb\tc\n", "line 1"), ("cat\tchat\nCat\tchatte\n", "line 2"),
                      ("# only a comment\n", "no terms")):
        bad = tmp_path / "bad.tsv"
        bad.write_text(text, encoding="utf-8")
        with pytest.raises(ValueError, match=why):
            read_glossary(str(bad))
    (tmp_path / "latin1.tsv").write_bytes("café\tcafé\n".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        read_glossary(str(tmp_path / "latin1.tsv"))
    with pytest.raises(FileNotFoundError, match="glossary"):
        read_glossary(str(tmp_path / "missing.tsv"))


def test_terms_match_as_whole_words_in_any_case():
    g = (("cat", "chat"), ("New York", "New York"), ("the cat", "le chat"))
    assert matched_terms("The Cat sat in new york.", g) == ["chat", "New York", "le chat"]
    assert matched_terms("A category of cats.", g) == []
    assert terms_met("Le chat est à New York.", ["chat", "New York", "chien"]) == ["chat", "New York"]
    assert terms_met("Les chats.", ["chat"]) == []


def test_the_glossary_is_honoured_and_rows_without_terms_are_untouched(tiny_model_dir, sentences, term):
    glossary = ((term, TARGET),)
    # fp32: int8's dynamic quantization scales each batch as a whole, so a row's output may change with its neighbours
    with_terms = load_translator(tiny_model_dir, DecodeConfig(beam_size=4, glossary=glossary, max_decoding_length=40), variant="fp32").translate(sentences)
    plain = load_translator(tiny_model_dir, DecodeConfig(beam_size=4, max_decoding_length=40), variant="fp32").translate(sentences)
    matched = [i for i, s in enumerate(sentences) if re.search(rf"\b{term}\b", s, re.I)]
    assert len(matched) >= 3
    assert sum(TARGET in plain[i].translation for i in matched) == 0  # the model alone never says it
    for i, (t, p) in enumerate(zip(with_terms, plain)):
        if i in matched:
            assert t.terms_required == [TARGET] and t.terms_met == [TARGET], (sentences[i], t.translation)
        else:
            assert t.terms_required == [] and t.terms_met == [] and t.translation == p.translation
    assert plain[0].terms_required is None


def test_translate_and_evaluate_report_the_terms(tiny_model_dir, tiny_run, sentences, term, tmp_path):
    (tmp_path / "terms.tsv").write_text(f"{term}\t{TARGET}\n", encoding="utf-8")
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": sentences[:40]}), src)
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(src), "--output", str(tmp_path / "out"), "--model",
                           str(tiny_model_dir), "--max-decoding-length", "40", "--glossary", str(tmp_path / "terms.tsv"),
                           "--executor", "local"],  # the same actor code as Ray's (benchmarks/glossary.py's smoke test runs Ray)
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pq.read_table(tmp_path / "out").to_pylist()
    run = json.loads((tmp_path / "out" / "_run.json").read_text())
    required = sum(len(r["terms_required"]) for r in rows)
    assert required == sum(bool(re.search(rf"\b{term}\b", s, re.I)) for s in sentences[:40]) > 0
    assert run["glossary"] == {"rows_with_terms": required, "required": required, "met": sum(len(r["terms_met"]) for r in rows),
                               "met_rate": run["glossary"]["met"] / required}
    assert run["glossary"]["met"] == required
    # another glossary is other settings: --resume refuses to mix them
    (tmp_path / "other.tsv").write_text(f"{term}\tchien\n", encoding="utf-8")
    again = CliRunner().invoke(app, ["translate", str(src), "--output", str(tmp_path / "out"), "--model", str(tiny_model_dir),
                                     "--max-decoding-length", "40", "--glossary", str(tmp_path / "other.tsv"), "--resume", "--executor", "local"])
    assert again.exit_code == 2 and "settings" in again.output
    # evaluate (PyTorch) reports the same counts in eval.json
    ev = CliRunner().invoke(app, ["evaluate", str(tiny_run), "--beam-size", "2", "--glossary", str(tmp_path / "terms.tsv"), "--samples", "1"])
    assert ev.exit_code == 0, ev.output[-2000:]
    result = json.loads((tiny_run / "eval.json").read_text())
    assert result["glossary"]["terms"] == 1 and result["glossary"]["met"] == result["glossary"]["required"] > 0


def test_a_glossary_needs_a_beam_and_a_readable_file(tiny_model_dir, tmp_path):
    (tmp_path / "terms.tsv").write_text("cat\tchat\n", encoding="utf-8")
    (tmp_path / "in.txt").write_text("I like cats.\n", encoding="utf-8")
    greedy = CliRunner().invoke(app, ["translate", str(tmp_path / "in.txt"), "--model", str(tiny_model_dir), "--beam-size", "1",
                                      "--glossary", str(tmp_path / "terms.tsv")])
    assert greedy.exit_code == 2 and "--beam-size 2" in greedy.output
    (tmp_path / "bad.tsv").write_text("cat chat\n", encoding="utf-8")
    bad = CliRunner().invoke(app, ["translate", str(tmp_path / "in.txt"), "--model", str(tiny_model_dir), "--glossary", str(tmp_path / "bad.tsv")])
    assert bad.exit_code == 2 and "line 1" in bad.output
