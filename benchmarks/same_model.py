"""Does a change leave training and export alone? Train and export at this checkout and at an earlier commit, compare.

    python benchmarks/same_model.py --ref 9739b73                          # the default model, 3,000 pairs, 60 steps
    python benchmarks/same_model.py --ref HEAD --pairs 600 --steps 8 --tiny  # a smoke run

Training is deterministic on one machine (one seed, one thread count, no time bound), so a refactor of
`prepare`, `fit` or `export_run` must give the same model to the last bit. Each side runs in its own
process, in its own tree (the earlier commit in a temporary git worktree, first on PYTHONPATH and the working
directory), on the same pairs: `prepare`, `fit` on one worker without Ray (Ray Train's adapter only hands
`fit` its checkpoint and `save`), then `export_run` of the last checkpoint with an int8 variant.

Printed, side by side: the digests of the tokenizers and the prepared data, every metrics record `fit`
writes (times left out), the trained weights, the exported files, and the parity and valid-BLEU figures of
the manifest. Exit 0 when every one is equal, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# what each side runs, in its own tree: only the public names both sides have (prepare, fit, export_run)
SIDE = r'''
import hashlib, json, sys
from pathlib import Path
import torch
from s2s.model import ModelConfig
from s2s.train import TrainConfig, prepare, fit
from s2s.export.convert import ExportConfig, export_run

work, data, steps, tiny = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
torch.set_num_threads(1)
model = ModelConfig(src_vocab_size=500, tgt_vocab_size=500, emb_dim=32, hidden_size=64) if tiny else ModelConfig(src_vocab_size=2000, tgt_vocab_size=2000)
# small batches, so that the steps cross epochs, stop inside one, and take snapshots for averaging; a
# checkpoint after every step (checkpoint_minutes=0) exercises the mid-epoch path too
cfg = TrainConfig(run_dir=str(work / "run"), data=data, model=model, workers=1, batch_tokens=1000, max_steps=steps, max_minutes=0,
                  epochs=3, average_last=0.3, log_every=max(1, steps // 6), warmup_steps=max(1, steps // 3), valid_frac=0.1,
                  test_frac=0.1, checkpoint_minutes=0)
prepare(cfg)
kept = {}
def save(metrics, checkpoint):
    if checkpoint is not None:
        kept["last"] = checkpoint
fit(cfg, save, say=lambda line: None, show=lambda line: None)
ckpt = work / "checkpoint.pt"
torch.save(kept["last"], ckpt)
manifest = export_run(cfg.run_dir, work / "model", ExportConfig(checkpoint=str(ckpt), quantize="int8", parity_sentences=60))

def digest(data):
    return hashlib.sha256(data).hexdigest()[:16]

run = Path(cfg.run_dir)
weights = hashlib.sha256()
for name, value in kept["last"]["model"].items():
    weights.update(name.encode()); weights.update(value.detach().cpu().contiguous().numpy().tobytes())
drop = {"elapsed_s", "tokens_per_s", "prepare_seconds"}
records = [{k: v for k, v in json.loads(line).items() if k not in drop} for line in (run / "metrics.jsonl").read_text().splitlines()]
figures = {v: {k: x for k, x in m.items() if k.startswith("valid_bleu")} for v, m in manifest["variants"].items()}
print(json.dumps({
    "tokenizers": digest((run / "src.model").read_bytes() + (run / "tgt.model").read_bytes()),
    "prepared data": digest(b"".join((run / "data" / n).read_bytes() for n in ("train.parquet", "valid.parquet", "test.parquet", "valid_pairs.parquet"))),
    "metrics records": records,
    "trained weights": weights.hexdigest()[:16],
    "exported files": manifest["files"],
    "parity (fp32)": {k: manifest["parity"][k] for k in ("max_abs_logprob_diff", "greedy", "passed")},
    "valid BLEU per variant": figures,
    "default CPU variant": manifest["default_cpu_variant"],
}))
'''


def pairs_subset(n: int, path: Path) -> Path:
    """The first n pairs of the bundled data whose English has at most 8 words (short: seconds per step)."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from s2s.data import BUNDLED_DATA

    table = pq.read_table(BUNDLED_DATA)
    short = pc.less_equal(pc.list_value_length(pc.utf8_split_whitespace(table.column("en"))), 8)
    pq.write_table(table.filter(short).slice(0, n), path)
    return path


def run_side(tree: Path, work: Path, data: Path, steps: int, tiny: bool) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(tree), os.environ.get("PYTHONPATH")) if p)}
    work.mkdir(parents=True)
    done = subprocess.run([sys.executable, "-c", SIDE, str(work), str(data), str(steps), "1" if tiny else "0"], cwd=tree, env=env,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{tree}: the side run failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ref", required=True, help="the earlier commit (anything `git worktree add` takes)")
    ap.add_argument("--pairs", type=int, default=3000)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--tiny", action="store_true", help="a 32/64-wide model with 500 subwords instead of the default model")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="s2s-same-model-") as tmp:
        work = Path(tmp)
        before = work / "before-tree"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(before), a.ref], check=True, capture_output=True)
        try:
            commit = subprocess.run(["git", "-C", str(before), "rev-parse", "--short", "HEAD"], check=True, capture_output=True,
                                    text=True).stdout.strip()
            data = pairs_subset(a.pairs, work / "pairs.parquet")
            print(f"{a.pairs} pairs, {a.steps} steps, {'tiny' if a.tiny else 'default'} model; before = {commit}", flush=True)
            after = run_side(ROOT, work / "after", data, a.steps, a.tiny)
            earlier = run_side(before, work / "before", data, a.steps, a.tiny)
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(before)], check=False)
    differ = [k for k in after if after[k] != earlier.get(k)]
    for key in after:
        mark = "same" if key not in differ else "DIFFERENT"
        shown = after[key] if not isinstance(after[key], (list, dict)) or key == "valid BLEU per variant" else f"{len(after[key])} entries"
        if key == "metrics records":
            kinds = [r["kind"] for r in after[key]]
            shown = ", ".join(f"{kinds.count(k)} {k}" for k in dict.fromkeys(kinds))
        print(f"  {key:<24} {mark:<10} {shown}")
        if key in differ:
            print(f"    after:  {json.dumps(after[key])[:600]}\n    before: {json.dumps(earlier.get(key))[:600]}")
    print("identical" if not differ else f"{len(differ)} of {len(after)} differ: {', '.join(differ)}")
    sys.exit(1 if differ else 0)


if __name__ == "__main__":
    main()
