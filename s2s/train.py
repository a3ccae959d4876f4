"""Training: prepare the data once on the driver, then run `fit` on every Ray Train worker under DDP.

`fit` is plain PyTorch + torch.distributed; `train_loop_per_worker` is the thin Ray adapter that hands it
Ray's checkpoint to resume from and a `save` that reports to Ray, and `train` the driver that owns
ScalingConfig/RunConfig/CheckpointConfig. The run directory (local or s3://) is described in s2s/run_dir.py.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
import torch.distributed as dist

from s2s.cluster import init_ray, is_head, node_shapes, work_resources
from s2s.data import BUNDLED_DATA, DataError, load_pairs, pad_batch, split_pairs, token_batches
from s2s.quality import corpus_scores
from s2s.model import ModelConfig, Seq2Seq, sequence_loss, shift_target
from s2s.progress import Console, duration, relayed
from s2s.storage import absolute, is_uri, write_local
from s2s.run_dir import CHECKPOINT_FILE, CONFIG_FILE, EXPERIMENT, LOGS, PREPARED, publish, run_config, working_copy
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID, load_sentencepiece, train_sentencepiece
from s2s.translator import DecodeConfig, TorchEngine, Translator

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    run_dir: str = "runs/eng-fra"  # everything the run writes goes here: a local folder or s3://bucket/prefix
    data: str = str(BUNDLED_DATA)  # Parquet or TSV (with header) of sentence pairs; Parquet may be on s3://
    source_column: str = "en"
    target_column: str = "fr"
    model: ModelConfig = field(default_factory=ModelConfig)  # vocab sizes are set from the trained tokenizers
    workers: int = 2  # Ray Train workers (DDP processes); may exceed the CPUs: each gets a fraction
    cpus: float = 0  # CPUs the workers share; 0: every CPU of the Ray cluster
    use_gpu: bool | None = None  # None: use GPUs when the Ray cluster has them (nccl), else CPU (gloo)
    valid_frac: float = 0.02  # share of source sentences held out for validation ...
    test_frac: float = 0.02  # ... and for the test split
    max_len: int = 80  # training pairs with more subwords on either side are skipped (counted)
    batch_tokens: int = 6000  # per optimizer step over all workers: rows x longer side, padded
    lr: float = 3e-3  # Adam peak learning rate
    warmup_steps: int = 300  # linear warm-up, then linear decay to lr * min_lr_ratio at the end of the run ...
    min_lr_ratio: float = 0.1  # ... the end being the step bound or the time bound, whichever comes first
    average_last: float = 0.0  # average the weights over this last share of the run (checkpoint averaging); 0: off
    clip_norm: float = 1.0  # gradient clipping (global L2 norm)
    label_smoothing: float = 0.1
    epochs: int = 12  # upper bound on passes over the train split
    max_steps: int = 0  # stop after this many optimizer steps (0: no bound)
    max_minutes: float = 50.0  # stop training after this many minutes of the loop (0: no bound)
    patience: int = 3  # stop after this many epochs without a better valid BLEU (0: never)
    log_every: int = 50  # steps between progress lines
    checkpoint_minutes: float = 10.0  # also checkpoint mid-epoch this often, so a kill loses little
    seed: int = 1234
    bf16: bool | None = None  # autocast to bfloat16; None: on GPU, and on CPUs with native bf16 (2x faster here)
    resume: bool = False  # continue from the run's latest Ray Train checkpoint instead of starting over
    verbose: bool = False  # also Ray Train's own INFO lines (off: its worker-group start-up lines stay in Ray's log files)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1, got {self.workers}")
        if self.batch_tokens < self.max_len * self.workers:
            raise ValueError(f"batch_tokens ({self.batch_tokens}) must hold at least one max_len pair per worker")
        if not 0 < self.valid_frac + self.test_frac < 0.5:
            raise ValueError("valid_frac + test_frac must be between 0 and 0.5")
        for name in ("lr", "max_len", "log_every"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0 <= self.average_last < 1:
            raise ValueError(f"average_last must be in [0, 1), got {self.average_last}")
        if self.epochs < 1 or self.max_steps < 0 or self.max_minutes < 0 or self.patience < 0:
            raise ValueError("epochs must be >= 1; max_steps, max_minutes and patience >= 0")


# ---------------------------------------------------------------- data preparation (driver, once per run)


def prepare(cfg: TrainConfig) -> ModelConfig:
    """Split, train tokenizers, tokenize; write it all under run_dir. Reused as is when resuming.

    A remote run is prepared in a local folder, then uploaded with config.json last."""
    saved = run_config(cfg.run_dir)
    if saved is not None:
        if not cfg.resume:
            raise FileExistsError(f"{cfg.run_dir} already holds a run. Pass --resume to continue it, or choose another --run-dir.")
        return ModelConfig(**saved["model"])
    run = Path(tempfile.mkdtemp(prefix="s2s-prepare-")) if is_uri(cfg.run_dir) else Path(cfg.run_dir)
    t0 = time.time()
    pairs = load_pairs(cfg.data, cfg.source_column, cfg.target_column)
    splits = split_pairs(pairs, cfg.valid_frac, cfg.test_frac)
    if not splits.valid or not splits.test:
        raise DataError(f"{cfg.data}: too few distinct source sentences ({len(set(pairs.src))}) for a valid and a test split")
    src_sp = load_sentencepiece(train_sentencepiece(splits.train.src, run / "src.model", cfg.model.src_vocab_size))
    tgt_sp = load_sentencepiece(train_sentencepiece(splits.train.tgt, run / "tgt.model", cfg.model.tgt_vocab_size))
    src_ids = src_sp.encode(splits.train.src)
    tgt_ids = tgt_sp.encode(splits.train.tgt)
    keep = [i for i in range(len(src_ids)) if len(src_ids[i]) + 1 <= cfg.max_len and len(tgt_ids[i]) + 2 <= cfg.max_len]
    too_long = len(src_ids) - len(keep)
    (run / "data").mkdir(parents=True, exist_ok=True)
    ids = pa.list_(pa.int32())
    pq.write_table(
        pa.table({"src_ids": pa.array([src_ids[i] + [EOS_ID] for i in keep], ids),
                  "tgt_ids": pa.array([[BOS_ID] + tgt_ids[i] + [EOS_ID] for i in keep], ids)}),
        run / "data" / "train.parquet",
    )
    for name, grouped in (("valid", splits.valid), ("test", splits.test)):
        pq.write_table(pa.table({"src": [s for s, _ in grouped], "refs": [r for _, r in grouped]}), run / "data" / f"{name}.parquet")
    valid_src = [s for s, refs in splits.valid for _ in refs]
    valid_tgt = [r for _, refs in splits.valid for r in refs]
    pq.write_table(
        pa.table({"src_ids": pa.array([s + [EOS_ID] for s in src_sp.encode(valid_src)], ids),
                  "tgt_ids": pa.array([[BOS_ID] + t + [EOS_ID] for t in tgt_sp.encode(valid_tgt)], ids)}),
        run / "data" / "valid_pairs.parquet",
    )
    model_cfg = dataclasses.replace(cfg.model, src_vocab_size=src_sp.get_piece_size(), tgt_vocab_size=tgt_sp.get_piece_size())
    stats = {"rows_skipped_empty": pairs.skipped, "train_pairs": len(keep), "train_pairs_skipped_too_long": too_long,
             "valid_sources": len(splits.valid), "test_sources": len(splits.test), "prepare_seconds": round(time.time() - t0, 1)}
    log.info("prepared %s", stats)
    config = {"run_id": os.urandom(8).hex(), "train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "model"},
              "model": dataclasses.asdict(model_cfg), "data": stats}
    write_local(run / CONFIG_FILE, json.dumps(config, indent=2).encode())
    if is_uri(cfg.run_dir):
        publish(run, cfg.run_dir, PREPARED + (CONFIG_FILE,))
        shutil.rmtree(run, ignore_errors=True)
    return model_cfg


# ---------------------------------------------------------------- one optimizer step


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, src: torch.Tensor, src_lens: torch.Tensor,
               tgt: torch.Tensor, label_smoothing: float, clip_norm: float, bf16: bool = False) -> tuple[float, float, int]:
    """Forward, backward, clip and step on one worker's share of a batch -> (loss sum, nll sum, tokens).

    The loss is divided by the target tokens of the whole batch across workers, times the world size,
    because DDP averages gradients over workers: the result equals one worker on the whole batch.
    """
    world = dist.get_world_size() if dist.is_initialized() else 1
    dec_in, gold = shift_target(tgt)
    n_tokens = (gold != PAD_ID).sum()
    total = n_tokens.clone().float()
    if world > 1:
        dist.all_reduce(total)
    with torch.autocast(device_type=src.device.type, dtype=torch.bfloat16, enabled=bf16):
        logits = model(src, src_lens, dec_in)
    loss, nll, n = sequence_loss(logits, gold, PAD_ID, label_smoothing)
    (loss * world / total.clamp(min=1)).backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), float(nll), n


def run_progress(cfg: TrainConfig, step: int, total_steps: int, seconds: float) -> float:
    """How far the run is, 0 to 1: by steps or by the time bound, whichever is further.

    The schedule follows this rather than the step count alone, so that a run stopped by --max-minutes
    (the usual case on CPUs) still ends annealed, however fast the machine is.
    """
    by_steps = step / max(1, total_steps)
    by_time = seconds / (cfg.max_minutes * 60) if cfg.max_minutes else 0.0
    return min(1.0, max(by_steps, by_time))


def lr_factor(cfg: TrainConfig, step: int, progress: float) -> float:
    """Linear warm-up over the first steps, then linear decay to min_lr_ratio as progress goes to 1."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    return max(cfg.min_lr_ratio, 1.0 - (1.0 - cfg.min_lr_ratio) * progress)


class WeightAverage:
    """A running mean of the model's weights: Marian's and fairseq's checkpoint averaging, kept in memory.

    Snapshots taken every few steps over the last `average_last` share of a run are averaged with equal
    weight; the average usually validates better than the last weights.
    """

    def __init__(self, state: dict | None = None):
        self.count = state["count"] if state else 0
        self.weights = state["weights"] if state else {}

    def add(self, model: torch.nn.Module) -> None:
        self.count += 1
        with torch.no_grad():
            for name, value in model.state_dict().items():
                value = value.detach().float()
                if name not in self.weights:
                    self.weights[name] = value.clone()
                else:
                    self.weights[name] += (value - self.weights[name]) / self.count

    def state_dict(self) -> dict:
        return {"count": self.count, "weights": self.weights}


# ---------------------------------------------------------------- the loop every worker runs


def _all_sum(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    return t.tolist()


def _agree(values: list[float], device: torch.device) -> list[float]:
    """Rank 0's values, shared by every worker (a stop, a checkpoint or the learning rate must be the same everywhere)."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, 0)
    return t.tolist()


def _load_ids(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    table = pq.read_table(path)
    return ([np.asarray(x, dtype=np.int64) for x in table.column("src_ids").to_pylist()],
            [np.asarray(x, dtype=np.int64) for x in table.column("tgt_ids").to_pylist()])


def validate(model: Seq2Seq, run: Path, rank: int, world: int, device: torch.device, batch_tokens: int) -> dict:
    """Valid loss/perplexity over all valid pairs and greedy BLEU/chrF against every reference.

    Each worker takes its share; the sums and hypotheses are gathered so every worker sees the same result.
    """
    model.eval()
    src, tgt = _load_ids(run / "data" / "valid_pairs.parquet")
    batches = token_batches(np.array([len(s) for s in src]), np.array([len(t) for t in tgt]), batch_tokens, seed=0)
    loss_sum = nll_sum = n_tok = 0.0
    with torch.inference_mode():
        for b in batches[rank::world]:
            s, sl = pad_batch([src[i] for i in b], PAD_ID)
            t, _ = pad_batch([tgt[i] for i in b], PAD_ID)
            dec_in, gold = shift_target(t.to(device))
            loss, nll, n = sequence_loss(model(s.to(device), sl.to(device), dec_in), gold, PAD_ID)
            loss_sum, nll_sum, n_tok = loss_sum + float(loss), nll_sum + float(nll), n_tok + n
    nll_sum, n_tok = _all_sum([nll_sum, n_tok], device)
    valid = pq.read_table(run / "data" / "valid.parquet").to_pylist()
    mine = list(range(rank, len(valid), world))
    # decode on CPU: the step loop is latency-bound at these sizes
    translator = Translator(TorchEngine(model if device.type == "cpu" else _cpu_copy(model)), load_sentencepiece(run / "src.model"),
                            load_sentencepiece(run / "tgt.model"), DecodeConfig(beam_size=1))
    hyps = [t.translation or "" for t in translator.translate([valid[i]["src"] for i in mine])]
    gathered: list = [None] * world
    if world > 1:
        dist.all_gather_object(gathered, list(zip(mine, hyps)))
    else:
        gathered = [list(zip(mine, hyps))]
    by_index = dict(pair for part in gathered for pair in part)
    all_hyps = [by_index[i] for i in range(len(valid))]
    scores = corpus_scores(all_hyps, [row["refs"] for row in valid])
    model.train()
    avg = nll_sum / max(n_tok, 1)
    return {"valid_loss": round(avg, 4), "valid_ppl": round(math.exp(min(avg, 50)), 2), **{f"valid_{k}": v for k, v in scores.items()},
            "samples": [{"src": valid[i]["src"], "hyp": all_hyps[i], "ref": valid[i]["refs"][0]} for i in range(min(3, len(valid)))]}


def _plot(run: Path) -> None:
    """Redraw curves.png; a picture that fails to draw must not stop a training run."""
    try:
        from s2s.plots import plot_curves

        plot_curves([run], run / "curves.png")
    except Exception as e:  # noqa: BLE001
        log.warning("could not draw %s: %s", run / "curves.png", e)


def _cpu_copy(model: Seq2Seq) -> Seq2Seq:
    copy = Seq2Seq(model.cfg)
    copy.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return copy.eval()


def rng_state(device: torch.device) -> dict:
    """The random generators a checkpoint keeps: the CPU's, and the GPU's where the worker trains on one
    (dropout's masks are drawn there)."""
    kept = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        kept["cuda_rng"] = torch.cuda.get_rng_state(device)
    return kept


def restore_rng(restored: dict, device: torch.device) -> None:
    """Set the generators `rng_state` kept. A checkpoint loaded with map_location=<a GPU> has its RNG states
    moved there too, but torch takes them only as CPU byte tensors."""
    torch.set_rng_state(restored["rng"].cpu())
    if device.type == "cuda" and "cuda_rng" in restored:
        torch.cuda.set_rng_state(restored["cuda_rng"].cpu(), device)


Save = Callable[[dict, dict | None], None]
AVERAGE_EVERY = 10  # steps between the snapshots that checkpoint averaging takes


def fit(cfg: TrainConfig, save: Save, restored: dict | None = None, rank: int = 0, world: int = 1,
        device: torch.device = torch.device("cpu"), say: Callable[[str], None] = print, show: Callable[[str], None] = print) -> dict:
    """The training loop of one worker. With world > 1 the process group must already be initialized.

    `restored` is the checkpoint to continue from. `save(metrics, checkpoint)` is called by every worker
    at the same points (Ray Train's report is collective); `checkpoint` is the state to keep on rank 0
    and None elsewhere. metrics["score"] is the valid BLEU it was validated at, -1 for a mid-epoch one.
    Rank 0 tells people how it goes: `say` a line to keep, `show` the progress line.
    """
    run = working_copy(cfg.run_dir)
    saved = json.loads((run / CONFIG_FILE).read_text())
    model_cfg = ModelConfig(**saved["model"])
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(model_cfg).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    src, tgt = _load_ids(run / "data" / "train.parquet")
    src_lens, tgt_lens = np.array([len(s) for s in src]), np.array([len(t) for t in tgt])
    per_worker_tokens = cfg.batch_tokens // world  # batch_tokens is the whole step, over all workers
    steps_per_epoch = len(token_batches(src_lens, tgt_lens, per_worker_tokens, cfg.seed, world)) // world
    total_steps = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    bf16 = cfg.bf16 if cfg.bf16 is not None else (device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported())

    state = {"epoch": 0, "batch": 0, "step": 0, "best_bleu": -1.0, "bad_epochs": 0, "train_seconds": 0.0}
    average = WeightAverage()
    if restored is not None:
        model.load_state_dict(restored.get("train_model", restored["model"]))  # an averaged checkpoint keeps the trained weights apart
        optimizer.load_state_dict(restored["optimizer"])
        average = WeightAverage(restored.get("average"))
        state = restored["state"]
        # every rank seeds alike, so rank 0's state is everyone's: dropout continues as if never stopped
        restore_rng(restored, device)
        if rank == 0:
            say(f"resumed at epoch {state['epoch']} batch {state['batch']} step {state['step']}")

    def checkpoint(score: float, record: dict | None = None, weights: dict | None = None) -> None:
        """Report to Ray; `weights`, when given, are what the score is for (the average), kept as "model"."""
        metrics = {"score": score, "step": state["step"], "epoch": state["epoch"],
                   **{k: v for k, v in (record or {}).items() if isinstance(v, (int, float))}}
        kept = None
        if rank == 0:
            kept = {"model": weights or model.state_dict(), "optimizer": optimizer.state_dict(), "average": average.state_dict(),
                    "state": dict(state), "model_config": dataclasses.asdict(model_cfg), "metrics": record, **rng_state(device)}
            if weights is not None:
                kept["train_model"] = model.state_dict()
        save(metrics, kept)

    def log_line(record: dict) -> None:
        if rank == 0:
            with open(run / "metrics.jsonl", "a") as f:
                f.write(json.dumps(record) + "\n")

    t_start = time.time() - state["train_seconds"]
    t_loop, started_at = time.time(), state["step"]  # this process's pace, for the time left
    t_ckpt = time.time()
    last: dict = {}
    stop = False
    progress = run_progress(cfg, state["step"], total_steps, state["train_seconds"])
    if progress < 1 - cfg.average_last:
        average = WeightAverage()  # resumed with a longer bound: the snapshots taken so far are no longer the last ones
    model.train()
    while state["epoch"] < cfg.epochs and not stop:
        batches = token_batches(src_lens, tgt_lens, per_worker_tokens, cfg.seed + state["epoch"], world)[rank::world]
        acc = [0.0, 0.0, 0.0]  # loss, nll, tokens since the last progress line
        t_int = time.time()
        while state["batch"] < len(batches):
            b = batches[state["batch"]]
            s, sl = pad_batch([src[i] for i in b], PAD_ID)
            t, _ = pad_batch([tgt[i] for i in b], PAD_ID)
            for group in optimizer.param_groups:
                group["lr"] = cfg.lr * lr_factor(cfg, state["step"], progress)
            loss, nll, n = train_step(ddp, optimizer, s.to(device), sl.to(device), t.to(device), cfg.label_smoothing, cfg.clip_norm, bf16)
            state["batch"] += 1
            state["step"] += 1
            acc = [acc[0] + loss, acc[1] + nll, acc[2] + n]
            if state["step"] % cfg.log_every == 0:
                loss_sum, nll_sum, toks = _all_sum(acc, device)
                elapsed = time.time() - t_start
                last = {"kind": "train", "epoch": state["epoch"] + 1, "step": state["step"], "loss": round(loss_sum / toks, 4),
                        "ppl": round(math.exp(min(nll_sum / toks, 50)), 2), "lr": optimizer.param_groups[0]["lr"],
                        "tokens_per_s": round(toks / (time.time() - t_int)), "elapsed_s": round(elapsed, 1)}
                if rank == 0:
                    # time left: the steps still to do at this pace, or the --max-minutes bound, whichever comes first
                    steps_done_now = state["step"] - started_at
                    left = (total_steps - state["step"]) * (time.time() - t_loop) / max(1, steps_done_now)
                    if cfg.max_minutes:
                        left = min(left, cfg.max_minutes * 60 - elapsed)
                    show(f"epoch {last['epoch']} step {last['step']}/{total_steps} loss {last['loss']:.3f} ppl {last['ppl']:.1f} "
                         f"lr {last['lr']:.2e} {last['tokens_per_s']} tok/s elapsed {duration(elapsed)}, about {duration(left)} left")
                log_line(last)
                acc, t_int = [0.0, 0.0, 0.0], time.time()
            out_of_time = bool(cfg.max_minutes) and time.time() - t_start > cfg.max_minutes * 60
            stop, due, progress = _agree([bool(cfg.max_steps and state["step"] >= cfg.max_steps) or out_of_time,
                                          time.time() - t_ckpt > cfg.checkpoint_minutes * 60,
                                          run_progress(cfg, state["step"], total_steps, time.time() - t_start)], device)
            if cfg.average_last and progress >= 1 - cfg.average_last and state["step"] % AVERAGE_EVERY == 0:
                average.add(model)
            if stop:
                break
            if due:
                state["train_seconds"] = time.time() - t_start
                checkpoint(-1.0)
                t_ckpt = time.time()
        # end of an epoch (or of the run): validate, keep the best, decide on early stopping
        epoch_done = state["batch"] >= len(batches)
        if epoch_done:
            state["epoch"] += 1
            state["batch"] = 0
        metrics = validate(model, run, rank, world, device, cfg.batch_tokens)
        samples = metrics.pop("samples")
        state["train_seconds"] = time.time() - t_start
        improved = metrics["valid_bleu"] > state["best_bleu"]
        if improved:
            state["best_bleu"], state["bad_epochs"] = metrics["valid_bleu"], 0
        else:
            state["bad_epochs"] += 1
        record = {"kind": "epoch", "epoch": state["epoch"], "step": state["step"], "complete_epoch": epoch_done,
                  "elapsed_s": round(state["train_seconds"], 1), "train_loss": last.get("loss"), **metrics, "best_bleu": state["best_bleu"]}
        log_line(record)
        if rank == 0:
            where = f"after epoch {state['epoch']}" if epoch_done else f"in epoch {state['epoch'] + 1} (stopped early)"
            say(f"validation {where} step {state['step']}: loss {metrics['valid_loss']:.3f} "
                f"ppl {metrics['valid_ppl']:.1f} BLEU {metrics['valid_bleu']:.2f} chrF {metrics['valid_chrf']:.2f}"
                f"{' (best)' if improved else ''}")
            for smp in samples:
                say(f"  {smp['src']!r} -> {smp['hyp']!r} (ref {smp['ref']!r})")
            _plot(run)
            publish(run, cfg.run_dir, LOGS)
        checkpoint(metrics["valid_bleu"], record)
        t_ckpt = time.time()
        if cfg.patience and state["bad_epochs"] >= cfg.patience:
            if rank == 0:
                say(f"early stop: no better valid BLEU for {cfg.patience} epochs")
            break
    if average.count >= 2:
        # the average of the last snapshots, validated like an epoch and kept by Ray if it scores best
        trained = {k: v.clone() for k, v in model.state_dict().items()}
        model.load_state_dict(average.weights)
        metrics = validate(model, run, rank, world, device, cfg.batch_tokens)
        metrics.pop("samples")
        model.load_state_dict(trained)
        improved = metrics["valid_bleu"] > state["best_bleu"]
        state["best_bleu"] = max(state["best_bleu"], metrics["valid_bleu"])
        record = {"kind": "average", "epoch": state["epoch"], "step": state["step"], "snapshots": average.count,
                  "elapsed_s": round(time.time() - t_start, 1), **metrics, "best_bleu": state["best_bleu"]}
        log_line(record)
        if rank == 0:
            say(f"average of the last {average.count} snapshots: loss {metrics['valid_loss']:.3f} BLEU {metrics['valid_bleu']:.2f} "
                f"chrF {metrics['valid_chrf']:.2f}{' (best)' if improved else ''}")
            publish(run, cfg.run_dir, LOGS)
        checkpoint(metrics["valid_bleu"], record, weights=average.weights)
    return {"best_bleu": state["best_bleu"], "epoch": state["epoch"], "step": state["step"], "train_seconds": round(state["train_seconds"], 1)}


# ---------------------------------------------------------------- Ray: the adapter and the driver


def train_loop_per_worker(config: dict) -> None:
    import ray
    import ray.train
    import ray.train.torch

    ctx = ray.train.get_context()
    # Ray Train logs "Reporting training result N: TrainingReport(...)" from every rank at each report, and
    # "Checkpoint successfully created" after it; its loggers are named by their file (Ray 2.60, private)
    from ray.train.v2._internal.execution import context, storage

    for module in (context, storage):
        for name in (module.__name__, module.__file__):
            logging.getLogger(name).setLevel(logging.WARNING)
    torch.set_num_threads(config["threads"])
    relay = config["relay"]

    def say(line: str) -> None:
        relay.say.remote(line)

    def show(line: str) -> None:
        relay.show.remote(line)

    say(f"worker {ctx.get_world_rank()} of {ctx.get_world_size()} on node {ray.get_runtime_context().get_node_id()[:12]}, "
        f"{config['threads']} thread(s)")
    device = ray.train.torch.get_device()
    restored = None
    latest = ray.train.get_checkpoint()  # the run's latest checkpoint, when Ray Train restores a run from its storage
    if latest is not None:
        with latest.as_directory() as folder:
            restored = torch.load(Path(folder) / CHECKPOINT_FILE, map_location=device, weights_only=False)

    def save(metrics: dict, checkpoint: dict | None) -> None:
        if checkpoint is None:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="s2s-ckpt-") as folder:
            torch.save(checkpoint, Path(folder) / CHECKPOINT_FILE)
            kind = "avg" if metrics.get("snapshots") else "epoch" if metrics["score"] >= 0 else "mid"
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder),
                             checkpoint_dir_name=f"checkpoint_{metrics['step']:08d}_{kind}")

    fit(config["cfg"], save, restored, ctx.get_world_rank(), ctx.get_world_size(), device, say, show)


def worker_cpus(cfg: TrainConfig, node_cpus: list[float], use_gpu: bool) -> tuple[float, int]:
    """(CPUs each worker reserves, its torch threads): the threads follow the reservation, never the cluster.

    The workers share `cfg.cpus` (default: every CPU of the cluster, nodes the autoscaler may add included),
    a worker never reserving more than the largest node has, so that Ray can place it; a worker thread
    count is what its reservation holds, so that workers placed side by side never oversubscribe a node.
    """
    if use_gpu:
        return 1.0, 1
    cpus = cfg.cpus or sum(node_cpus) or 1.0
    per_worker = min(cpus / cfg.workers, max(node_cpus, default=1.0))
    return per_worker, max(1, int(per_worker + 1e-9))


def use_gpus(cfg: TrainConfig, nodes: list[dict]) -> bool:
    """--gpu/--cpu as given; by default GPUs (nccl) when a node alive, or one the autoscaler can add, has one."""
    return cfg.use_gpu if cfg.use_gpu is not None else any(n.get("GPU", 0) > 0 for n in nodes)


def train(cfg: TrainConfig) -> dict:
    """Prepare the run directory, then train on Ray Train (local Ray, or the cluster at RAY_ADDRESS).

    Ray Train keeps the checkpoints in the run (RunConfig(storage_path=run_dir, name="train")): the
    best by valid BLEU and the latest, which `--resume` continues from; a second run on the same folder
    without --resume is refused by `prepare`.
    """
    from ray.train import CheckpointConfig, LoggingConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    from s2s.storage import filesystem
    from s2s.run_dir import checkpoint_file

    run = absolute(cfg.run_dir).rstrip("/")
    cfg = dataclasses.replace(cfg, run_dir=run)
    model_cfg = prepare(cfg)
    init_ray(dashboard=True)  # Ray Train polls the state API, which the dashboard process serves
    alive, addable = node_shapes()
    use_gpu = use_gpus(cfg, alive + addable)
    # where the head marks itself (ray_cluster.yaml), the workers go to worker nodes only: size them for those
    per_worker, threads = worker_cpus(cfg, [n.get("CPU", 0.0) for n in alive + addable if not is_head(n)], use_gpu)
    print(f"training {model_cfg} on {cfg.workers} worker(s), {'GPU/nccl' if use_gpu else 'CPU/gloo'}, "
          f"{per_worker:g} CPU and {threads} thread(s) each; run dir {run}", flush=True)
    fs, storage = filesystem(run)
    # Ray Train 2.60 sends a worker's print() both to the driver and to its logger, and each line shows twice;
    # Ray Train passes this variable on to its workers
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    with relayed(Console(every=0)) as relay:
        trainer = TorchTrainer(
            train_loop_per_worker,
            train_loop_config={"cfg": cfg, "threads": threads, "relay": relay},
            torch_config=TorchConfig(backend="nccl" if use_gpu else "gloo"),
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=use_gpu, resources_per_worker={"CPU": per_worker, **work_resources(alive)}),
            run_config=RunConfig(storage_path=storage, storage_filesystem=fs, name=EXPERIMENT,
                                 logging_config=LoggingConfig(log_level="INFO" if cfg.verbose else "WARNING"),
                                 # the best by valid BLEU and, always, the latest (Ray never deletes that one)
                                 checkpoint_config=CheckpointConfig(num_to_keep=1, checkpoint_score_attribute="score",
                                                                    checkpoint_score_order="max")),
        )
        result = trainer.fit()
    if result.error:
        raise result.error
    best = torch.load(checkpoint_file(run, "best"), map_location="cpu", weights_only=False)
    return {"run_dir": run, "best": best["metrics"] or {}, "last_metrics": result.metrics}
