import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from s2s.data import DataError, Pairs, load_pairs, split_key, split_pairs, token_batches


def test_split_is_by_source_sentence_and_keeps_variants_together(small_corpus):
    pairs = load_pairs(small_corpus, "en", "fr")
    splits = split_pairs(pairs, 0.1, 0.1)
    train_keys = {split_key(s) for s in splits.train.src}
    valid_keys = {split_key(s) for s, _ in splits.valid}
    test_keys = {split_key(s) for s, _ in splits.test}
    assert valid_keys and test_keys
    assert not (train_keys & valid_keys) and not (train_keys & test_keys) and not (valid_keys & test_keys)
    # every French variant of a held-out sentence is among its references
    by_src: dict[str, set] = {}
    for s, t in zip(pairs.src, pairs.tgt):
        by_src.setdefault(s, set()).add(t)
    for s, refs in splits.valid + splits.test:
        assert set(refs) == by_src[s]
    assert len(splits.train.src) + sum(len(r) for _, r in splits.valid + splits.test) == len(pairs.src)
    # deterministic
    again = split_pairs(pairs, 0.1, 0.1)
    assert again.valid == splits.valid and again.test == splits.test


def test_split_key_ignores_case_and_punctuation():
    assert split_key("Go.") == split_key("go!") == split_key("  Go ")
    assert split_key("Go.") != split_key("Go on.")


def test_bundled_data_split_sizes():
    from s2s.data import BUNDLED_DATA

    pairs = load_pairs(BUNDLED_DATA, "en", "fr")
    assert len(pairs.src) == 142_787
    splits = split_pairs(pairs)
    n_sources = len({split_key(s) for s in pairs.src})
    assert 0.015 < len(splits.valid) / n_sources < 0.025
    assert 0.015 < len(splits.test) / n_sources < 0.025


def test_missing_column_names_the_columns(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"english": ["a"], "fr": ["b"]}), path)
    with pytest.raises(DataError, match=r"no column 'en'.*\['english', 'fr'\]"):
        load_pairs(path, "en", "fr")


def test_empty_and_missing_and_corrupt_files(tmp_path):
    empty = tmp_path / "empty.tsv"
    empty.write_text("")
    with pytest.raises(DataError, match="empty"):
        load_pairs(empty, "en", "fr")
    no_rows = tmp_path / "header.tsv"
    no_rows.write_text("en\tfr\n")
    with pytest.raises(DataError, match="no rows"):
        load_pairs(no_rows, "en", "fr")
    with pytest.raises(DataError, match="no such file"):
        load_pairs(tmp_path / "nope.parquet", "en", "fr")
    corrupt = tmp_path / "bad.parquet"
    corrupt.write_bytes(b"PAR1 this is not parquet at all PAR1")
    with pytest.raises(DataError, match="bad.parquet"):
        load_pairs(corrupt, "en", "fr")


def test_null_and_empty_sentences_are_skipped_and_counted(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"en": ["Hi.", None, "  ", "Bye.", "Ok."], "fr": ["Salut.", "Non.", "Vide", "", "D'accord."]}), path)
    pairs = load_pairs(path, "en", "fr")
    assert pairs == Pairs(["Hi.", "Ok."], ["Salut.", "D'accord."], skipped=3)
    all_bad = tmp_path / "bad.parquet"
    pq.write_table(pa.table({"en": [None, ""], "fr": ["a", "b"]}), all_bad)
    with pytest.raises(DataError, match="all 2 rows"):
        load_pairs(all_bad, "en", "fr")


def test_tsv_with_header(tmp_path):
    path = tmp_path / "x.tsv"
    path.write_text('src\ttgt\n"Quoted" word\tMot "cité"\nHi.\tSalut.\n')
    pairs = load_pairs(path, "src", "tgt")
    assert pairs.src == ['"Quoted" word', "Hi."] and pairs.tgt == ['Mot "cité"', "Salut."]


def test_token_batches_respect_budget_and_world_size():
    rng = np.random.default_rng(1)
    src = rng.integers(2, 40, 1000)
    tgt = np.maximum(2, src + rng.integers(-3, 4, 1000))  # translations run about as long as their source
    batches = token_batches(src, tgt, 400, seed=3, world_size=3)
    assert len(batches) % 3 == 0
    for b in batches:
        assert len(b) * max(src[b].max(), tgt[b].max()) <= 400
    seen = np.concatenate(batches)
    assert len(seen) == len(set(seen.tolist()))  # no example twice
    assert len(seen) > 900  # only the trimmed remainder is left out
    # bucketing: padding is a small share of what the encoder and decoder compute
    for lens in (src, tgt):
        padded = sum(len(b) * lens[b].max() for b in batches)
        assert lens[seen].sum() / padded > 0.85


def test_the_bundled_data_is_found_after_a_plain_install(tmp_path):
    """`pip install .` (not -e) copies the package elsewhere: `s2s-job train`'s default --data must travel with it.

    The wheel is built from this checkout and installed into a folder outside it; a process that imports s2s
    from there, in another working directory, finds the data and its attribution."""
    import subprocess
    import sys
    from pathlib import Path

    import shutil

    root, src = Path(__file__).resolve().parent.parent, tmp_path / "src"
    # a clean copy: a build/ folder left in the checkout by an earlier build would hide a file the wheel lacks
    shutil.copytree(root / "s2s", src / "s2s", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, src / name)
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(wheels), str(src)],
                   check=True, timeout=300, cwd=tmp_path)
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), *map(str, wheels.glob("*.whl"))],
                   check=True, timeout=300)
    probe = ("import s2s, s2s.config, pathlib, pyarrow.parquet as pq; d = pathlib.Path(s2s.config.TrainConfig().data); "
             "print(s2s.__file__, d, pq.read_metadata(d).num_rows, (d.parent / 'README.md').is_file())")
    out = subprocess.run([sys.executable, "-c", probe], env={"PYTHONPATH": str(site), "PATH": "/usr/bin:/bin"}, cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    module, data, rows, attribution = out.stdout.split()
    assert module.startswith(str(site)) and data.startswith(str(site)), out.stdout  # the installed copy, not this checkout
    assert rows == "142787" and attribution == "True"
