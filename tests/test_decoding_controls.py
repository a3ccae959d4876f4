"""The search's steering controls on the tiny model, through the Translator every command uses (onnxruntime,
greedy and beam alike): each shows its effect on real output, and a run records them in its fingerprint."""

import json
import subprocess
import sys
from dataclasses import replace

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2s.config import DecodeConfig
from s2s.engine import load_translator


@pytest.fixture(scope="module")
def sentences(tiny_run):
    return pq.read_table(tiny_run / "data" / "test.parquet").column("src").to_pylist()[:60]


def _tokens(model_dir, sentences, **controls):
    out = {}
    for beam in (1, 4):
        cfg = DecodeConfig(beam_size=beam, max_decoding_length=40, check_rows=False, **controls)  # the controls alone, no remedy
        out[beam] = [t.tokens for t in load_translator(model_dir, cfg, variant="fp32").translate(sentences)]
    return out


def _repeats(tokens, n):
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) - len(set(grams))


# The tiny model (30 steps) ends most outputs after two subwords; made to go on (min_decoding_length), it loops.
TALK = 12


def test_no_repeat_ngram_size_removes_the_tiny_models_loops(tiny_model_dir, sentences):
    before = _tokens(tiny_model_dir, sentences, min_decoding_length=TALK)
    after = _tokens(tiny_model_dir, sentences, min_decoding_length=TALK, no_repeat_ngram_size=2)
    for beam in (1, 4):
        assert sum(_repeats(t, 2) for t in before[beam]) > 0  # a 30-step model loops: the effect is there to see
        assert sum(_repeats(t, 2) for t in after[beam]) == 0


def test_repetition_penalty_repeats_fewer_tokens(tiny_model_dir, sentences):
    before = _tokens(tiny_model_dir, sentences, min_decoding_length=TALK)
    after = _tokens(tiny_model_dir, sentences, min_decoding_length=TALK, repetition_penalty=3.0)
    for beam in (1, 4):
        assert sum(_repeats(t, 1) for t in after[beam]) < sum(_repeats(t, 1) for t in before[beam])


def test_min_decoding_length_and_the_length_bound_are_reached(tiny_model_dir, sentences):
    short = min(len(t) for t in _tokens(tiny_model_dir, sentences)[1])
    longer = _tokens(tiny_model_dir, sentences, min_decoding_length=short + 6)
    bounded = _tokens(tiny_model_dir, sentences, max_length_a=0.0, max_length_b=5, min_decoding_length=TALK)
    for beam in (1, 4):
        assert min(len(t) for t in longer[beam]) >= short + 6
        assert {len(t) for t in bounded[beam]} == {5}  # the bound comes first, and is reached


def test_translate_records_the_controls_and_resume_refuses_other_ones(tiny_model_dir, sentences, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": sentences[:20]}), src)
    out = tmp_path / "out"

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(src), "--output", str(out), "--model", str(tiny_model_dir),
                               "--executor", "local", "--beam-size", "2", *extra], capture_output=True, text=True, timeout=300)

    done = run("--no-repeat-ngram-size", "2", "--min-decoding-length", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    decode = json.loads((out / "_run.json").read_text())["decode"]
    assert (decode["no_repeat_ngram_size"], decode["min_decoding_length"], decode["repetition_penalty"]) == (2, 2, 1.0)
    refused = run("--no-repeat-ngram-size", "3", "--resume")
    assert refused.returncode == 2 and "another model or settings" in refused.stderr and "decode" in refused.stderr
    # text mode takes the same options
    (tmp_path / "in.txt").write_text("\n".join(sentences[:5]) + "\n")
    text = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(tmp_path / "in.txt"), "--output", str(tmp_path / "out.txt"),
                           "--model", str(tiny_model_dir), "--repetition-penalty", "2.0", "--max-length-a", "0", "--max-length-b", "4"],
                          capture_output=True, text=True, timeout=300)
    assert text.returncode == 0, text.stderr[-2000:]
    assert len((tmp_path / "out.txt").read_text().splitlines()) == 5


def test_controls_are_checked_up_front():
    for bad in (dict(no_repeat_ngram_size=-1), dict(repetition_penalty=0.0), dict(min_decoding_length=300),
                dict(max_length_a=0.0, max_length_b=0)):
        with pytest.raises(ValueError):
            replace(DecodeConfig(), **bad)


def test_a_seed_reproduces_a_sample_in_any_batch_and_another_seed_gives_another(tiny_model_dir, sentences):
    def sample(seed, texts, batch_tokens=4096):
        cfg = DecodeConfig(sampling_topk=0, sampling_temperature=1.0, sampling_seed=seed, max_decoding_length=40, max_batch_tokens=batch_tokens)
        return [t.translation for t in load_translator(tiny_model_dir, cfg, variant="fp32").translate(texts)]

    first = sample(7, sentences)
    greedy = [t.translation for t in load_translator(tiny_model_dir, DecodeConfig(max_decoding_length=40), variant="fp32").translate(sentences)]
    assert first != greedy  # it samples
    assert sample(7, sentences[::-1], batch_tokens=300)[::-1] == first  # other order, other sub-batches: the same sample
    assert sample(8, sentences) != first
    topk2 = DecodeConfig(sampling_topk=2, sampling_seed=1, max_decoding_length=40)
    assert len(load_translator(tiny_model_dir, topk2, variant="fp32").translate(sentences)) == len(sentences)
    with pytest.raises(ValueError, match="needs beam_size 1"):
        DecodeConfig(beam_size=4, sampling_topk=10)


def test_a_target_prefix_is_kept_per_row_from_a_column_and_for_every_row_from_the_option(tiny_model_dir, sentences, tmp_path):
    from s2s.tokenizer import load_sentencepiece

    sp = load_sentencepiece(tiny_model_dir / "tgt.model")
    prefix = sp.encode("Je")
    for beam in (1, 4):
        out = load_translator(tiny_model_dir, DecodeConfig(beam_size=beam, target_prefix="Je", max_decoding_length=30)).translate(sentences)
        assert all(t.tokens[: len(prefix)] == prefix for t in out)
    # per row, from a column, through the Ray job (read tasks, actors, commit): null rows fall back to the option's
    rows = sentences[:12]
    own = ["Il", None, "Nous", ""] * 3
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": rows, "start": own, "n": list(range(12))}), src)
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(src), "--output", str(tmp_path / "out"), "--model",
                           str(tiny_model_dir), "--target-prefix-column", "start", "--target-prefix", "Tu", "--rows-per-shard", "5",
                           "--beam-size", "2", "--max-decoding-length", "20"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    t = pq.read_table(tmp_path / "out").sort_by("n")
    for start, translation in zip(t.column("start").to_pylist(), t.column("translation").to_pylist()):
        assert translation.startswith(start or "Tu"), (start, translation)
    missing = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(src), "--output", str(tmp_path / "out2"), "--model",
                              str(tiny_model_dir), "--target-prefix-column", "nope"], capture_output=True, text=True, timeout=300)
    assert missing.returncode == 2 and "no column 'nope'" in missing.stderr and "--target-prefix-column" in missing.stderr


def test_token_scores_and_alignment_columns(tiny_model_dir, sentences, tmp_path):
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": sentences[:20] + [None]}), src)
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(src), "--output", str(tmp_path / "out"), "--model",
                           str(tiny_model_dir), "--return-token-scores", "--return-alignment", "--result-prefix", "mt_",
                           "--max-decoding-length", "20"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pq.read_table(tmp_path / "out").to_pylist()
    for r in rows:
        if r["mt_error"]:
            assert r["mt_token_scores"] is None and r["mt_alignment"] is None
            continue
        assert len(r["mt_token_scores"]) == len(r["mt_alignment"]) == r["mt_tgt_tokens"]
        assert all(0 <= a <= r["mt_src_tokens"] for a in r["mt_alignment"])  # a source subword, or its end of sentence
        assert sum(r["mt_token_scores"]) >= r["mt_score"] - 1e-3  # the end of sentence's own log-prob is the difference
    refused = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", "-", "--model", str(tiny_model_dir), "--return-alignment"],
                             input="Hello.\n", capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "need a Parquet input" in refused.stderr


def test_row_flags_and_their_remedies():
    from s2s.quality import row_flags
    from s2s.translator import remedy

    ratio = {"low": 0.5, "high": 2.0}
    assert row_flags("I like cats.", "i like cats. ", 4, 4, ratio) == ["copy"]
    assert row_flags("x", "a \u2047 b", 1, 3, ratio) == ["unknown"]
    assert row_flags("x", "de se rappeler de se rappeler de se rappeler", 10, 10, ratio) == ["repeat"]
    assert row_flags("x", "y", 10, 23, ratio) == ["too_long"] and row_flags("x", "y", 10, 2, ratio) == ["too_short"]
    assert row_flags("x", "y", 10, 22, ratio) == [] and row_flags("x", "y", 10, 3, ratio) == []  # within the slack
    assert row_flags("x", "y", 10, 2, None) == []  # no bounds known: no length flags
    cfg = DecodeConfig()
    assert remedy(cfg, ["repeat"], 10, ratio).no_repeat_ngram_size == 3
    long = remedy(cfg, ["too_long"], 10, ratio)
    assert (long.max_length_a, long.max_length_b, long.no_repeat_ngram_size) == (2.0, 2, 3)
    assert remedy(cfg, ["too_short"], 10, ratio).min_decoding_length == 3
    assert remedy(cfg, ["copy"], 10, ratio) is None and remedy(cfg, ["unknown"], 10, ratio) is None


def test_flagged_rows_are_decoded_again_and_the_run_counts_flags_before_and_after(tiny_model_dir, sentences, tmp_path):
    """The tiny model stops after two subwords: its outputs are far shorter than the training data's ratio
    allows, so most are flagged too_short; the remedy (a minimum length from that ratio) clears most of them."""
    manifest = json.loads((tiny_model_dir / "manifest.json").read_text())
    assert 0 < manifest["length_ratio"]["low"] < 1 < manifest["length_ratio"]["high"]
    checked = load_translator(tiny_model_dir, DecodeConfig(max_decoding_length=40)).translate(sentences)
    first = sum("too_short" in t.first_flags for t in checked)
    assert first > len(sentences) // 2
    assert sum("too_short" in t.flags for t in checked) < first
    assert all(len(t.flags) <= len(t.first_flags) for t in checked)
    plain = load_translator(tiny_model_dir, DecodeConfig(max_decoding_length=40, check_rows=False)).translate(sentences)
    assert all(t.flags is None for t in plain)
    remedied = [(c, p) for c, p in zip(checked, plain) if c.flags != c.first_flags]
    assert remedied and all(len(c.tokens) > len(p.tokens) for c, p in remedied)
    # the Ray job writes both columns and counts each flag before and after in _run.json
    src = tmp_path / "in.parquet"
    pq.write_table(pa.table({"text": sentences[:30]}), src)
    done = subprocess.run([sys.executable, "-m", "s2s.cli", "translate", str(src), "--output", str(tmp_path / "out"), "--model",
                           str(tiny_model_dir), "--max-decoding-length", "40"], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    run = json.loads((tmp_path / "out" / "_run.json").read_text())
    rows = pq.read_table(tmp_path / "out").to_pylist()
    for when, column in (("before_remedy", "first_flags"), ("after_remedy", "flags")):
        assert run["row_flags"][when] == {f: n for f in ("copy", "unknown", "repeat", "too_long", "too_short")
                                          if (n := sum(f in r[column] for r in rows))}
    assert run["row_flags"]["after_remedy"].get("too_short", 0) < run["row_flags"]["before_remedy"]["too_short"]
