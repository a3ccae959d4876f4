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

from s2s.config import ModelConfig, TrainConfig
from s2s.cluster import init_ray, is_head, node_shapes, work_resources
from s2s.data import DataError, load_pairs, pad_batch, split_pairs, token_batches
from s2s.quality import corpus_scores
from s2s.model import Seq2Seq, sequence_loss, shift_target
from s2s.progress import Console, duration, relayed
from s2s.storage import absolute, is_uri, write_local
from s2s.run_dir import CHECKPOINT_FILE, CONFIG_FILE, EXPERIMENT, LOGS, PREPARED, publish, run_config, working_copy
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID, load_sentencepiece, train_sentencepiece
from s2s.config import DecodeConfig
from s2s.translator import TorchEngine, Translator

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- data preparation (driver, once per run)


def prepare(cfg: TrainConfig) -> ModelConfig:
    """Split, train tokenizers, tokenize; write it all under run_dir. Reused as is when resuming.

    A remote run is prepared in a local folder, then uploaded with config.json last."""
    saved = run_config(cfg.run_dir)
    if saved is not None:
        if not cfg.resume:
            raise FileExistsError(f"{cfg.run_dir} already holds a run. Pass --resume to continue it, or choose another run directory.")
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
               tgt: torch.Tensor, label_smoothing: float, clip_norm: float, bf16: bool = False,
               scaler: torch.amp.GradScaler | None = None) -> tuple[float, float, int]:
    """Forward, backward, clip and step on one worker's share of a batch -> (loss sum, nll sum, tokens).

    The loss is divided by the target tokens of the whole batch across workers, times the world size,
    because DDP averages gradients over workers: the result equals one worker on the whole batch.
    `scaler` scales the loss where some layer computes in float16 under the autocast (`autocast_dtypes`).
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
    scaled = loss * world / total.clamp(min=1)
    if scaler is None:
        scaled.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        optimizer.step()
    else:
        scaler.scale(scaled).backward()
        scaler.unscale_(optimizer)  # clip the true gradients
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
        scaler.step(optimizer)  # skipped where a gradient overflowed
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach()), float(nll), n


def autocast_dtypes(model: torch.nn.Module, device: torch.device) -> set[str]:
    """The dtypes the model's recurrent layers compute in under the training step's bf16 autocast, seen on one
    forward of a made-up two-sentence batch on `device` (no dropout, so no random number is drawn).

    Autocast's op lists and the RNN kernels differ by device and library (cuDNN, oneDNN): bfloat16 or float32
    needs nothing more; float16, whose gradients underflow, needs loss scaling, and the worker then turns it on."""
    seen: set[str] = set()

    def hook(module, args, out):
        seen.add(str((out[0] if isinstance(out, tuple) else out).dtype).replace("torch.", ""))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (torch.nn.LSTM, torch.nn.LSTMCell))]
    was_training = model.training
    try:
        model.eval()
        ids = torch.full((2, 3), BOS_ID + 2, dtype=torch.long, device=device)
        with torch.no_grad(), torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            model(ids, torch.tensor([3, 2], device=device), ids)
    finally:
        model.train(was_training)
        for h in hooks:
            h.remove()
    return seen


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


@dataclass
class Worker:
    """What one worker holds through a run. The steps of `fit` below take it and move `state` on.

    `state` is what a checkpoint resumes from (epoch, batch and step reached, best valid BLEU, epochs without
    a better one, seconds trained); the clocks and `progress` are this process's own.
    """

    cfg: TrainConfig
    run: Path  # the run directory's local working copy
    rank: int
    world: int
    device: torch.device
    model: Seq2Seq
    ddp: torch.nn.Module  # the model under DistributedDataParallel when world > 1, else the model itself
    optimizer: torch.optim.Optimizer
    save: Save
    say: Callable[[str], None]
    show: Callable[[str], None]
    state: dict = field(default_factory=lambda: {"epoch": 0, "batch": 0, "step": 0, "best_bleu": -1.0, "bad_epochs": 0,
                                                 "train_seconds": 0.0})
    average: WeightAverage = field(default_factory=WeightAverage)
    bf16: bool = False  # autocast to bfloat16 (TrainConfig.bf16, resolved for this device)
    scaler: torch.amp.GradScaler | None = None  # loss scaling, where a layer computes in float16 under that autocast
    progress: float = 0.0  # how far the run is, 0 to 1 (run_progress): the learning rate follows it
    last_train: dict = field(default_factory=dict)  # the latest progress record, whose loss the epoch record repeats
    t_start: float = 0.0  # time.time() less the seconds trained before a resume
    t_loop: float = 0.0  # when this process started its loop, at step `loop_step`: its pace, for the time left
    loop_step: int = 0
    t_checkpoint: float = 0.0  # when the latest checkpoint was reported


@dataclass(frozen=True)
class TrainData:
    """One worker's view of the training split: token ids and lengths, and the steps they make."""

    src: list[np.ndarray]
    tgt: list[np.ndarray]
    src_lens: np.ndarray
    tgt_lens: np.ndarray
    batch_tokens: int  # this worker's share of a step's tokens
    total_steps: int  # the run's step bound: epochs x steps per epoch, or max_steps if smaller


def fit(cfg: TrainConfig, save: Save, restored: dict | None = None, rank: int = 0, world: int = 1,
        device: torch.device = torch.device("cpu"), say: Callable[[str], None] = print, show: Callable[[str], None] = print) -> dict:
    """The training loop of one worker. With world > 1 the process group must already be initialized.

    `restored` is the checkpoint to continue from. `save(metrics, checkpoint)` is called by every worker
    at the same points (Ray Train's report is collective); `checkpoint` is the state to keep on rank 0
    and None elsewhere. metrics["score"] is the valid BLEU it was validated at, -1 for a mid-epoch one.
    Rank 0 tells people how it goes: `say` a line to keep, `show` the progress line.
    """
    w = build_worker(cfg, save, rank, world, device, say, show)
    data = load_train_data(cfg, w.run, world)
    if restored is not None:
        resume(w, restored)
    start_clocks(w, data)
    w.model.train()
    while w.state["epoch"] < cfg.epochs:
        finished, stopped = train_epoch(w, data)
        validate_and_keep(w, {"kind": "epoch", "complete_epoch": finished, "train_loss": w.last_train.get("loss")},
                          f"validation after epoch {w.state['epoch']}" if finished else f"validation in epoch {w.state['epoch'] + 1} (stopped early)")
        if cfg.patience and w.state["bad_epochs"] >= cfg.patience:
            tell(w, f"early stop: no better valid BLEU for {cfg.patience} epochs")
            break
        if stopped:
            break
    if w.average.count >= 2:
        validate_and_keep(w, {"kind": "average", "snapshots": w.average.count}, f"average of the last {w.average.count} snapshots, at",
                          weights=w.average.weights)
    return {"best_bleu": w.state["best_bleu"], "epoch": w.state["epoch"], "step": w.state["step"],
            "train_seconds": round(w.state["train_seconds"], 1)}


def build_worker(cfg: TrainConfig, save: Save, rank: int, world: int, device: torch.device, say: Callable[[str], None],
                 show: Callable[[str], None]) -> Worker:
    """The model as config.json describes it, seeded alike on every worker, under DDP when there are several."""
    run = working_copy(cfg.run_dir)
    model_cfg = ModelConfig(**json.loads((run / CONFIG_FILE).read_text())["model"])
    torch.manual_seed(cfg.seed)
    model = Seq2Seq(model_cfg).to(device)
    ddp = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    bf16 = cfg.bf16 if cfg.bf16 is not None else (device.type == "cuda" or torch.ops.mkldnn._is_mkldnn_bf16_supported())
    scaler = None
    if bf16 and "float16" in (dtypes := autocast_dtypes(model, device)):
        scaler = torch.amp.GradScaler(device.type)
        if rank == 0:
            say(f"the LSTMs compute in {', '.join(sorted(dtypes))} under bf16 autocast on {device}: loss scaling on")
    return Worker(cfg, run, rank, world, device, model, ddp, optimizer, save, say, show, bf16=bf16, scaler=scaler)


def load_train_data(cfg: TrainConfig, run: Path, world: int) -> TrainData:
    src, tgt = _load_ids(run / "data" / "train.parquet")
    src_lens, tgt_lens = np.array([len(s) for s in src]), np.array([len(t) for t in tgt])
    per_worker_tokens = cfg.batch_tokens // world  # batch_tokens is the whole step, over all workers
    steps_per_epoch = len(token_batches(src_lens, tgt_lens, per_worker_tokens, cfg.seed, world)) // world
    total_steps = cfg.epochs * steps_per_epoch if not cfg.max_steps else min(cfg.max_steps, cfg.epochs * steps_per_epoch)
    return TrainData(src, tgt, src_lens, tgt_lens, per_worker_tokens, total_steps)


def resume(w: Worker, restored: dict) -> None:
    """Continue from a checkpoint: weights, optimizer, the averaged snapshots, the loop's state and the RNGs."""
    w.model.load_state_dict(restored.get("train_model", restored["model"]))  # an averaged checkpoint keeps the trained weights apart
    w.optimizer.load_state_dict(restored["optimizer"])
    w.average = WeightAverage(restored.get("average"))
    w.state = restored["state"]
    # every rank seeds alike, so rank 0's state is everyone's: dropout continues as if never stopped
    restore_rng(restored, w.device)
    tell(w, f"resumed at epoch {w.state['epoch']} batch {w.state['batch']} step {w.state['step']}")


def start_clocks(w: Worker, data: TrainData) -> None:
    now = time.time()
    w.t_start, w.t_loop, w.loop_step, w.t_checkpoint = now - w.state["train_seconds"], now, w.state["step"], now
    w.progress = run_progress(w.cfg, w.state["step"], data.total_steps, w.state["train_seconds"])
    if w.progress < 1 - w.cfg.average_last:
        w.average = WeightAverage()  # resumed with a longer bound: the snapshots taken so far are no longer the last ones


def train_epoch(w: Worker, data: TrainData) -> tuple[bool, bool]:
    """Train from the state's batch to the end of its epoch or to a step or time bound -> (epoch finished, stop the run).

    On the way: a progress line every log_every steps, a snapshot for averaging every AVERAGE_EVERY steps
    near the end, and a mid-epoch checkpoint every checkpoint_minutes.
    """
    cfg, state = w.cfg, w.state
    batches = token_batches(data.src_lens, data.tgt_lens, data.batch_tokens, cfg.seed + state["epoch"], w.world)[w.rank::w.world]
    acc = [0.0, 0.0, 0.0]  # loss, nll, tokens since the last progress line
    t_interval, stop = time.time(), False
    while state["batch"] < len(batches):
        b = batches[state["batch"]]
        s, sl = pad_batch([data.src[i] for i in b], PAD_ID)
        t, _ = pad_batch([data.tgt[i] for i in b], PAD_ID)
        for group in w.optimizer.param_groups:
            group["lr"] = cfg.lr * lr_factor(cfg, state["step"], w.progress)
        loss, nll, n = train_step(w.ddp, w.optimizer, s.to(w.device), sl.to(w.device), t.to(w.device), cfg.label_smoothing, cfg.clip_norm,
                                  w.bf16, w.scaler)
        state["batch"] += 1
        state["step"] += 1
        acc = [acc[0] + loss, acc[1] + nll, acc[2] + n]
        if state["step"] % cfg.log_every == 0:
            log_progress(w, data, acc, time.time() - t_interval)
            acc, t_interval = [0.0, 0.0, 0.0], time.time()
        out_of_time = bool(cfg.max_minutes) and time.time() - w.t_start > cfg.max_minutes * 60
        stop, due, w.progress = _agree([bool(cfg.max_steps and state["step"] >= cfg.max_steps) or out_of_time,
                                        time.time() - w.t_checkpoint > cfg.checkpoint_minutes * 60,
                                        run_progress(cfg, state["step"], data.total_steps, time.time() - w.t_start)], w.device)
        if cfg.average_last and w.progress >= 1 - cfg.average_last and state["step"] % AVERAGE_EVERY == 0:
            w.average.add(w.model)
        if stop:
            break
        if due:
            state["train_seconds"] = time.time() - w.t_start
            checkpoint(w, -1.0)
    finished = state["batch"] >= len(batches)
    if finished:
        state["epoch"] += 1
        state["batch"] = 0
    return finished, bool(stop)


def log_progress(w: Worker, data: TrainData, acc: list[float], interval_s: float) -> None:
    """The progress record (every worker's losses summed) to metrics.jsonl, and rank 0's progress line."""
    loss_sum, nll_sum, toks = _all_sum(acc, w.device)
    elapsed = time.time() - w.t_start
    step = w.state["step"]
    w.last_train = last = {"kind": "train", "epoch": w.state["epoch"] + 1, "step": step, "loss": round(loss_sum / toks, 4),
                           "ppl": round(math.exp(min(nll_sum / toks, 50)), 2), "lr": w.optimizer.param_groups[0]["lr"],
                           "tokens_per_s": round(toks / interval_s), "elapsed_s": round(elapsed, 1)}
    if w.rank == 0:
        # time left: the steps still to do at this pace, or the --max-minutes bound, whichever comes first
        left = (data.total_steps - step) * (time.time() - w.t_loop) / max(1, step - w.loop_step)
        if w.cfg.max_minutes:
            left = min(left, w.cfg.max_minutes * 60 - elapsed)
        w.show(f"epoch {last['epoch']} step {step}/{data.total_steps} loss {last['loss']:.3f} ppl {last['ppl']:.1f} "
               f"lr {last['lr']:.2e} {last['tokens_per_s']} tok/s elapsed {duration(elapsed)}, about {duration(left)} left")
    log_line(w, last)


def validate_and_keep(w: Worker, record: dict, label: str, weights: dict | None = None) -> None:
    """Validate the model (or `weights`: the average), record it, tell, and report a checkpoint scored by valid BLEU.

    An epoch's validation also counts towards early stopping; the average's only competes for the best.
    """
    trained = None
    if weights is not None:
        trained = {k: v.clone() for k, v in w.model.state_dict().items()}
        w.model.load_state_dict(weights)
    metrics = validate(w.model, w.run, w.rank, w.world, w.device, w.cfg.batch_tokens)
    if trained is not None:
        w.model.load_state_dict(trained)
    samples = metrics.pop("samples")
    state = w.state
    state["train_seconds"] = time.time() - w.t_start
    improved = metrics["valid_bleu"] > state["best_bleu"]
    state["best_bleu"] = max(state["best_bleu"], metrics["valid_bleu"])
    if record["kind"] == "epoch":
        state["bad_epochs"] = 0 if improved else state["bad_epochs"] + 1
    record = {"kind": record["kind"], "epoch": state["epoch"], "step": state["step"], **{k: v for k, v in record.items() if k != "kind"},
              "elapsed_s": round(state["train_seconds"], 1), **metrics, "best_bleu": state["best_bleu"]}
    log_line(w, record)
    if w.rank == 0:
        w.say(f"{label} step {state['step']}: loss {metrics['valid_loss']:.3f} ppl {metrics['valid_ppl']:.1f} BLEU {metrics['valid_bleu']:.2f} "
              f"chrF {metrics['valid_chrf']:.2f}{' (best)' if improved else ''}")
        for smp in samples:
            w.say(f"  {smp['src']!r} -> {smp['hyp']!r} (ref {smp['ref']!r})")
        _plot(w.run)
        publish(w.run, w.cfg.run_dir, LOGS)
    checkpoint(w, metrics["valid_bleu"], record, weights)


def checkpoint(w: Worker, score: float, record: dict | None = None, weights: dict | None = None) -> None:
    """Report to Ray (every worker: the report is collective); rank 0 hands over the state to keep.

    `weights`, when given, are what the score is for (the average): they are kept as "model", the trained
    weights as "train_model", which a resumed run continues from."""
    state = w.state
    metrics = {"score": score, "step": state["step"], "epoch": state["epoch"],
               **{k: v for k, v in (record or {}).items() if isinstance(v, (int, float))}}
    kept = None
    if w.rank == 0:
        kept = {"model": weights or w.model.state_dict(), "optimizer": w.optimizer.state_dict(), "average": w.average.state_dict(),
                "state": dict(state), "model_config": dataclasses.asdict(w.model.cfg), "metrics": record, **rng_state(w.device)}
        if weights is not None:
            kept["train_model"] = w.model.state_dict()
    w.save(metrics, kept)
    w.t_checkpoint = time.time()


def log_line(w: Worker, record: dict) -> None:
    if w.rank == 0:
        with open(w.run / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")


def tell(w: Worker, line: str) -> None:
    if w.rank == 0:
        w.say(line)


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
