#!/usr/bin/env bash
# benchmarks/profile_beam.py and benchmarks/run.py (decode, int8, limit) on a second kind of CPU: the
# 16-core x86-64 host of a lent GPU machine, pinned to 2 cores and 2 threads to compare with the 2-core
# development machine. That machine takes 64 MiB of files per call and has no Ray, and nothing can be
# installed there, so:
# - .devcarry/models/eng-fra holds the first command's fp32 and int8 encoder and step graphs (its manifest
#   trimmed of the vocabulary-map files, which are not measured there), .devcarry/runs/eng-fra its test split;
# - the PyTorch weights are rebuilt from the fp32 graphs (weights_from_onnx.py; bit-identical to the training
#   checkpoint, checked on the development machine) and passed with --checkpoint;
# - the machine's own torch and onnxruntime are used, and the package goes on PYTHONPATH as pip lays it out.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PY=${PY:-python3}
mkdir -p /tmp/pp && cp -r s2s /tmp/pp/ && cp -r export /tmp/pp/s2s/export
export PYTHONPATH=/tmp/pp${EXTRA_PATH:+:$EXTRA_PATH} PYTHONUNBUFFERED=1
{ lscpu; grep -m1 '^flags' /proc/cpuinfo; nproc; } > "$OUT/cpu.txt" 2>&1
grep -E 'Model name|^CPU\(s\)|L2|L3|Thread' "$OUT/cpu.txt"
$PY -c "import onnxruntime, torch, numpy; print('onnxruntime', onnxruntime.__version__, 'torch', torch.__version__, 'numpy', numpy.__version__)"
M=.devcarry/models/eng-fra R=.devcarry/runs/eng-fra
$PY docs/experiments/second-cpu/weights_from_onnx.py $M /tmp/weights.pt || exit 1
timeout ${PROFILE_S:-120} taskset -c 0,1 $PY benchmarks/profile_beam.py --model $M --run $R --threads 2 2>&1 | tee "$OUT/profile-2t.log"
timeout ${BENCH_S:-330} taskset -c 0,1 $PY benchmarks/run.py --only decode,int8,limit --threads 2 --model $M --run $R \
  --checkpoint /tmp/weights.pt --json "$OUT/bench-2t.json" --markdown "$OUT/bench-2t.md" 2>&1 | tee "$OUT/bench-2t.log"
