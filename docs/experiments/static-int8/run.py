"""Static int8 quantization of the decoder step, calibrated on real steps, against the dynamic int8 graph.

Issue 19 names it first among the attacks on the default decode: the dynamic graph quantizes every
activation at every step (DynamicQuantizeMatMul: find the range, quantize, multiply); a static graph fixes
the activations' ranges once, from calibration data. This script

1. records the step graph's inputs while the fp32 graphs beam-search (beam 4) the valid split's first
   `--calib` sentences, every 4th step kept;
2. quantizes decoder_step.onnx statically with onnxruntime.quantization (MinMax ranges from those inputs;
   QOperator and QDQ formats; MatMul and Gemm, weights s8, activations u8);
3. decodes the test split's first 512 sentences (beam 4 and greedy, batch 64, 2 threads, the int8 encoder
   in every case) with the dynamic step graph and each static one, alternated in 3 passes, median kept,
   and scores test BLEU over the whole test split for each.

    python docs/experiments/static-int8/run.py --model models/eng-fra --run runs/eng-fra
"""
from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static

from s2s.quality import corpus_scores
from s2s.engine import ModelDir, OrtEngine, load_model_dir
from s2s.tokenizer import load_sentencepiece
from s2s.config import DecodeConfig
from s2s.translator import Translator


class Feeds(CalibrationDataReader):
    def __init__(self, feeds: list[dict]):
        self.it = iter(feeds)

    def get_next(self):
        return next(self.it, None)


def record_feeds(md: ModelDir, texts: list[str], every: int = 4) -> list[dict]:
    engine = OrtEngine(md, "fp32", "cpu", threads=2)
    feeds, run, n = [], engine.decoder.run, [0]

    def recording(names, feed, *rest):
        n[0] += 1
        if n[0] % every == 0:
            feeds.append({k: np.array(v) for k, v in feed.items()})
        return run(names, feed, *rest)

    engine.decoder.run = recording
    tr = Translator(engine, load_sentencepiece(md.file("src.model")), load_sentencepiece(md.file("tgt.model")), DecodeConfig(beam_size=4))
    for i in range(0, len(texts), 64):
        tr.translate(texts[i:i + 64])
    return feeds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", type=Path, default=Path("models/eng-fra"))
    p.add_argument("--run", type=Path, default=Path("runs/eng-fra"))
    p.add_argument("--calib", type=int, default=256, help="valid sentences to calibrate on")
    p.add_argument("--passes", type=int, default=3)
    p.add_argument("--every", type=int, default=4, help="keep every Nth step's inputs")
    a = p.parse_args()

    md = load_model_dir(a.model)
    valid = [r["src"] for r in pq.read_table(a.run / "data" / "valid.parquet").to_pylist()][: a.calib]
    test = pq.read_table(a.run / "data" / "test.parquet").to_pylist()
    texts, refs = [r["src"] for r in test], [list(r["refs"]) for r in test]

    t0 = time.perf_counter()
    feeds = record_feeds(md, valid, a.every)
    print(f"recorded {len(feeds)} step inputs from {len(valid)} valid sentences in {time.perf_counter() - t0:.1f} s", flush=True)

    work = Path(tempfile.mkdtemp(prefix="static-int8-"))
    for f in md.path.iterdir():
        (work / f.name).symlink_to(f.resolve())
    variants = {"int8 dynamic": md.manifest["variants"]["int8"]["decoder_step"]}
    for fmt in (QuantFormat.QOperator, QuantFormat.QDQ):
        out = f"decoder_step.static-{fmt.name.lower()}.onnx"
        t0 = time.perf_counter()
        quantize_static(str(md.file(md.manifest["variants"]["fp32"]["decoder_step"])), str(work / out), Feeds(feeds),
                        quant_format=fmt, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        op_types_to_quantize=["MatMul", "Gemm"], calibrate_method=CalibrationMethod.MinMax)
        print(f"quantized statically ({fmt.name}) in {time.perf_counter() - t0:.1f} s: {out}", flush=True)
        variants[f"int8 static {fmt.name}"] = out
    del feeds

    manifest = dict(md.manifest)
    manifest["variants"] = {name: {"encoder": md.manifest["variants"]["int8"]["encoder"], "decoder_step": step}
                            for name, step in variants.items()}
    manifest["variants"]["fp32"] = md.manifest["variants"]["fp32"]
    mdir = ModelDir(work, manifest)
    src_sp, tgt_sp = load_sentencepiece(md.file("src.model")), load_sentencepiece(md.file("tgt.model"))
    engines = {name: OrtEngine(mdir, name, "cpu", threads=2) for name in ["fp32", *variants]}
    sample = texts[:512]
    for beam in (4, 1):
        decode = DecodeConfig(beam_size=beam, max_batch_tokens=1 << 20)  # batches of exactly 64, as benchmarks/run.py
        speed: dict[str, list[float]] = {n: [] for n in engines}
        for _ in range(a.passes):
            for name, engine in engines.items():
                tr = Translator(engine, src_sp, tgt_sp, decode)
                tr.translate(sample[:64])
                t0 = time.perf_counter()
                for i in range(0, len(sample), 64):
                    tr.translate(sample[i:i + 64])
                speed[name].append(len(sample) / (time.perf_counter() - t0))
        base = np.median(speed["int8 dynamic"])
        print(f"\n{'beam 4' if beam == 4 else 'greedy'}, batch 64, 2 threads, 512 test sentences, median of {a.passes} alternated passes:")
        for name in engines:
            tr = Translator(engines[name], src_sp, tgt_sp, decode)
            s = corpus_scores([t.translation or "" for t in tr.translate(texts)], refs)
            print(f"  {name:<24} {np.median(speed[name]):8.1f} sent/s ({np.median(speed[name]) / base:.2f}x the dynamic int8)  "
                  f"passes {[round(x) for x in speed[name]]}  test BLEU {s['bleu']:.2f} chrF {s['chrf']:.2f}", flush=True)
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
