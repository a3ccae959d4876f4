#!/usr/bin/env bash
# Submit a translate run to a running Ray cluster as a Ray job (RAY_ADDRESS=http://HEAD:8265; with token
# authentication, RAY_AUTH_MODE=token and RAY_AUTH_TOKEN too) and exit with the run's own code:
# 0 done, 1 error rate over --max-error-rate, 2 bad invocation, 3 failed or the output is busy: retry.
# MODEL is the exported model folder as the cluster sees it (s3://bucket/prefix, or a folder every node
# mounts): --working-dir uploads this checkout without its gitignored files, models/ included.
# Usage: MODEL=s3://bucket/models/eng-fra jobs/submit_translate.sh s3://bucket/in/ s3://bucket/out/ [more s2s-job translate options]
set -euo pipefail
if [[ -z "${MODEL:-}" ]]; then
  echo "submit_translate.sh: set MODEL to the model folder the cluster reads, e.g. MODEL=s3://my-bucket/s2s-job/models/eng-fra" >&2
  exit 2
fi
if [[ $# -lt 2 ]]; then
  echo "usage: MODEL=... jobs/submit_translate.sh INPUT OUTPUT [more s2s-job translate options]" >&2
  exit 2
fi
exec s2s-job submit --working-dir . -- s2s-job translate "$1" --output "$2" --model "$MODEL" --resume "${@:3}"
