"""Side-by-side benchmarks of s2s-job on the default model and test split; one table of ratios.

    python benchmarks/run.py                       # everything, on models/eng-fra and runs/eng-fra
    python benchmarks/run.py --model models/default --run runs/default --json bench.json
    python benchmarks/run.py --only decode,padding # some sections

Every ratio compares two things measured in this same run, on this machine, one after the other.
Sections: decode (onnxruntime vs PyTorch eager), int8 (vs fp32: speed and BLEU), pipeline (`s2s-job
translate` vs a bare loop), training (Ray Train 1 worker vs the bare loop), scale (10k..1M rows: s/row,
peak RSS), limit (FLOPs per token vs the measured matmul rate), padding (share before/after sorting).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from s2s.data import token_batches
from s2s.evaluate import load_model
from s2s.quality import corpus_scores
from s2s.engine import OrtEngine, load_model_dir, usable_cpus
from s2s.plots import read_metrics
from s2s.run_dir import checkpoint_file
from s2s.tokenizer import load_sentencepiece
from s2s.config import DecodeConfig
from s2s.translator import TorchEngine, Translator

S2S_JOB = shutil.which("s2s-job", path=os.path.dirname(sys.executable)) or "s2s-job"  # this venv's, even unactivated
SECTIONS = ("decode", "int8", "pipeline", "actors", "training", "scale", "limit", "padding")
ROWS_PER_SHARD = 2000  # `s2s-job translate`'s default; both it and the bare loop are given it
ROWS: list[dict] = []  # every figure of the run, printed as one table and written by --json


def record(section: str, what: str, a: float, b: float | None = None, unit: str = "", goal: str = "") -> None:
    """One line of the table: a (and b, with ratio a/b) in `unit`."""
    row = {"section": section, "what": what, "a": round(a, 4), "b": None if b is None else round(b, 4), "unit": unit,
           "ratio": None if not b else round(a / b, 3), "goal": goal}
    ROWS.append(row)
    ratio = f"{row['ratio']:.2f}x" if row["ratio"] is not None else ""
    b_txt = f"{row['b']:,.4g}" if b is not None else ""
    print(f"  {section:<9} {what:<72} {a:>10,.4g} {b_txt:>10} {unit:<12} {ratio:>7}  {goal}", flush=True)


# ---------------------------------------------------------------- helpers


def side_by_side_args(doc: str) -> argparse.ArgumentParser:
    """The options of the benchmarks that run `translate` on the test split with and without one option."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/eng-fra"))
    ap.add_argument("--run", type=Path, default=Path("runs/eng-fra"), help="its training run (the test split)")
    ap.add_argument("--rows", type=int, default=0, help="the test split's first rows only (0: all)")
    ap.add_argument("--passes", type=int, default=2)
    ap.add_argument("--json", type=Path, help="write every pass here too")
    ap.add_argument("--matmul-seconds", type=float, default=2.0, help=MATMUL_SECONDS_HELP)
    return ap


MATMUL_SECONDS_HELP = "how long each matmul rate printed beside the ratios is timed (shorter: rougher)"


@contextlib.contextmanager
def checkout_at(ref: str, where: Path):
    """This repository at `ref`, checked out in a git worktree at `where` for the duration -> its short commit."""
    root = Path(__file__).resolve().parents[1]
    subprocess.run(["git", "-C", str(root), "worktree", "add", "--detach", str(where), ref], check=True, capture_output=True)
    try:
        yield subprocess.run(["git", "-C", str(where), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                             text=True).stdout.strip()
    finally:
        subprocess.run(["git", "-C", str(root), "worktree", "remove", "--force", str(where)], capture_output=True)


def machine_line(model: Path, seconds: float = 2.0) -> str:
    """The CPU and its measured matmul rates, to print beside every ratio."""
    threads = min(2, os.cpu_count() or 1)
    return (f"cpu: {cpu_info('model name') or 'unknown'}, {os.cpu_count()} cpus, fp32 matmul "
            f"{matmul_gflops(torch.float32, threads=threads, seconds=seconds):.1f} GFLOP/s, u8 x s8 "
            f"{int8_matmul_gops(threads=threads, seconds=seconds):.1f} GOP/s ({threads} threads); model {model}")


def test_split(run: Path) -> tuple[list[str], list[list[str]]]:
    rows = pq.read_table(run / "data" / "test.parquet").to_pylist()
    return [r["src"] for r in rows], [r["refs"] for r in rows]


class CountingEngine:
    """Wraps an engine; counts decoder-step rows and row x source positions (for FLOPs)."""

    def __init__(self, engine):
        self.engine, self.rows, self.row_src, self.seconds = engine, 0, 0, 0.0

    def encode(self, src_ids, src_lens):
        return self.engine.encode(src_ids, src_lens)

    def step(self, prev, state):
        self.rows += len(prev)
        self.row_src += len(prev) * int(state["mask"].shape[1])
        t0 = time.perf_counter()
        out = self.engine.step(prev, state)
        self.seconds += time.perf_counter() - t0
        return out


def timed_translate(translator: Translator, texts: list[str], batch: int) -> tuple[float, list]:
    """Sentences/s translating `texts` in groups of `batch` (each group sorted and decoded together)."""
    out = []
    t0 = time.perf_counter()
    for i in range(0, len(texts), batch):
        out += translator.translate(texts[i : i + batch])
    return len(texts) / (time.perf_counter() - t0), out


def decode_flops_per_row(cfg, mean_src: float) -> float:
    """Multiply-adds x 2 of one decoder step for one row (model.py's `decode_step`), from the shapes."""
    E, H, V, L = cfg.emb_dim, cfg.hidden_size, cfg.tgt_vocab_size, cfg.decoder_layers
    lstm = 2 * ((E + H) + H) * 4 * H + (L - 1) * 2 * (H + H) * 4 * H
    attention = 2 * H * H + 4 * mean_src * H + 2 * 2 * H * H  # query, scores + context, attentional vector
    return lstm + attention + 2 * H * V


def encoder_flops_per_token(cfg) -> float:
    E, H, L = cfg.emb_dim, cfg.hidden_size, cfg.encoder_layers
    first = 2 * 2 * ((E + H // 2) * 4 * (H // 2))  # two directions, input + recurrent
    return first + (L - 1) * 2 * 2 * ((H + H // 2) * 4 * (H // 2))


@functools.lru_cache
def matmul_gflops(dtype: torch.dtype, n: int = 1024, threads: int = 2, seconds: float = 2.0) -> float:
    """PyTorch's n x n matrix product rate on the CPU, timed over `seconds` (measured once per process and settings)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def cpu_info(field: str) -> str:
    """One field of /proc/cpuinfo's first processor ("model name", "flags"); "" where there is none."""
    try:
        return next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith(field)).split(":", 1)[1].strip()
    except (OSError, StopIteration):
        return ""


def cpu_features() -> str:
    """The instruction sets that decide which kernels onnxruntime and PyTorch can use, from /proc/cpuinfo."""
    flags = set(cpu_info("flags").split())
    if not flags:
        return "unknown (no /proc/cpuinfo flags)"
    names = {"avx2": "AVX2", "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx_vnni": "AVX-VNNI",
             "avx512_bf16": "AVX-512 BF16", "amx_bf16": "AMX-BF16", "amx_int8": "AMX-INT8"}
    found = [label for flag, label in names.items() if flag in flags]
    return ", ".join(found) or "none of AVX2, AVX-512, VNNI, AMX"


@functools.lru_cache
def int8_matmul_gops(n: int = 1024, threads: int = 2, seconds: float = 2.0) -> float:
    """onnxruntime's uint8 x int8 matmul rate (MatMulInteger, the kernel under dynamic quantization), over `seconds`."""
    import onnxruntime as ort
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["c"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n]),
                               helper.make_tensor_value_info("b", TensorProto.INT8, [n, n])],
                              [helper.make_tensor_value_info("c", TensorProto.INT32, [n, n])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)  # one every onnxruntime reads
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    feeds = {"a": rng.integers(0, 255, (n, n), dtype=np.uint8), "b": rng.integers(-127, 127, (n, n), dtype=np.int8)}
    for _ in range(3):
        session.run(None, feeds)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        session.run(None, feeds)
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


class PeakRSS:
    """Peak of the summed resident memory of a process and all its descendants (Ray workers included)."""

    def __init__(self, pid: int):
        import psutil

        self.proc, self.peak, self._stop = psutil.Process(pid), 0, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                total = 0
                for p in procs:
                    try:
                        total += p.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak = max(self.peak, total)
            except psutil.Error:
                pass
            self._stop.wait(0.25)

    def stop(self) -> int:
        self._stop.set()
        self.thread.join()
        return self.peak


def timed_process(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run `cmd` to the end: wall seconds from start to exit, and the peak RSS of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd)
    rss = PeakRSS(proc.pid)
    log = proc.communicate()[0]
    wall, peak = time.perf_counter() - t0, rss.stop()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} exited {proc.returncode}:\n{log[-3000:]}")
    return {"process_wall_s": wall, "peak_rss_bytes": peak}


def run_translate_cli(input_path: Path, output: Path, model: Path, extra: list[str], env: dict | None = None,
                      cwd: Path | None = None) -> dict:
    """`s2s-job translate` in a subprocess (`env`, `cwd`: e.g. another checkout's s2s first on the path);
    its _run.json plus wall time and peak RSS of its process tree."""
    cmd = [S2S_JOB, "translate", str(input_path), "--text-column", "src", "--output", str(output), "--model", str(model),
           "--rows-per-shard", str(ROWS_PER_SHARD), "--overwrite", *extra]
    return {**timed_process(cmd, env, cwd), **json.loads((output / "_run.json").read_text())}


def repeated_parquet(texts: list[str], n: int, path: Path) -> Path:
    reps = -(-n // len(texts))
    pq.write_table(pa.table({"src": (texts * reps)[:n]}), path, compression="zstd")
    return path


def run_bare_loop(input_path: Path, output: Path, model: Path, beam: int, threads: int) -> dict:
    """benchmarks/bare_loop.py (the same translator, no Ray) in its own process, timed like `run_translate_cli`."""
    cmd = [sys.executable, str(Path(__file__).with_name("bare_loop.py")), str(input_path), str(output), "--model", str(model),
           "--beam-size", str(beam), "--threads", str(threads), "--rows-per-shard", str(ROWS_PER_SHARD)]
    return timed_process(cmd)


# ---------------------------------------------------------------- the sections


def bench_decode(a: argparse.Namespace, texts: list[str], refs: list[list[str]]) -> None:
    torch.set_num_threads(a.threads)
    model, _ = load_model(a.checkpoint or checkpoint_file(a.run, "best"))
    model_dir = load_model_dir(a.model)
    src_sp, tgt_sp = load_sentencepiece(a.model / "src.model"), load_sentencepiece(a.model / "tgt.model")
    engines = {"torch": TorchEngine(model)}
    default = model_dir.manifest.get("default_cpu_variant", "fp32")
    for variant in model_dir.manifest["variants"]:  # fp32, int8; each also with the vocabulary map if exported
        engines[f"ort {variant}"] = OrtEngine(model_dir, variant, "cpu", a.threads)
        if "vmap" in model_dir.manifest:
            engines[f"ort {variant}+vmap"] = OrtEngine(model_dir, variant, "cpu", a.threads, use_vmap=True)
    sample = texts[: a.sentences]
    speed: dict[tuple[str, int, int], float] = {}
    for beam in (1, 4):
        decode = DecodeConfig(beam_size=beam, max_batch_tokens=1 << 20)
        for batch in (1, 64):
            # Batch 64 (the goal rows) is measured in alternated passes, median kept: this VM's speed drifts 10-20%
            # within minutes, and one pass each once moved the fp32 ratio from 2.0x to 2.7x between runs.
            passes = a.decode_passes if batch == 64 else 1
            runs: dict[str, list[float]] = {name: [] for name in engines}
            for _ in range(passes):
                for name, engine in engines.items():
                    tr = Translator(engine, src_sp, tgt_sp, decode)
                    timed_translate(tr, sample[:8], batch)  # warm-up: first-run allocations and thread pools
                    runs[name].append(timed_translate(tr, sample, batch)[0])
            for name in engines:
                speed[(name, beam, batch)] = float(np.median(runs[name]))
            what = f"{'greedy' if beam == 1 else f'beam {beam}'}, batch {batch}" + (f" (median of {passes} alternated)" if passes > 1 else "")
            for name in engines:
                if name != "torch":
                    # translate's default decode is beam 4 with the CPU default variant (int8 where it held valid BLEU)
                    goal = {(1, "ort fp32"): ">= 2.4x", (4, f"ort {default}"): ">= 4x"}.get((beam, name), "") if batch == 64 else ""
                    record("decode", f"{name} vs torch eager, {what}", speed[(name, beam, batch)], speed[("torch", beam, batch)],
                           "sent/s", goal)
            if batch == 64:  # onnxruntime's default, pool threads spinning between runs, against ours (`OrtEngine(spin=...)`)
                for variant in model_dir.manifest["variants"]:
                    spinning = Translator(OrtEngine(model_dir, variant, "cpu", a.threads, spin=True), src_sp, tgt_sp, decode)
                    timed_translate(spinning, sample[:8], batch)
                    record("decode", f"ort {variant}, pool threads idle vs spinning (onnxruntime's default), {what}",
                           speed[(f"ort {variant}", beam, batch)], timed_translate(spinning, sample, batch)[0], "sent/s")
    if "vmap" in model_dir.manifest:
        from s2s.export.vmap import shortlist

        vm = engines["ort fp32+vmap"].vmap
        sizes = [len(shortlist(vm, np.concatenate([src_sp.encode(t) for t in sample[i : i + 64]]), (1, 3))) for i in range(0, len(sample), 64)]
        record("decode", "vocabulary-map shortlist, batches of 64: mean size vs the vocabulary", float(np.mean(sizes)),
               model.cfg.tgt_vocab_size, "subwords")
    if "int8" in SELECTED:
        bleu = {}
        for name in engines:
            tr = Translator(engines[name], src_sp, tgt_sp, DecodeConfig(beam_size=1))
            bleu[name] = corpus_scores([t.translation or "" for t in tr.translate(texts)], refs)["bleu"]
        for name in engines:
            if name not in ("torch", "ort fp32"):
                for beam in (1, 4):
                    record("int8", f"{name} vs ort fp32 speed, {'greedy' if beam == 1 else 'beam 4'} batch 64", speed[(name, beam, 64)],
                           speed[("ort fp32", beam, 64)], "sent/s")
        for name in engines:
            if name != "ort fp32":
                record("int8", f"test BLEU greedy, {name} vs ort fp32 (delta {bleu[name] - bleu['ort fp32']:+.2f})", bleu[name],
                       bleu["ort fp32"], "BLEU", "loss <= 0.5" if "int8" in name else "")
    if "limit" in SELECTED:
        cfg = model.cfg
        # the decoder step's arithmetic rate, as a share of the matmul rate of its own precision (and of bf16's,
        # which neither engine uses: what the CPU's bf16 units would leave on the table)
        for name in [n for n in ("torch", "ort fp32", "ort int8") if n in engines]:
            counting = CountingEngine(engines[name])
            tr = Translator(counting, src_sp, tgt_sp, DecodeConfig(beam_size=1, max_batch_tokens=1 << 20))
            for i in range(0, len(sample), 64):
                tr.translate(sample[i : i + 64])
            seconds = counting.seconds  # inside the step calls only
            mean_src = counting.row_src / max(counting.rows, 1)
            per_row = decode_flops_per_row(cfg, mean_src)
            if name == "torch":
                record("limit", f"decoder step FLOPs per generated token (mean padded source {mean_src:.1f})", per_row / 1e6, None, "MFLOP")
            rate = counting.rows * per_row / seconds / 1e9
            for precision in ("int8" if name == "ort int8" else "fp32", "bf16"):
                if precision in LIMIT:
                    record("limit", f"decoder step G(FL)OP/s, {name} greedy b64, vs {precision} matmul", rate, LIMIT[precision], "GFLOP/s")


def bench_pipeline(a: argparse.Namespace, texts: list[str], work: Path) -> None:
    n = a.pipeline_rows
    src = repeated_parquet(texts, n, work / f"pipeline-{n}.parquet")
    extra = ["--beam-size", str(a.pipeline_beam)]
    # Alternated passes, median kept: on this VM the same 100k-row bare loop took 43-59 s within one hour.
    clis, bares = [], []
    for _ in range(a.pipeline_passes):
        clis.append(run_translate_cli(src, work / "out-pipeline", a.model, extra))
        bares.append(run_bare_loop(src, work / "out-bare", a.model, a.pipeline_beam, a.threads))
        shutil.rmtree(work / "out-bare")
    record_pipeline(n, a.pipeline_beam, median_run(clis), median_run(bares), a.pipeline_passes)
    for i, (cli, bare) in enumerate(zip(clis, bares)):
        record("pipeline", f"  pass {i + 1}: s2s-job translate vs bare loop, {n:,} rows, wall", cli["process_wall_s"], bare["process_wall_s"], "s")


def median_run(runs: list[dict]) -> dict:
    """The run with the median wall time (the lower middle for an even count): one real run, its phases intact."""
    return sorted(runs, key=lambda r: r["process_wall_s"])[(len(runs) - 1) // 2]


def record_pipeline(n: int, beam: int, cli: dict, bare: dict, passes: int = 1) -> None:
    how = f" (median of {passes} alternated)" if passes > 1 else ""
    record("pipeline", f"s2s-job translate vs bare loop, {n:,} rows, beam {beam}, process wall{how}", n / cli["process_wall_s"],
           n / bare["process_wall_s"], "rows/s", "ratio >= 0.9")
    record("pipeline", f"  the same, Ray Data's execution only (no Ray start/stop), {n:,} rows", n / cli["phase_seconds"]["translate_s"],
           n / bare["process_wall_s"], "rows/s")
    fixed = cli["process_wall_s"] - cli["phase_seconds"]["translate_s"]
    record("pipeline", f"  translate's seconds outside Ray Data's execution (start, Ray start/stop, summary), {n:,} rows", fixed,
           cli["process_wall_s"], "s")
    for phase, seconds in cli["phase_seconds"].items():  # _run.json's split of them
        if phase != "translate_s":
            record("pipeline", f"    of which {phase.removesuffix('_s').replace('_', ' ')}", seconds, None, "s")
    record("pipeline", "    of which the rest (interpreter, imports, summary, exit)", cli["process_wall_s"] - sum(cli["phase_seconds"].values()),
           None, "s")


def bench_actors(a: argparse.Namespace, texts: list[str], work: Path) -> None:
    """Sentences/s per actor of `s2s-job translate` with 1 and with 2 CPU actors (defaults otherwise), end to end
    with Ray's start-up included, so a floor: for sizing a cluster (docs/cluster.md)."""
    for beam, n in ((1, a.pipeline_rows // 2), (4, a.pipeline_rows // 20)):
        if beam not in a.actor_beams:
            continue
        src = repeated_parquet(texts, n, work / f"actors-{n}.parquet")
        for actors in a.actor_counts:
            run = run_translate_cli(src, work / "out-actors", a.model, ["--beam-size", str(beam), "--actors", str(actors)])
            record("actors", f"translate {n:,} rows beam {beam}, {actors} CPU actor(s): per actor",
                   n / run["process_wall_s"] / actors, None, "sent/s")


def bench_training(a: argparse.Namespace, work: Path) -> None:
    """The same `fit` on the same batches: called directly (bare) and as a 1-worker Ray Train job."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from s2s.cluster import init_ray
    from s2s.progress import Console, relayed
    from s2s.config import TrainConfig
    from s2s.train import fit, train_loop_per_worker, worker_cpus

    speeds: dict[str, list[float]] = {"bare": [], "ray": []}
    for i, mode in enumerate(("bare", "ray") * a.train_rounds):  # alternated: this machine's speed drifts 10-20% over minutes
        run = work / f"train-{i}-{mode}"
        run.mkdir(parents=True)
        for name in ("config.json", "src.model", "tgt.model"):
            shutil.copy(a.run / name, run / name)
        shutil.copytree(a.run / "data", run / "data")
        # an interval every 10 steps (fewer on a smoke run's few steps): the first, which warms up, is left out
        cfg = TrainConfig(run_dir=str(run), max_steps=a.train_steps, log_every=min(10, max(1, a.train_steps // 4)), max_minutes=0,
                          warmup_steps=10)
        if mode == "bare":
            torch.set_num_threads(a.threads)

            def save(metrics: dict, checkpoint: dict | None, path: Path = run / "checkpoint.pt") -> None:
                if checkpoint is not None:  # written as Ray Train's worker writes it, so that both pay the same
                    torch.save(checkpoint, path)

            fit(cfg, save, say=lambda line: None, show=lambda line: None)
        else:
            init_ray(dashboard=True)  # the local cluster `s2s-job train` starts
            # the reservation `s2s-job train` makes for one worker with these threads (it once reserved 1 CPU for
            # 2 threads here, which Ray answers with a lower CPU share for the worker than the product's)
            per_worker, threads = worker_cpus(dataclasses.replace(cfg, workers=1, cpus=a.threads), [float(a.threads)], False)
            try:
                with relayed(Console(every=0)) as relay:
                    result = TorchTrainer(train_loop_per_worker, train_loop_config={"cfg": cfg, "threads": threads, "relay": relay},
                                          torch_config=TorchConfig(backend="gloo"),
                                          scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": per_worker}),
                                          run_config=RunConfig(storage_path=str(run / "ray"), name="bench")).fit()
                if result.error:
                    raise result.error
            finally:
                ray.shutdown()
        speeds[mode] += [x["tokens_per_s"] for x in read_metrics(run)[0]][1:]  # the first interval warms up
    results = {mode: float(np.median(v)) for mode, v in speeds.items()}
    record("training", f"Ray Train 1 worker vs bare loop, {a.train_rounds}x{a.train_steps} steps alternated (median)", results["ray"],
           results["bare"], "tok/s", "ratio >= 0.95")
    model_cfg = json.loads((a.run / "config.json").read_text())["model"]
    from s2s.config import ModelConfig

    cfg = ModelConfig(**model_cfg)
    src_l, tgt_l = train_lengths(a.run)
    per_tgt = 3 * (decode_flops_per_row(cfg, src_l.mean()) + encoder_flops_per_token(cfg) * src_l.sum() / tgt_l.sum())
    record("limit", "training FLOPs per target token (3x forward)", per_tgt / 1e6, None, "MFLOP")
    for dtype in ("bf16", "fp32"):
        if dtype in LIMIT:
            record("limit", f"training GFLOP/s (bare loop, bf16 autocast) vs {dtype} matmul", results["bare"] * per_tgt / 1e9, LIMIT[dtype],
                   "GFLOP/s")


def train_lengths(run: Path) -> tuple[np.ndarray, np.ndarray]:
    """Source and target lengths (subwords, specials included) of every training pair."""
    t = pq.read_table(run / "data" / "train.parquet")
    return (np.array([len(x) for x in t.column("src_ids").to_pylist()]), np.array([len(x) for x in t.column("tgt_ids").to_pylist()]))


def bench_scale(a: argparse.Namespace, texts: list[str], work: Path) -> None:
    per_row, per_row_data = {}, {}
    for n in a.scale:
        src = repeated_parquet(texts, n, work / f"scale-{n}.parquet")
        run = run_translate_cli(src, work / f"out-scale-{n}", a.model, ["--beam-size", "1"])
        per_row[n] = run["process_wall_s"] / n
        per_row_data[n] = run["phase_seconds"]["translate_s"] / n
        record("scale", f"{n:,} rows greedy: milliseconds per row", per_row[n] * 1e3, None, "ms/row")
        record("scale", f"{n:,} rows greedy: milliseconds per row in Ray Data's execution (Ray start/stop excluded)",
               per_row_data[n] * 1e3, None, "ms/row")
        record("scale", f"{n:,} rows: peak RSS of the process tree", run["peak_rss_bytes"] / 2**20, None, "MiB")
        if n == max(a.scale) and a.scale_bare:  # the pipeline ratio again where Ray's fixed start-up is spread thin
            record_pipeline(n, 1, run, run_bare_loop(src, work / "out-bare-scale", a.model, 1, a.threads))
            shutil.rmtree(work / "out-bare-scale")
        (work / f"scale-{n}.parquet").unlink()
        shutil.rmtree(work / f"out-scale-{n}")
    sizes = sorted(per_row)
    if len(sizes) > 1:
        record("scale", f"seconds per row, {sizes[-1]:,} vs {sizes[0]:,} rows", per_row[sizes[-1]], per_row[sizes[0]], "s/row",
               "within 1.2x")
        record("scale", f"seconds per row in Ray Data's execution, {sizes[-1]:,} vs {sizes[0]:,} rows", per_row_data[sizes[-1]],
               per_row_data[sizes[0]], "s/row", "within 1.2x")
        # The whole-command figures above fall with size because start-up (Ray, actors, model load) is paid
        # once; the cost of each further row is the difference between two sizes over the rows added.
        marginal = {(n1, n2): (per_row[n2] * n2 - per_row[n1] * n1) / (n2 - n1) for n1, n2 in zip(sizes, sizes[1:])}
        for (n1, n2), sec in marginal.items():
            record("scale", f"seconds per added row, {n1:,} -> {n2:,} rows (whole command)", sec * 1e3, None, "ms/row")
        if len(marginal) > 1:
            first, last = marginal[(sizes[0], sizes[1])], marginal[(sizes[-2], sizes[-1])]
            record("scale", f"seconds per added row, {sizes[-2]:,} -> {sizes[-1]:,} vs {sizes[0]:,} -> {sizes[1]:,}", last, first, "s/row",
                   "within 1.2x")


def bench_padding(a: argparse.Namespace, texts: list[str]) -> None:
    src_l, tgt_l = train_lengths(a.run)
    sorted_batches = token_batches(src_l, tgt_l, 6000, seed=0)
    rng = np.random.default_rng(0)
    shuffled = rng.permutation(len(src_l))
    rows_per = int(np.mean([len(b) for b in sorted_batches]))
    random_batches = [shuffled[i : i + rows_per] for i in range(0, len(shuffled), rows_per)]

    def pad_share(batches, lens) -> float:
        real = sum(int(lens[b].sum()) for b in batches)
        computed = sum(int(lens[b].max()) * len(b) for b in batches)
        return 1 - real / computed

    for side, lens in (("source", src_l), ("target", tgt_l)):
        record("padding", f"train {side} padding share: random batches vs bucketed",
               100 * pad_share(random_batches, lens), 100 * pad_share(sorted_batches, lens), "% padding")
    sp = load_sentencepiece(a.model / "src.model")
    lens = np.array([len(sp.encode(x)) + 1 for x in texts])
    in_order = [np.arange(i, min(i + 64, len(lens))) for i in range(0, len(lens), 64)]
    order = np.argsort(lens, kind="stable")
    by_length = [order[i : i + 64] for i in range(0, len(lens), 64)]
    record("padding", "decode source padding share, 64 rows: input order vs sorted",
           100 * pad_share(in_order, lens), 100 * pad_share(by_length, lens), "% padding")


LIMIT: dict[str, float] = {}
SELECTED: set[str] = set()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=Path("models/eng-fra"), help="exported model directory")
    ap.add_argument("--run", type=Path, default=Path("runs/eng-fra"), help="its training run (checkpoint, test split)")
    ap.add_argument("--checkpoint", type=Path, help="a checkpoint.pt for the PyTorch rows instead of the run's best "
                    "(where Ray, which reads the run's checkpoints, is not installed)")
    ap.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated sections of {SECTIONS}")
    ap.add_argument("--threads", type=int, default=usable_cpus(), help="threads for both engines (default: the cores this process may use)")
    ap.add_argument("--sentences", type=int, default=512, help="test sentences for the decode speed rows")
    ap.add_argument("--pipeline-rows", type=int, default=100000)
    ap.add_argument("--pipeline-beam", type=int, default=1)
    ap.add_argument("--pipeline-passes", type=int, default=3, help="alternated translate/bare-loop passes at --pipeline-rows (median kept)")
    ap.add_argument("--decode-passes", type=int, default=3, help="alternated passes per engine at batch 64 (median kept)")
    ap.add_argument("--train-steps", type=int, default=60)
    ap.add_argument("--train-rounds", type=int, default=2, help="bare/Ray Train runs, alternated")
    ap.add_argument("--actor-beams", type=lambda v: [int(x) for x in v.split(",")], default=[1, 4],
                    help="beam sizes of the actors section (1: pipeline-rows/2 rows, 4: pipeline-rows/20)")
    ap.add_argument("--actor-counts", type=lambda v: [int(x) for x in v.split(",")], default=[1, 2],
                    help="actor pool sizes for the actors section, comma-separated")
    ap.add_argument("--scale", default="10000,100000,1000000", help="row counts for the scale section")
    ap.add_argument("--no-scale-bare", dest="scale_bare", action="store_false",
                    help="skip the bare loop beside the largest scale run (the pipeline ratio at that size; ~8 min at 1M rows)")
    ap.add_argument("--json", type=Path, help="write every figure here too")
    ap.add_argument("--matmul-seconds", type=float, default=2.0, help=MATMUL_SECONDS_HELP)
    ap.add_argument("--markdown", type=Path, help="and the table as Markdown (for docs/performance.md)")
    a = ap.parse_args()
    a.scale = [int(x) for x in a.scale.split(",") if x]
    SELECTED.update(s for s in a.only.split(",") if s)
    if SELECTED - set(SECTIONS):
        sys.exit(f"unknown sections {sorted(SELECTED - set(SECTIONS))}; choose from {SECTIONS}")
    import onnxruntime as ort

    machine = {"cpus": os.cpu_count(), "cpus_usable": usable_cpus(), "processor": platform.processor() or platform.machine(), "cpu_model": cpu_info("model name"),
               "cpu_features": cpu_features(),
               "python": platform.python_version(),
               "torch": torch.__version__, "onnxruntime": ort.__version__, "threads": a.threads,
               "date": time.strftime("%Y-%m-%d %H:%M")}
    print(f"machine: {machine}\n  {'section':<9} {'what':<72} {'a':>10} {'b':>10} {'unit':<12} {'a/b':>7}  goal", flush=True)
    texts, refs = test_split(a.run)
    if "limit" in SELECTED:
        LIMIT["fp32"] = matmul_gflops(torch.float32, threads=a.threads, seconds=a.matmul_seconds)
        record("limit", f"measured matmul rate, fp32 1024x1024, {a.threads} threads", LIMIT["fp32"], None, "GFLOP/s")
        if torch.ops.mkldnn._is_mkldnn_bf16_supported():
            LIMIT["bf16"] = matmul_gflops(torch.bfloat16, threads=a.threads, seconds=a.matmul_seconds)
            record("limit", f"measured matmul rate, bf16 1024x1024, {a.threads} threads", LIMIT["bf16"], None, "GFLOP/s")
        LIMIT["int8"] = int8_matmul_gops(threads=a.threads, seconds=a.matmul_seconds)
        record("limit", f"measured matmul rate, onnxruntime u8 x s8 1024x1024, {a.threads} threads", LIMIT["int8"], None, "GOP/s")
    with tempfile.TemporaryDirectory(prefix="s2s-bench-") as tmp:
        work = Path(tmp)
        if SELECTED & {"decode", "int8", "limit"}:
            bench_decode(a, texts, refs)
        if "padding" in SELECTED:
            bench_padding(a, texts)
        if "training" in SELECTED:
            bench_training(a, work)
        if "pipeline" in SELECTED:
            bench_pipeline(a, texts, work)
        if "actors" in SELECTED:
            bench_actors(a, texts, work)
        if "scale" in SELECTED:
            bench_scale(a, texts, work)
    if a.json:
        a.json.write_text(json.dumps({"machine": machine, "command": " ".join(sys.argv), "rows": ROWS}, indent=1))
        print(f"wrote {a.json}")
    if a.markdown:
        lines = ["| section | what | a | b | unit | a/b | goal |", "|---|---|---|---|---|---|---|"]
        for r in ROWS:
            b = "" if r["b"] is None else f"{r['b']:,.4g}"
            ratio = "" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append(f"| {r['section']} | {r['what']} | {r['a']:,.4g} | {b} | {r['unit']} | {ratio} | {r['goal']} |")
        a.markdown.write_text("\n".join(lines) + "\n")
        print(f"wrote {a.markdown}")


if __name__ == "__main__":
    main()
