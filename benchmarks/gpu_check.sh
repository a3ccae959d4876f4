#!/usr/bin/env bash
# The prepared GPU check: one call on a lent GPU machine (no Ray, no network), under 8 minutes.
#
#   bash benchmarks/gpu_check.sh             # on the GPU machine; the table ends the output
#   bash benchmarks/gpu_check.sh --tiny      # any machine, a tiny model, about a minute (CI runs this)
#
# Extra arguments go to benchmarks/gpu_check.py. It writes gpu_check.log and gpu_check.json to $OUT (the
# device tool's folder that comes back), or to /tmp/s2s-gpu-check-out.
#
# onnxruntime's CUDA provider: where the machine's onnxruntime has none, the two parts that
# `python benchmarks/ort_gpu_parts.py pack .whl` makes (onnxruntime-gpu for CUDA 13, kernels for the H200's
# sm_90 only; 56 MiB together, which fits one call with this checkout) are looked for in .whl/ (carry it)
# and in /tmp/ort-gpu/ (parts an earlier call of the same warm machine left), unpacked into /tmp/ort-gpu/site
# and put first on PYTHONPATH. Without them the check says that its onnxruntime CUDA rows were skipped, and why.
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-/tmp/s2s-gpu-check-out}"
mkdir -p "$out" /tmp/ort-gpu
py="${PYTHON:-python3}"

cp .whl/ort-gpu-*.xz /tmp/ort-gpu/ 2>/dev/null
site=/tmp/ort-gpu/site
if [ ! -d "$site/onnxruntime" ] && [ -f /tmp/ort-gpu/ort-gpu-cuda.so.xz ] && [ -f /tmp/ort-gpu/ort-gpu-rest.tar.xz ]; then
  echo "unpacking onnxruntime-gpu from its parts into $site"
  "$py" benchmarks/ort_gpu_parts.py unpack /tmp/ort-gpu "$site" || rm -rf "$site"
fi
if [ -d "$site/onnxruntime" ]; then
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
else
  echo "onnxruntime-gpu parts not found (.whl/ or /tmp/ort-gpu/): the machine's own onnxruntime is used"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # the s2s package from this checkout, no install
# the CUDA and cuDNN libraries of the nvidia-* wheels beside torch, for onnxruntime's CUDA provider
libs=$("$py" - <<'EOF' 2>/dev/null
import pathlib, site
dirs = set()
for root in site.getsitepackages():
    for lib in pathlib.Path(root, "nvidia").glob("**/lib"):
        if any(lib.glob("*.so*")):
            dirs.add(str(lib))
print(":".join(sorted(dirs)))
EOF
)
[ -n "$libs" ] && export LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"

command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 | tee "$out/nvidia-smi.txt"
PYTHONUNBUFFERED=1 "$py" benchmarks/gpu_check.py --out "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
exit "${PIPESTATUS[0]}"
