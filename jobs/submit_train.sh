#!/usr/bin/env bash
# Submit training to a running Ray cluster as a Ray job (RAY_ADDRESS=http://HEAD:8265; with token
# authentication, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN too) and exit with the command's own code.
# RUN_DIR is where checkpoints and metrics go: s3://bucket/prefix (or a folder every node mounts), so that
# --resume works from any node. Example: WORKERS=4 RUN_DIR=s3://my-bucket/runs/eng-fra jobs/submit_train.sh --data s3://my-bucket/pairs.parquet
set -euo pipefail
exec s2s-job submit --working-dir . -- s2s-job train "${RUN_DIR:-runs/eng-fra}" --workers "${WORKERS:-4}" "$@"
