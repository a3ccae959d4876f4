"""DDP equivalence: two workers on the two halves of a batch make the same step as one worker on all of it."""

import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from s2s.data import pad_batch
from s2s.config import ModelConfig
from s2s.model import Seq2Seq
from s2s.tokenizer import BOS_ID, EOS_ID, PAD_ID
from s2s.train import train_step

CFG = ModelConfig(src_vocab_size=40, tgt_vocab_size=40, emb_dim=16, hidden_size=32, dropout=0.0)


def _batch():
    rng = np.random.default_rng(0)
    # halves with very different target lengths: a per-worker mean would weight them wrongly
    lengths = [3] * 6 + [12] * 6
    src = [np.append(rng.integers(4, 40, n), EOS_ID) for n in lengths]
    tgt = [np.concatenate([[BOS_ID], rng.integers(4, 40, n), [EOS_ID]]) for n in lengths]
    return src, tgt


def _step(model, src, tgt):
    # SGD makes the parameter change equal to the gradient (Adam's first step is ~sign(g) and would hide errors)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    s, sl = pad_batch(src, PAD_ID)
    t, _ = pad_batch(tgt, PAD_ID)
    train_step(model, opt, s, sl, t, label_smoothing=0.1, clip_norm=1e9)


def _worker(rank, world, init_file, out_dir):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)
    model = Seq2Seq(CFG)
    ddp = torch.nn.parallel.DistributedDataParallel(model)
    src, tgt = _batch()
    half = len(src) // 2
    _step(ddp, src[rank * half : (rank + 1) * half], tgt[rank * half : (rank + 1) * half])
    torch.save(model.state_dict(), os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def test_two_workers_on_halves_equal_one_worker_on_the_batch():
    torch.manual_seed(0)
    single = Seq2Seq(CFG)
    before = {k: v.clone() for k, v in single.state_dict().items()}
    _step(single, *_batch())
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        ranks = [torch.load(os.path.join(d, f"rank{r}.pt")) for r in range(2)]
    moved = 0.0
    for name, p in single.state_dict().items():
        for r in ranks:
            torch.testing.assert_close(r[name], p, atol=1e-6, rtol=1e-5, msg=f"{name} differs")
        moved = max(moved, float((p - before[name]).abs().max()))
    assert moved > 1e-3  # the step really changed the parameters
