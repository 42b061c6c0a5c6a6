#!/usr/bin/env bash
# One command for the service load benchmark (issue 16 item 10): a coordinator and 2 workers on
# loopback, N concurrent clients submitting and watching jobs on real documents (files of this
# repository, cut to DOC_BYTES), the same documents read in embedded mode (`longread run`) in the
# same run for the tokens/s ratio (like for like: WORKERS runs at once with WORKER_THREADS each,
# unless EMBEDDED_LANES / EMBEDDED_THREADS say otherwise), then 1,000 concurrent watchers on one job with the
# coordinator's CPU time and peak RSS. Prints a table; writes bench/results/service-<date>.json.
#
#   bench/service/run.sh                                   # defaults below
#   CLIENTS=8 JOBS=16 DOC_BYTES=4000 WATCHERS=1000 WORKERS=2 WORKER_THREADS=1 \
#   OPTIONS="memory_k=64,window=64,segment_tokens=128,block_tokens=16,recall_blocks=2,max_new_tokens=16" \
#   TAG=small NOTES="..." bench/service/run.sh
#
# Needs the binaries (ninja -C $BUILD_DIR longread longread-coordinator longread-worker) and the
# .venv of scripts/setup.sh (grpcio, grpcio-tools). Not a test: nothing here asserts a speed.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
for t in services/cli/longread services/coordinator/longread-coordinator \
         services/worker/longread-worker; do
  [ -x "$BUILD_DIR/$t" ] || { echo "missing $BUILD_DIR/$t: ninja -C $BUILD_DIR $(basename $t)" >&2; exit 1; }
done
date=$(date -u +%Y-%m-%d)${TAG:+-$TAG}
exec .venv/bin/python bench/service/load.py \
  --build-dir "$BUILD_DIR" \
  --model "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" \
  --clients "${CLIENTS:-8}" --jobs "${JOBS:-${CLIENTS:-8}}" --doc-bytes "${DOC_BYTES:-2500}" \
  --workers "${WORKERS:-2}" --worker-threads "${WORKER_THREADS:-1}" \
  --embedded-threads "${EMBEDDED_THREADS:-0}" --embedded-lanes "${EMBEDDED_LANES:-0}" \
  --watchers "${WATCHERS:-1000}" \
  --options "${OPTIONS:-memory_k=64,window=64,sinks=4,segment_tokens=128,block_tokens=16,recall_blocks=2,max_new_tokens=16}" \
  --notes "${NOTES:-}" \
  --out "bench/results/service-$date.json" \
  --command "${0} (CLIENTS=${CLIENTS:-8} JOBS=${JOBS:-${CLIENTS:-8}} DOC_BYTES=${DOC_BYTES:-2500} WATCHERS=${WATCHERS:-1000} WORKERS=${WORKERS:-2})"
