#!/usr/bin/env bash
# Submit a translate run to a running Ray cluster as a Ray Job (RAY_ADDRESS=http://HEAD:8265).
# Usage: jobs/submit_translate.sh s3://bucket/in/ s3://bucket/out/ [more s2s-job translate options]
set -euo pipefail
ray job submit --working-dir . -- s2s-job translate "$1" --output "$2" --model "${MODEL:-models/eng-fra}" --resume "${@:3}"
