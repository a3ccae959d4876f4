"""_run.json's quality signals and `s2s-job report`, on shards written by the job's own commit step."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from s2s.cli import app
from s2s.commit import REJECTED_DIR, RUN_FILE, STATS_KEY, commit_unit, open_folder, verify_parts
from s2s.inputs import as_bytes, plan, read_rows, texts_digest
from s2s.lease import Lease
from s2s.quality import has_repeated_ngram
from s2s.config import TranslateConfig
from s2s.translate import _summary

JOB = {"fingerprint": "fingerprint", "text_column": "text", "id_column": None}


def _run_dir(tmp_path, name, translations, model="models/eng-fra"):
    """A one-part output folder written by the job's own commit step and summary, from results given here."""
    out = tmp_path / name
    n = len(translations)
    source = tmp_path / f"{name}-in.parquet"
    pq.write_table(pa.table({"text": ["Hello there.", "I like cats.", "Same text", None][:n],
                             "refs": [["Bonjour.", "Salut."], ["J'aime les chats."], None, None][:n]}), source)
    cfg = TranslateConfig(input=str(source), output=str(out), reference_column="refs", model=str(model))
    work = plan(str(source), "text", 100, cfg.names, reference_column="refs")
    results = {"translation": translations, "score": [None if t is None else -1.0 for t in translations],
               "src_tokens": [3, 4, 2, 0][:n], "tgt_tokens": [0 if t is None else len(t.split()) for t in translations],
               "error": [None if t is not None else "null text" for t in translations],
               "flags": [[] for _ in translations], "first_flags": [[] for _ in translations]}
    lease = Lease(str(out))
    lease.acquire(interrupt_main=False)
    try:
        folder = open_folder(str(out), lease.fence)
        folder.begin()
        unit = work.units[0]
        texts = as_bytes(read_rows(unit, ["text"]).column(0))
        c = commit_unit(folder, {**unit, "digest": texts_digest(texts), "provider": "CPUExecutionProvider", "variant": "int8", "node": "n1"},
                        results, {**JOB, "names": cfg.names})
        summary = _summary(cfg, work, {c["name"]: c["stats"]}, {c["name"]}, True, 2.0, {"files": {"encoder.onnx": "x"}}, lease)
        (out / RUN_FILE).write_text(json.dumps(summary))
    finally:
        lease.release()
    return out, summary


def test_quality_signals(tmp_path):
    _, s = _run_dir(tmp_path, "a", ["Bonjour.", "J'aime les chats les chats les chats les chats.", "Same text", None])
    q = s["quality"]
    assert s["rows"] == 4 and s["errors"] == 1 and s["error_kinds"] == {"null text": 1}
    assert q["copy_rate"] == pytest.approx(1 / 3, abs=1e-5) and q["repeated_4gram_rate"] == pytest.approx(1 / 3, abs=1e-5)
    assert q["length_ratio"] == pytest.approx((1 + 9 + 2) / (3 + 4 + 2), abs=1e-4)
    assert q["unknown_token_rate"] == 0 and q["reference_rows"] == 2 and q["bleu"] > 0 and q["chrf"] > 0
    assert {"ray", "pyarrow"} <= set(s["versions"]) and s["complete"]
    assert has_repeated_ngram("a b c d a b c d") and not has_repeated_ngram("a b c d e a b c")


def test_report_one_run_and_two_side_by_side(tmp_path):
    a, _ = _run_dir(tmp_path, "a", ["Bonjour.", "J'aime les chats.", "Same text", None])
    b, _ = _run_dir(tmp_path, "b", ["Salut.", "J'aime les chiens.", "Même texte"])
    runner = CliRunner()
    one = runner.invoke(app, ["report", str(a)])
    assert one.exit_code == 0 and "copy rate" in one.output and "error: null text" in one.output
    two = runner.invoke(app, ["report", str(a), str(b)])
    assert two.exit_code == 0, two.output
    rows_line = next(line for line in two.output.splitlines() if line.startswith("rows"))
    assert rows_line.split()[1:] == ["4", "3", "-1", "(-25.0%)"]
    missing = runner.invoke(app, ["report", str(tmp_path / "none")])
    assert missing.exit_code == 2 and "no _run.json" in missing.output
    assert json.loads((a / RUN_FILE).read_text())["quality"]["bleu"] == 100.0


def test_html_page_is_self_contained_and_complete(tmp_path, tiny_model_dir):
    from html.parser import HTMLParser

    out, summary = _run_dir(tmp_path, "a", ["Bonjour.", "J'aime les chats.", "Same text", None], model=tiny_model_dir)
    page = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(out), "--html", str(page)])
    assert result.exit_code == 0, result.output

    class Collect(HTMLParser):
        def __init__(self):
            super().__init__()
            self.images, self.external, self.text = [], [], []

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.images.append(attrs.get("src", ""))
            for key in ("src", "href"):
                if attrs.get(key) and not attrs[key].startswith("data:"):
                    self.external.append((tag, attrs[key]))
            if tag in ("script", "link", "iframe"):
                self.external.append((tag, attrs))

        def handle_data(self, data):
            self.text.append(data)

    parser = Collect()
    parser.feed(page.read_text())
    text = " ".join(parser.text)
    assert not parser.external  # nothing loaded from outside the file
    assert len(parser.images) == 3 and all(src.startswith("data:image/png;base64,") and len(src) > 5000 for src in parser.images)

    def scalars(d, prefix=""):
        for k, v in d.items():
            yield from scalars(v, f"{prefix}{k}.") if isinstance(v, dict) else [(prefix + k, v)]

    from s2s.report import _show

    for key, value in scalars(summary):
        assert key in text and _show(value) in text, key
    assert "J'aime les chats." in text and "null text" in text  # a sample row and the error breakdown


def test_counts_come_from_each_parts_footer_and_a_part_is_verified_before_it_counts(tmp_path):
    """_run.json sums the counts the commit stores in each part's footer. On --resume a part counts only if its
    footer names its planned unit (with the input's pin), row count and the run's fingerprint: a part rewritten
    without the footer, cut short, written with other settings, or from an input that changed since is moved
    to _rejected/ and redone."""
    out, summary = _run_dir(tmp_path, "a", ["Bonjour.", "J'aime les chats les chats les chats les chats.", "Same text", None])
    (part,) = out.glob("part-*.parquet")
    stored = json.loads(pq.read_schema(part).metadata[STATS_KEY])
    assert stored["rows"] == 4 and stored["errors"] == 1 and stored["quality"]["copies"] == 1 and stored["quality"]["repeated"] == 1
    assert stored["unit"]["start"] == 0 and stored["unit"]["stop"] == 4 and stored["fingerprint"] == "fingerprint"
    source = tmp_path / "a-in.parquet"
    cfg = TranslateConfig(input=str(source), output=str(out), reference_column="refs")
    work = plan(str(source), "text", 100, cfg.names, reference_column="refs")
    lease = Lease(str(out))
    lease.acquire(interrupt_main=False)
    try:
        folder = open_folder(str(out), lease.fence)
        folder.begin()
        done, said = verify_parts(folder, work.units, "fingerprint", work.files)
        assert set(done) == {part.name} and not said
        again = _summary(cfg, work, {n: d["stats"] for n, d in done.items()}, set(), True, 1.0, {"files": {}}, lease)
        for key in ("rows", "errors", "error_kinds", "src_tokens", "tgt_tokens", "quality", "status"):
            assert again[key] == summary[key], key
        good = part.read_bytes()
        for damage in ("other settings", "short", "no footer", "not parquet", "input changed"):
            part.write_bytes(good)
            table = pq.read_table(part)
            units, files = work.units, work.files
            if damage == "short":
                pq.write_table(table.slice(0, 3).replace_schema_metadata({STATS_KEY: json.dumps({**stored, "rows": 3}).encode()}), part)
            elif damage == "no footer":
                pq.write_table(table.replace_schema_metadata(None), part)
            elif damage == "not parquet":
                part.write_bytes(good[: len(good) // 2])
            elif damage == "input changed":
                units = [{**u, "pin": {**u["pin"], "mtime_ns": u["pin"]["mtime_ns"] + 1}} for u in units]
            fingerprint = "another" if damage == "other settings" else "fingerprint"
            done, said = verify_parts(folder, units, fingerprint, files)
            assert done == {} and len(said) == 1, damage
            assert not part.exists() and len(list((out / REJECTED_DIR).iterdir())) == 1, damage
            for p in (out / REJECTED_DIR).iterdir():
                p.unlink()
        incomplete = _summary(cfg, work, {}, set(), False, 1.0, {"files": {}}, lease)
        assert incomplete["status"] == "incomplete" and not incomplete["complete"] and incomplete["rows"] == 0
    finally:
        lease.release()
