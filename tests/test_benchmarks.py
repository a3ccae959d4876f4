"""Every benchmark script kept in the repo runs here on tiny inputs, so that none can rot unnoticed."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_protocol_costs_runs_locally_and_on_s3(tmp_path):
    out = tmp_path / "costs.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "protocol_costs.py"), "--rows", "2000", "--rows-per-unit", "1000",
                    "--repeat", "1", "--json", str(out)], check=True, timeout=300)
    rows = json.loads(out.read_text())
    for where in ("local", "s3"):
        mine = [r for r in rows if r["where"] == where]
        assert [r["what"].split(" ")[0] for r in mine] == ["read", "publish", "one", "one"]
        assert all(r["ours_ms"] > 0 for r in mine) and [r["plain_ms"] is not None for r in mine] == [True, True, False, False]


def test_search_before_after_loads_the_other_checkouts_search_and_compares_like_work(tiny_run, tiny_model_dir):
    log = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "search_before_after.py"), "--ref", "HEAD", "--model", str(tiny_model_dir),
                          "--run", str(tiny_run), "--sentences", "8", "--batches", "1,4", "--rounds", "1", "--threads", "1", "--matmul-seconds", "0.2"],
                         check=True, timeout=300, capture_output=True, text=True, cwd=ROOT).stdout
    rows = re.findall(r"^  (greedy|beam 4) +(\d+) +[\d.]+ +[\d.]+ +[\d.]+x", log, re.M)
    assert rows == [("greedy", "1"), ("greedy", "4"), ("beam 4", "1"), ("beam 4", "4")], log
    assert "s2s-search-before" not in subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout


def test_pipeline_before_after_runs_both_checkouts_and_the_bare_loop(tiny_run, tiny_model_dir, tmp_path):
    out = tmp_path / "passes.json"
    log = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "pipeline_before_after.py"), "--ref", "HEAD", "--model", str(tiny_model_dir),
                          "--run", str(tiny_run), "--rows", "300", "--passes", "1", "--threads", "1", "--matmul-seconds", "0.2", "--json", str(out)],
                         check=True, timeout=600, capture_output=True, text=True, cwd=ROOT).stdout
    assert "after / before" in log and "GFLOP/s" in log
    passes = json.loads(out.read_text())["passes"]
    assert sorted(passes) == ["after", "bare", "before"] and all(len(v) == 1 for v in passes.values())
    assert passes["after"][0]["rows"] == passes["before"][0]["rows"] == 300
    assert "before" not in subprocess.run(["git", "-C", str(ROOT), "worktree", "list"], capture_output=True, text=True).stdout


def test_delta_compare_asks_every_question_on_both_stores(tmp_path):
    log = subprocess.run([sys.executable, str(ROOT / "docs" / "experiments" / "delta-compare" / "run.py"), "--work", str(tmp_path)],
                         check=True, timeout=300, capture_output=True, text=True).stdout
    lines = [json.loads(x) for x in log.splitlines() if x.startswith("{") and '"q"' in x]
    assert {(x["q"], x["store"]) for x in lines} == {(q, s) for q in ("Q1", "Q2", "Q3", "Q4") for s in ("local", "s3-moto")}
    stalled = [x for x in lines if x["q"] == "Q3" and x["variant"] == "nonempty_snapshot"]
    assert len(stalled) == 2 and all(x["rows"] == x["rows_by_tag"].get("B", 0) + x["stale_A_rows_after_overwrite"] for x in stalled)


def test_run_py_every_section_on_the_tiny_model(tiny_run, tiny_model_dir, tmp_path):
    """Each section of the speed table, on seconds of work: the training section once called `fit` with a signature
    it no longer had, and nothing noticed."""
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(ROOT / "benchmarks" / "run.py"), "--model", str(tiny_model_dir), "--run", str(tiny_run),
                    "--threads", "1", "--sentences", "16", "--decode-passes", "1", "--pipeline-rows", "200", "--pipeline-passes", "1",
                    "--train-steps", "12", "--train-rounds", "1", "--scale", "200", "--matmul-seconds", "0.2", "--actor-counts", "2", "--actor-beams", "4", "--no-scale-bare", "--json", str(out)],
                   check=True, timeout=900, cwd=ROOT)
    rows = json.loads(out.read_text())["rows"]
    sections = {r["section"] for r in rows}
    assert sections == {"decode", "int8", "pipeline", "actors", "training", "scale", "limit", "padding"}, sections
    training = next(r for r in rows if r["section"] == "training")
    assert training["a"] > 0 and training["b"] > 0, training


def test_row_checks_runs_both_sides_and_reports_flags_and_bleu(tiny_run, tiny_model_dir, tmp_path):
    out = tmp_path / "passes.json"
    log = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "row_checks.py"), "--model", str(tiny_model_dir), "--run", str(tiny_run),
                          "--rows", "60", "--passes", "1", "--matmul-seconds", "0.2", "--json", str(out)], check=True, timeout=600, capture_output=True, text=True,
                         cwd=ROOT).stdout
    assert "checked/unchecked: speed" in log and "rows per flag before the remedy" in log and "GFLOP/s" in log
    runs = json.loads(out.read_text())
    assert runs["checked"][0]["row_flags"]["before_remedy"] and runs["unchecked"][0]["row_flags"] == {}
    assert runs["checked"][0]["rows"] == runs["unchecked"][0]["rows"] == 60


def test_glossary_benchmark_builds_a_glossary_and_measures_both_sides(tiny_run, tiny_model_dir, tmp_path):
    out = tmp_path / "glossary.json"
    log = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "glossary.py"), "--model", str(tiny_model_dir), "--run", str(tiny_run),
                          "--rows", "60", "--passes", "1", "--matmul-seconds", "0.2", "--min-count", "2", "--min-dice", "0.3", "--json", str(out)], check=True, timeout=600,
                         capture_output=True, text=True, cwd=ROOT).stdout
    assert "glossary/plain: terms met" in log and "GFLOP/s" in log
    result = json.loads(out.read_text())
    g, p = result["scores"]["glossary"], result["scores"]["plain"]
    assert result["glossary"] and g["terms_required"] == p["terms_required"] > 0
    assert g["terms_met"] > p["terms_met"]  # the tiny model says none of them by itself
