#!/usr/bin/env bash
# Submit training to a running Ray cluster as a Ray Job (RAY_ADDRESS=http://HEAD:8265).
# RUN_DIR is where checkpoints and metrics go: s3://bucket/prefix (or a folder every node mounts), so that
# --resume works from any node. Example: WORKERS=4 RUN_DIR=s3://my-bucket/runs/eng-fra jobs/submit_train.sh --data s3://my-bucket/pairs.parquet
set -euo pipefail
ray job submit --working-dir . -- s2s-job train --workers "${WORKERS:-4}" --run-dir "${RUN_DIR:-runs/eng-fra}" "$@"
