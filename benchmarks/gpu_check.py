"""The GPU check: the library's training loop, export and engines on one GPU, without Ray, in one table.

    bash benchmarks/gpu_check.sh                 # on a GPU machine (see that script for onnxruntime-gpu)
    python benchmarks/gpu_check.py --tiny        # the same steps on a tiny model, on any CPU (CI runs this)

Steps, each timed, each reported even when it fails (the steps after it go on where they can):

    env        the GPU, CUDA, cuDNN, torch and onnxruntime versions, onnxruntime's providers and whether
               its CUDA provider can load here (s2s.engine.cuda_available)
    matmul     the device's measured bf16 matrix-product rate (the ceiling the decode rows are held against)
    prepare    s2s.train.prepare on the bundled data: split, SentencePiece, tokenized splits
    bf16       which dtypes the LSTMs compute in under the training step's bf16 autocast
    ddp        DistributedDataParallel over the process group (nccl on a GPU, gloo on a CPU), world size 1
    fit        s2s.train.fit for --steps optimizer steps, checkpointing as Ray Train's adapter does
    resume     fit again from the last checkpoint, loaded onto the device, for --resume-steps more
    export     s2s.export.convert.export_run of the best checkpoint, with its parity gates (fp32, int8, fp16)
    check      each engine's reference check at load (s2s/reference.py), on its own provider and variant
    parity     each GPU engine against PyTorch fp32 on the CPU: the export gate's comparison, on the GPU
    decode     sentences/s of PyTorch eager and onnxruntime on the device, greedy and beam 4, by batch size,
               and the decoder step's FLOP rate as a share of the measured bf16 rate

The table at the end is also written as JSON (--out). Nothing here is specific to one machine: a step the
machine cannot run (no GPU, no CUDA provider) is reported as skipped, with the reason.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/run.py: the FLOP counts of a decoder step

from run import CountingEngine, decode_flops_per_row  # noqa: E402

from s2s.data import BUNDLED_DATA, pad_batch  # noqa: E402
from s2s.engine import usable_cpus  # noqa: E402
from s2s.config import ModelConfig  # noqa: E402
from s2s.model import Seq2Seq  # noqa: E402
from s2s.tokenizer import EOS_ID, PAD_ID, load_sentencepiece  # noqa: E402
from s2s.config import TrainConfig  # noqa: E402
from s2s.train import autocast_dtypes, fit, prepare, train_step  # noqa: E402
from s2s.config import DecodeConfig  # noqa: E402
from s2s.translator import TorchEngine, Translator  # noqa: E402

T0 = time.time()
TABLE: list[dict] = []


def row(step: str, what: str, value, note: str = "") -> None:
    """One line of the final table; printed as it is found, so a run cut short still shows what it had."""
    TABLE.append({"step": step, "what": what, "value": value, "note": note})
    shown = f"{value:,.4g}" if isinstance(value, float) else str(value)
    print(f"  [{step}] {what}: {shown}{f'  ({note})' if note else ''}", flush=True)


def run_step(name: str, fn, *args):
    """Run one step; a failure is a row of the table, with its traceback above, not the end of the check."""
    print(f"\n== {name} ({time.time() - T0:.0f}s in)", flush=True)
    t0 = time.time()
    try:
        out = fn(*args)
    except Exception as e:  # noqa: BLE001 - the check reports every failure and goes on
        traceback.print_exc()
        row(name, "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}")
        return None
    row(name, "seconds", round(time.time() - t0, 1))
    return out


# ---------------------------------------------------------------- env, matmul


def step_env(a: argparse.Namespace) -> dict:
    import onnxruntime as ort

    from s2s.engine import cuda_available

    row("env", "python", platform.python_version())
    row("env", "torch", torch.__version__, f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version() if torch.cuda.is_available() else '-'}")
    row("env", "CPU cores usable", usable_cpus(), platform.processor() or platform.machine())
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        row("env", "GPU", p.name, f"compute capability {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB, {p.multi_processor_count} SMs")
    else:
        row("env", "GPU", "none", "torch sees no CUDA device: the GPU rows below are skipped")
    row("env", "onnxruntime", ort.__version__, f"from {Path(ort.__file__).parent}")
    row("env", "onnxruntime providers", ",".join(ort.get_available_providers()))
    ok, why = cuda_available()
    row("env", "onnxruntime CUDA provider loads", ok, why)
    return {"cuda": torch.cuda.is_available(), "ort_cuda": ok, "ort_cuda_why": why}


def step_matmul(device: torch.device) -> float:
    """bf16 matrix products per second on the device (GFLOP/s): 8192^3 on a GPU, 1024^3 on a CPU."""
    n = 8192 if device.type == "cuda" else 1024
    x, y = torch.randn(n, n, device=device, dtype=torch.bfloat16), torch.randn(n, n, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        x @ y
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 1.0 or reps < 5:
        x @ y
        reps += 1
        sync(device)
    rate = 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9
    row("matmul", f"bf16 {n}x{n}x{n} matrix product", round(rate), "GFLOP/s")
    return rate


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------- training


def train_config(a: argparse.Namespace, work: Path) -> TrainConfig:
    if a.tiny:  # 1,500 short pairs and a small model: the same code paths in seconds
        table = pq.read_table(BUNDLED_DATA)
        short = np.flatnonzero([len(s.split()) <= 6 for s in table.column("en").to_pylist()])
        data = work / "pairs.parquet"
        pq.write_table(table.take(pa.array(np.sort(np.random.default_rng(0).choice(short, 1500, replace=False)))), data)
        return TrainConfig(run_dir=str(work / "run"), data=str(data), model=ModelConfig(src_vocab_size=500, tgt_vocab_size=500,
                           emb_dim=32, hidden_size=64), batch_tokens=1500, max_steps=a.steps, max_minutes=0, epochs=100,
                           log_every=10, warmup_steps=10, valid_frac=0.1, test_frac=0.1, checkpoint_minutes=1e6)
    return TrainConfig(run_dir=str(work / "run"), batch_tokens=a.batch_tokens, max_steps=a.steps, max_minutes=0, epochs=100,
                       log_every=50, warmup_steps=100, checkpoint_minutes=1e6)


def step_prepare(cfg: TrainConfig) -> ModelConfig:
    model_cfg = prepare(cfg)
    stats = json.loads((Path(cfg.run_dir) / "config.json").read_text())["data"]
    row("prepare", "training pairs", stats["train_pairs"], f"valid sources {stats['valid_sources']}, test sources {stats['test_sources']}")
    return model_cfg


def init_process_group(device: torch.device) -> str:
    """A one-process group on loopback, as Ray Train makes for each worker: nccl on a GPU, gloo on a CPU."""
    backend = "nccl" if device.type == "cuda" else "gloo"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    return backend


def step_bf16(model_cfg: ModelConfig, device: torch.device, run: Path) -> None:
    """The dtypes the LSTMs compute in under the training step's bf16 autocast: the check every worker makes
    before it trains (s2s.train.autocast_dtypes), which turns loss scaling on where it sees float16."""
    dtypes = autocast_dtypes(Seq2Seq(model_cfg).to(device).train(), device)
    row("bf16", "LSTM output dtypes under autocast(bfloat16)", ",".join(sorted(dtypes)),
        "no float16: no loss scaling needed" if "float16" not in dtypes else "float16: the workers scale the loss (GradScaler)")


def batch_of(run: Path, n: int) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    t = pq.read_table(run / "data" / "train.parquet").slice(0, n)
    src = pad_batch([np.asarray(x) for x in t.column("src_ids").to_pylist()], PAD_ID)
    tgt, _ = pad_batch([np.asarray(x) for x in t.column("tgt_ids").to_pylist()], PAD_ID)
    return src, tgt


def step_ddp(model_cfg: ModelConfig, device: torch.device, run: Path, steps: int) -> None:
    """DistributedDataParallel's gradient all-reduce over the process group, on the training step fit uses."""
    model = Seq2Seq(model_cfg).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index or 0] if device.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    (src, lens), tgt = batch_of(run, 64)
    losses = [train_step(ddp, opt, src.to(device), lens.to(device), tgt.to(device), 0.1, 1.0, bf16=True)[0] for _ in range(steps)]
    row("ddp", f"{dist.get_backend()} world {dist.get_world_size()}: loss on one batch, step 1 -> {steps}",
        f"{losses[0]:.1f} -> {losses[-1]:.1f}", "falls: gradients reach the weights through DDP" if losses[-1] < losses[0] else "DID NOT FALL")


class Checkpoints:
    """What Ray Train's adapter does with `fit`'s checkpoints, in a folder: every one kept, best by score."""

    def __init__(self, folder: Path):
        self.folder, self.paths, self.best, self.best_score = folder, [], None, -2.0
        folder.mkdir(parents=True, exist_ok=True)

    def save(self, metrics: dict, checkpoint: dict | None) -> None:
        if checkpoint is None:
            return
        path = self.folder / f"checkpoint_{metrics['step']:08d}.pt"
        torch.save(checkpoint, path)
        self.paths.append(path)
        if metrics["score"] >= self.best_score:
            self.best, self.best_score = path, metrics["score"]


def train_speed(run: Path, since_step: int = 0) -> float:
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    speeds = [x["tokens_per_s"] for x in lines if x.get("kind") == "train" and x["step"] > since_step]
    return float(np.median(speeds[1:] or speeds)) if speeds else 0.0


def step_fit(cfg: TrainConfig, device: torch.device, ckpts: Checkpoints) -> dict:
    bf16 = device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported()
    result = fit(cfg, ckpts.save, None, 0, 1, device, say=print, show=print)
    row("fit", f"steps (bf16 autocast {'on' if bf16 else 'off'})", result["step"], f"valid BLEU {result['best_bleu']:.2f} (greedy)")
    row("fit", "tokens/s (median of the progress lines)", round(train_speed(Path(cfg.run_dir))))
    return result


def step_resume(cfg: TrainConfig, device: torch.device, ckpts: Checkpoints, extra: int) -> dict:
    last = ckpts.paths[-1]
    restored = torch.load(last, map_location=device, weights_only=False)  # as train_loop_per_worker loads it
    before = restored["state"]["step"]
    result = fit(dataclasses.replace(cfg, max_steps=before + extra), ckpts.save, restored, 0, 1, device, say=print, show=print)
    ok = result["step"] == before + extra
    row("resume", f"from step {before} ({last.name}, loaded onto {device.type})", f"step {result['step']}",
        "continued to the new bound" if ok else f"EXPECTED step {before + extra}")
    kept = torch.load(ckpts.paths[-1], map_location="cpu", weights_only=False)
    row("resume", "checkpoint RNG states kept", ",".join(k for k in ("rng", "cuda_rng") if k in kept),
        f"cpu rng on {kept['rng'].device}" + (f", cuda rng {tuple(kept['cuda_rng'].shape)}" if "cuda_rng" in kept else ""))
    return result


# ---------------------------------------------------------------- export, parity


def step_export(cfg: TrainConfig, ckpts: Checkpoints, model_dir: Path) -> dict:
    from s2s.config import ExportConfig
    from s2s.export.convert import export_run

    manifest = export_run(cfg.run_dir, model_dir, ExportConfig(checkpoint=str(ckpts.best), quantize="int8", vmap=False))
    gate = manifest["parity"]
    row("export", "fp32 gate (onnxruntime CPU vs PyTorch CPU)", "passed" if gate["passed"] else "FAILED",
        f"max |d log-prob| {gate['max_abs_logprob_diff']:.2e} of {gate['gate_tolerance']:.2e}; greedy {gate['greedy']}; "
        f"beam {gate['beam4']}")
    if "int8" in manifest["variants"]:
        g8 = manifest["variants"]["int8"]["parity"]
        row("export", "int8 gate", "passed", f"mean |d log-prob| {g8['mean_abs_logprob_diff']:.3f}, {g8['divergent']} of {g8['outputs']} divergent")
    else:
        row("export", "int8 gate", "left out", "the int8 variant failed its gate")
    if "fp16" in manifest["variants"]:
        g16 = manifest["variants"]["fp16"]["parity"]
        row("export", f"fp16 gate (on {g16['provider']})", "passed", f"mean |d log-prob| {g16['mean_abs_logprob_diff']:.4f}, "
            f"{g16['divergent']} of {g16['outputs']} divergent; GPU default {manifest['default_gpu_variant']}")
    else:
        row("export", "fp16 gate", "left out", "the fp16 variant failed its gate")
    for variant, v in manifest["variants"].items():
        if "valid_bleu" in v:
            row("export", f"valid BLEU, {variant} (greedy, onnxruntime CPU)", v["valid_bleu"])
        else:
            row("export", f"valid BLEU, {variant}", "not scored", "export scores on the CPU provider, which computes fp16 weights in float32")
    return manifest


def engines_on_device(a: argparse.Namespace, model: Seq2Seq, model_dir: Path, env: dict) -> dict:
    """The engines the decode rows compare, on the device: PyTorch eager and onnxruntime fp32 with I/O binding."""
    from s2s.engine import OrtEngine, load_model_dir

    device = torch.device("cuda" if env["cuda"] else "cpu")
    engines = {f"torch {device.type} fp32 eager": TorchEngine(_copy_to(model, device))}
    md = load_model_dir(model_dir)
    if env["ort_cuda"]:
        engines["ort cuda fp32 io-binding"] = OrtEngine(md, "fp32", "cuda", io_binding=True)
        if "fp16" in md.manifest["variants"]:
            engines["ort cuda fp16 io-binding"] = OrtEngine(md, "fp16", "cuda", io_binding=True)
        auto = OrtEngine(md, "auto", "auto")
        row("decode", "what --device auto --variant auto loads here", f"{auto.provider} {auto.variant}")
    elif env["cuda"]:
        row("decode", "onnxruntime CUDA rows", "skipped", env["ort_cuda_why"])
    if not env["cuda"]:  # a CPU-only machine (CI): the same binding code on the CPU provider
        engines["ort cpu fp32 io-binding"] = OrtEngine(md, "fp32", "cpu", threads=usable_cpus(), io_binding=True)
    for name, engine in engines.items():  # each onnxruntime engine decoded the export's reference sentences as it loaded
        if getattr(engine, "checked", None):
            c = engine.checked
            row("check", f"{name}: reference check at load", "passed",
                f"mean |d log-prob| {c['mean_abs_logprob_diff']:.2e}, max {c['max_abs_logprob_diff']:.2e}, "
                f"{c['other_picks']} of {c['steps']} steps another token")
    return engines


def _copy_to(model: Seq2Seq, device: torch.device) -> Seq2Seq:
    copy = Seq2Seq(model.cfg)
    copy.load_state_dict(model.state_dict())
    return copy.to(device).eval()


def step_parity(a: argparse.Namespace, model: Seq2Seq, engines: dict, run: Path) -> None:
    from s2s.config import ExportConfig
    from s2s.export.parity import parity_gate

    src_sp = load_sentencepiece(run / "src.model")
    valid = pq.read_table(run / "data" / "valid.parquet").column("src").to_pylist()[: a.parity_sentences]
    sources = [ids + [EOS_ID] for ids in src_sp.encode(valid)]
    reference = TorchEngine(model)
    for name, engine in engines.items():
        if getattr(engine, "variant", "fp32") == "fp16":  # the export's fp16 gate, now on the GPU's own arithmetic
            x = ExportConfig()
            gate = parity_gate(reference, engine, sources, (1, 37), 4, x.fp16_tolerance, mean_tolerance=x.fp16_mean_tolerance,
                               max_divergent=x.fp16_max_divergent)
        else:
            gate = parity_gate(reference, engine, sources, (1, 37), 4, 1e-4)
        row("parity", f"{name} vs torch cpu fp32, {len(sources)} sentences x batch 1, 37", "passed" if gate["passed"] else "FAILED",
            f"max |d log-prob| {gate['max_abs_logprob_diff']:.2e} of {gate['gate_tolerance']:.2e}; greedy {gate['greedy']}; beam {gate['beam4']}")


# ---------------------------------------------------------------- decode speed


def step_decode(a: argparse.Namespace, model: Seq2Seq, engines: dict, run: Path, rate: float) -> None:
    src_sp, tgt_sp = load_sentencepiece(run / "src.model"), load_sentencepiece(run / "tgt.model")
    texts = pq.read_table(run / "data" / "test.parquet").column("src").to_pylist()
    batches = [int(b) for b in a.batches.split(",")]
    speed: dict[tuple, float] = {}
    for beam in (1, 4):
        for batch in batches:
            n = min(max(2 * batch, a.min_sentences), a.max_sentences)
            sample = (texts * -(-n // len(texts)))[:n]
            for name, engine in engines.items():
                if time.time() - T0 > a.budget_s:
                    row("decode", f"{name}, beam {beam}, batch {batch}", "skipped", f"past the check's {a.budget_s}s budget")
                    continue
                counting = CountingEngine(engine)
                tr = Translator(counting, src_sp, tgt_sp, DecodeConfig(beam_size=beam, max_batch_tokens=1 << 30))
                tr.translate(sample[:batch])  # warm-up at this shape: allocations, cuDNN/onnxruntime kernel choice
                counting.rows, counting.row_src, counting.seconds = 0, 0, 0.0
                t0 = time.perf_counter()
                for i in range(0, n, batch):
                    tr.translate(sample[i : i + batch])
                seconds = time.perf_counter() - t0
                speed[(name, beam, batch)] = n / seconds
                flops = counting.rows * decode_flops_per_row(model.cfg, counting.row_src / max(counting.rows, 1))
                row("decode", f"{name}, {'greedy' if beam == 1 else f'beam {beam}'}, batch {batch}", round(n / seconds, 1),
                    f"sent/s over {n}; step calls {counting.seconds / seconds:.0%} of the time; step FLOP rate "
                    f"{flops / max(counting.seconds, 1e-9) / 1e9:,.0f} GFLOP/s = {flops / max(counting.seconds, 1e-9) / 1e9 / rate:.2%} of bf16 matmul")
    names = list(engines)
    for beam in (1, 4):
        for name in names[1:]:
            pairs = [(b, speed[(name, beam, b)] / speed[(names[0], beam, b)]) for b in batches
                     if (name, beam, b) in speed and (names[0], beam, b) in speed]
            if pairs:
                row("decode", f"{name} / {names[0]}, {'greedy' if beam == 1 else f'beam {beam}'}",
                    " ".join(f"b{b}:{r:.2f}x" for b, r in pairs), "ratio of sentences/s, same weights, same run")
        for name in names:
            best = max(((speed[(name, beam, b)], b) for b in batches if (name, beam, b) in speed), default=None)
            if best:
                row("decode", f"best {name}, {'greedy' if beam == 1 else f'beam {beam}'}", round(best[0], 1), f"sent/s at batch {best[1]}")


# ---------------------------------------------------------------- the check


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="1,500 pairs, a small model, a few steps: any CPU in about a minute")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one under /tmp)")
    ap.add_argument("--out", type=Path, default=None, help="write the table here as gpu_check.json")
    ap.add_argument("--steps", type=int, default=None, help="fit's optimizer steps (default 400; --tiny 20)")
    ap.add_argument("--resume-steps", type=int, default=None, help="steps after the resume (default 100; --tiny 5)")
    ap.add_argument("--batch-tokens", type=int, default=24000, help="tokens per optimizer step (a GPU takes more than the CPU default)")
    ap.add_argument("--parity-sentences", type=int, default=None, help="valid sentences for the GPU parity rows (default 64; --tiny 20)")
    ap.add_argument("--batches", default=None, help="decode batch sizes (default 64,256,1024,4096; --tiny 8,32)")
    ap.add_argument("--min-sentences", type=int, default=None, help="sentences per decode row, at least (default 1024; --tiny 32)")
    ap.add_argument("--max-sentences", type=int, default=8192, help="sentences per decode row, at most")
    ap.add_argument("--budget-s", type=float, default=420, help="decode rows past this many seconds since the start are skipped")
    a = ap.parse_args()
    tiny = a.tiny
    a.steps = a.steps or (20 if tiny else 400)
    a.resume_steps = a.resume_steps or (5 if tiny else 100)
    a.parity_sentences = a.parity_sentences or (20 if tiny else 64)
    a.batches = a.batches or ("8,32" if tiny else "64,256,1024,4096")
    a.min_sentences = a.min_sentences or (32 if tiny else 1024)
    work = a.work or Path(os.environ.get("TMPDIR", "/tmp")) / f"s2s-gpu-check-{os.getpid()}"
    work.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(usable_cpus())

    env = run_step("env", step_env, a) or {"cuda": False, "ort_cuda": False, "ort_cuda_why": "env step failed"}
    device = torch.device("cuda:0" if env["cuda"] else "cpu")
    if env["cuda"]:
        torch.cuda.set_device(device)
    rate = run_step("matmul", step_matmul, device) or float("nan")
    cfg = train_config(a, work)
    model_cfg = run_step("prepare", step_prepare, cfg)
    ckpts = Checkpoints(work / "checkpoints")
    model_dir = work / "model"
    if model_cfg is not None:
        run = Path(cfg.run_dir)
        backend = run_step("process group", init_process_group, device)
        if backend:
            row("process group", "backend", backend, "world size 1, as Ray Train sets it up for one worker")
        run_step("bf16", step_bf16, model_cfg, device, run)
        if backend:
            run_step("ddp", step_ddp, model_cfg, device, run, 5 if tiny else 20)
        if run_step("fit", step_fit, cfg, device, ckpts) and ckpts.paths:
            run_step("resume", step_resume, cfg, device, ckpts, a.resume_steps)
        if dist.is_initialized():
            dist.destroy_process_group()
        if ckpts.best and run_step("export", step_export, cfg, ckpts, model_dir):
            from s2s.evaluate import load_model

            model, _ = load_model(ckpts.best)
            engines = run_step("engines", engines_on_device, a, model, model_dir, env)
            if engines:
                run_step("parity", step_parity, a, model, engines, run)
                run_step("decode", step_decode, a, model, engines, run, rate)

    print(f"\n== the table ({time.time() - T0:.0f}s in all)")
    labels = [f"[{r['step']}] {r['what']}" for r in TABLE]
    width = max(map(len, labels))
    for label, r in zip(labels, TABLE):
        value = f"{r['value']:,.4g}" if isinstance(r["value"], float) else str(r["value"])
        print(f"{label:<{width}}  {value:<24} {r['note']}")
    if a.out:
        a.out.mkdir(parents=True, exist_ok=True)
        (a.out / "gpu_check.json").write_text(json.dumps({"seconds": round(time.time() - T0, 1), "rows": TABLE}, indent=1, default=str))
    failed = [r for r in TABLE if r["what"] == "FAILED"]
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
