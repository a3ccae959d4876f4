"""Where translate's default decode spends a batch's time: beam 4, the CPU default variant, batch 64.

    python benchmarks/profile_beam.py --model models/eng-fra --run runs/eng-fra [--batches 10]

Two views of the same sentences (the first `--batches` x 64 of the test split, sorted by length as
`translate` sorts them):
1. The host's view: the wall time of one `Translator.translate` call per batch, split into the encoder
   session, the decoder step session, the state reorder (`select_state`), and the rest of the search on
   the host (top-k, bookkeeping), plus tokenizing and detokenizing outside the search.
2. onnxruntime's own profile of the step graph (SessionOptions.enable_profiling), summed by operator
   type: which kernels the step time is made of (LSTM, the output projection's MatMul, the softmax ...).
Nothing is changed in the production code: the engine's sessions and `select_state` are wrapped here.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import pyarrow.parquet as pq

import s2s.search
from s2s.engine import OrtEngine, load_model_dir
from s2s.tokenizer import load_sentencepiece
from s2s.config import DecodeConfig
from s2s.translator import Translator


class Clock:
    def __init__(self) -> None:
        self.seconds: dict[str, float] = collections.defaultdict(float)
        self.calls: dict[str, int] = collections.defaultdict(int)

    def wrap(self, name: str, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[name] += time.perf_counter() - t0
                self.calls[name] += 1
        return timed


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="models/eng-fra")
    p.add_argument("--run", default="runs/eng-fra")
    p.add_argument("--batches", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--beam-size", type=int, default=4)
    a = p.parse_args()

    model_dir = load_model_dir(a.model)
    texts = [r["src"] for r in pq.read_table(Path(a.run) / "data" / "test.parquet").to_pylist()]
    texts = sorted(texts, key=len)[: a.batches * 64]  # as translate sorts a unit's rows
    engine = OrtEngine(model_dir, "auto", "cpu", a.threads)
    variant = engine.variant
    files = model_dir.manifest["variants"][variant]
    translator = Translator(engine, load_sentencepiece(model_dir.file("src.model")), load_sentencepiece(model_dir.file("tgt.model")),
                            DecodeConfig(beam_size=a.beam_size))
    # One batch first, untimed: the search imports torch on its first call (for top-k), which takes a second
    # or more and would otherwise be counted as search time; sessions also allocate on their first runs.
    translator.translate(texts[:64])
    # the same session, with onnxruntime's profiler on
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = a.threads, 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.enable_profiling = True
    opts.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "step")
    engine.decoder = ort.InferenceSession(str(model_dir.file(files["decoder_step"])), opts, providers=["CPUExecutionProvider"])

    clock = Clock()
    engine.encoder.run = clock.wrap("encoder session", engine.encoder.run)
    engine.decoder.run = clock.wrap("decoder step session", engine.decoder.run)
    s2s.search.select_state = clock.wrap("state reorder (select_state)", s2s.search.select_state)
    s2s.search.beam_search = clock.wrap("search", s2s.search.beam_search)
    s2s.search.greedy_search = clock.wrap("search", s2s.search.greedy_search)
    import s2s.translator as translator_module

    translator_module.beam_search, translator_module.greedy_search = s2s.search.beam_search, s2s.search.greedy_search
    t0 = time.perf_counter()
    for i in range(0, len(texts), 64):
        translator.translate(texts[i:i + 64])
    total = time.perf_counter() - t0
    profile = engine.decoder.end_profiling()

    s = clock.seconds
    rows = [("encoder session", s["encoder session"]),
            ("decoder step session", s["decoder step session"]),
            ("state reorder (select_state)", s["state reorder (select_state)"]),
            ("rest of the search on the host (top-k, bookkeeping)",
             s["search"] - s["decoder step session"] - s["state reorder (select_state)"]),
            ("outside the search (tokenize, sort, detokenize)", total - s["search"] - s["encoder session"])]
    print(f"{len(texts)} sentences in batches of 64, beam {a.beam_size}, variant {variant}, {a.threads} thread(s): "
          f"{total:.2f} s, {len(texts) / total:.0f} sentences/s, {clock.calls['decoder step session']} steps")
    for name, sec in rows:
        print(f"  {name:<55} {sec:8.3f} s  {100 * sec / total:5.1f}%")

    by_op: dict[str, float] = collections.defaultdict(float)
    by_node: dict[str, float] = collections.defaultdict(float)
    for event in json.loads(Path(profile).read_text()):
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"] / 1e6
            by_node[event["name"].removesuffix("_kernel_time")] += event["dur"] / 1e6
    kernels = sum(by_op.values())
    print(f"decoder step session, onnxruntime's profile: kernels {kernels:.3f} s of {s['decoder step session']:.3f} s in run() "
          f"({100 * kernels / max(s['decoder step session'], 1e-9):.0f}%; the rest is onnxruntime's per-run overhead)")
    for op, sec in sorted(by_op.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {op:<30} {sec:8.3f} s  {100 * sec / kernels:5.1f}% of the kernels")
    print("  the largest nodes:")
    for node, sec in sorted(by_node.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {node[:60]:<60} {sec:8.3f} s  {100 * sec / kernels:5.1f}%")


if __name__ == "__main__":
    main()
