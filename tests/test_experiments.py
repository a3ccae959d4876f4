"""Every script kept under docs/experiments/ and benchmarks/ runs here on the tiny model for seconds, so that
none rots unnoticed (benchmarks/run.py once called `fit` with a signature it no longer had). The scripts'
figures come from real models; here only that each still runs and prints what it claims to."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = ROOT / "docs" / "experiments"


def run(*args: str, timeout: int = 300, cwd: Path | None = None) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_decode_choice_prints_every_point_of_its_grid(tiny_run, tiny_model_dir):
    out = run(str(EXPERIMENTS / "decode-choice" / "run.py"), str(tiny_run), str(tiny_model_dir))
    lines = [x for x in out.splitlines() if x.startswith("beam ")]
    assert len(lines) == 8 and all("BLEU" in x and "sentences/s" in x for x in lines), out


def test_static_int8_quantizes_both_formats_and_compares_them(tiny_run, tiny_model_dir):
    out = run(str(EXPERIMENTS / "static-int8" / "run.py"), "--model", str(tiny_model_dir), "--run", str(tiny_run), "--calib", "64",
              "--passes", "1", "--every", "1")
    for name in ("fp32", "int8 dynamic", "int8 static QOperator", "int8 static QDQ"):
        assert sum(x.strip().startswith(name + " ") for x in out.splitlines()) == 2, (name, out)  # beam 4 and greedy


def test_weights_from_onnx_gives_back_the_checkpoint_bit_for_bit(tiny_run, tiny_model_dir, tmp_path):
    checkpoint = next((tiny_run / "train").glob("checkpoint_*/checkpoint.pt"))
    out = run(str(EXPERIMENTS / "second-cpu" / "weights_from_onnx.py"), str(tiny_model_dir), str(tmp_path / "w.pt"), "--check",
              str(checkpoint))
    assert "bit-identical" in out and (tmp_path / "w.pt").exists()


def test_night_table_rows_on_the_tiny_model(tiny_run, tiny_model_dir, tmp_path):
    """Two of its thirteen rows, the two without a Ray run (the others share its helpers and cost a Ray run
    each; the full table is a five-minute run on a real model, docs/exactly-once.md)."""
    out = run(str(EXPERIMENTS / "night-table" / "run.py"), str(tiny_model_dir), str(tiny_run / "data" / "test.parquet"), str(tmp_path / "w"),
              "--rows", "40", "--only", "9,11")
    rows = {r["row"]: r for r in map(json.loads, out.splitlines())}
    text_mode = rows["text mode, an engine that fails once"]
    assert text_mode["exit"] == 0 and text_mode["lines"] == 40 and text_mode["other_translation"] == 0
    ids = rows["--id-column with a duplicated and a null id"]
    assert ids["exit"] == 2 and "ids.parquet#7" in ids["last_line"] and ids["rows"] == 0


def test_same_model_finds_this_checkout_equal_to_itself(tmp_path):
    out = run(str(ROOT / "benchmarks" / "same_model.py"), "--ref", "HEAD", "--pairs", "600", "--steps", "12", "--tiny", cwd=ROOT)
    assert out.splitlines()[-1] == "identical", out
    assert "metrics records          same" in out and "trained weights          same" in out


def test_profile_beam_on_one_batch(tiny_run, tiny_model_dir):
    out = run(str(ROOT / "benchmarks" / "profile_beam.py"), "--model", str(tiny_model_dir), "--run", str(tiny_run), "--batches", "1",
              "--threads", "1")
    assert out.strip(), "profile_beam printed nothing"


def test_gpu_check_tiny_on_the_cpu(tmp_path):
    """The GPU check's own steps on a tiny model and the CPU (benchmarks/gpu_check.sh runs them on a GPU)."""
    run(str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--work", str(tmp_path / "w"), "--out", str(tmp_path), timeout=600)
    table = json.loads((tmp_path / "gpu_check.json").read_text())
    assert table, "gpu_check.json is empty"


def _elf_with_fatbin(entries_per_fatbin: list[list[int]]) -> bytes:
    """A 64-bit little-endian ELF file whose only sections are a string table and `.nv_fatbin`, holding one fat
    binary per list, each with an entry per architecture (payload: the architecture's number, 8 bytes)."""
    body = b""
    for sms in entries_per_fatbin:
        entries = b"".join(struct.pack("<HHIQ", 2, 1, 32, 8) + bytes(12) + struct.pack("<I", sm) + struct.pack("<Q", sm) for sm in sms)
        body += struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(entries)) + entries
    names = b"\0.shstrtab\0.nv_fatbin\0"
    data_off = 64
    strtab_off = data_off + len(body)
    shoff = strtab_off + len(names)
    header = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9) + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 3, 1)
    sections = [struct.pack("<IIQQQQIIQQ", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0),
                struct.pack("<IIQQQQIIQQ", 1, 3, 0, 0, strtab_off, len(names), 0, 0, 1, 0),
                struct.pack("<IIQQQQIIQQ", 11, 1, 0, 0, data_off, len(body), 0, 0, 8, 0)]
    return header + body + names + b"".join(sections)


def test_ort_gpu_parts_keeps_one_architecture_and_unpacks_whole(tmp_path):
    """pack/unpack on a made-up wheel: the real one is 255 MB; the ELF walk and the pruning are the same code."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import ort_gpu_parts as parts
    finally:
        sys.path.pop(0)
    elf = _elf_with_fatbin([[75, 90, 120], [80, 86], [90]])
    assert parts.entries_per_sm(elf) == {75: 1, 80: 1, 86: 1, 90: 2, 120: 1}
    wheel = tmp_path / "onnxruntime_gpu-0-cp312-cp312-linux_x86_64.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(parts.CUDA_LIB, elf)
        z.writestr("onnxruntime/__init__.py", "VERSION = 'made up'\n")
        z.writestr(parts.LEFT_OUT[0], b"tensorrt")
    run(str(ROOT / "benchmarks" / "ort_gpu_parts.py"), "pack", str(tmp_path / "parts"), "--wheel", str(wheel))
    run(str(ROOT / "benchmarks" / "ort_gpu_parts.py"), "unpack", str(tmp_path / "parts"), str(tmp_path / "site"))
    pruned = (tmp_path / "site" / parts.CUDA_LIB).read_bytes()
    assert len(pruned) == len(elf) and parts.entries_per_sm(pruned) == {90: 2, 80: 1, 86: 1}  # the fat binary without sm_90 stays whole
    assert (tmp_path / "site" / "onnxruntime" / "__init__.py").read_text() == "VERSION = 'made up'\n"
    assert not (tmp_path / "site" / parts.LEFT_OUT[0]).exists()


def test_train_sweep_one_short_point(small_corpus, tmp_path):
    out = run(str(ROOT / "benchmarks" / "train_sweep.py"), "--out", str(tmp_path / "sweep"), "--minutes", "0.1", "--only", "hidden384",
              "--data", str(small_corpus), "--extra", "--workers 1 --log-every 1 --src-vocab-size 500 --tgt-vocab-size 500 --emb-dim 32",
              "--json", str(tmp_path / "sweep.json"), timeout=600)
    rows = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["point"] for r in rows] == ["hidden384"] and rows[0]["steps"] == 4 and rows[0]["valid_bleu"] >= 0, out
