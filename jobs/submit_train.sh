#!/usr/bin/env bash
# Submit training to a running Ray cluster as a Ray Job (RAY_ADDRESS=http://HEAD:8265).
# The run directory must be on storage every node sees (NFS) for checkpoints and --resume.
set -euo pipefail
ray job submit --working-dir . -- s2s-job train --workers "${WORKERS:-4}" --run-dir "${RUN_DIR:-runs/eng-fra}" "$@"
