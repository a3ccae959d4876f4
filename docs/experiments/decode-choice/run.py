"""Choose beam size and length penalty on the valid split, at the default variant (int8 through onnxruntime).

    python docs/experiments/decode-choice/run.py runs/eng-fra models/eng-fra > decode-choice.log

Prints valid BLEU/chrF and sentences/s for each (beam_size, length_penalty); the test split is not looked at.
"""

from __future__ import annotations

import sys
import time

import pyarrow.parquet as pq

from s2s.quality import corpus_scores
from s2s.engine import load_translator
from s2s.config import DecodeConfig

GRID = [(1, 1.0), (4, 0.6), (4, 0.8), (4, 1.0), (4, 1.2), (4, 1.4), (6, 1.0), (8, 1.0)]


def main() -> None:
    run, model = sys.argv[1], sys.argv[2]
    valid = pq.read_table(f"{run}/data/valid.parquet").to_pylist()
    src, refs = [r["src"] for r in valid], [r["refs"] for r in valid]
    print(f"{len(src)} valid sentences, model {model} (default variant), 2 threads")
    for beam, lp in GRID:
        translator = load_translator(model, DecodeConfig(beam_size=beam, length_penalty=lp, max_batch_tokens=4096), threads=2)
        t0 = time.time()
        hyps = [t.translation or "" for t in translator.translate(src)]
        seconds = time.time() - t0
        scores = corpus_scores(hyps, refs)
        print(f"beam {beam} length_penalty {lp}: BLEU {scores['bleu']:.2f} chrF {scores['chrf']:.2f} "
              f"{len(src) / seconds:.0f} sentences/s", flush=True)


if __name__ == "__main__":
    main()
