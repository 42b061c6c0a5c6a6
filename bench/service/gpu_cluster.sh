#!/usr/bin/env bash
# GPU workers on one machine, scaling and failover (issue 18), one command: a coordinator and one
# worker per visible GPU (WORKERS_PER_GPU=2: two share each GPU), a batch of DOCS documents of
# MIN_TOKENS..MAX_TOKENS tokens (mixed lengths, generated from real text), run three times on
# fresh processes: one worker (the baseline and the reference answers), every worker, and every
# worker with one SIGKILLed mid-batch. Prints a table; writes bench/results/gpu-cluster-<date>.json.
# Exit 1 when a job fails or an answer differs from the one-worker run.
#
#   bench/service/gpu_cluster.sh                                  # the issue's batch, on the GPUs
#   WORKERS_PER_GPU=2 DOCS=16 MIN_TOKENS=32000 MAX_TOKENS=128000 bench/service/gpu_cluster.sh
#   DEVICE=cpu WORKERS=2 DOCS=3 MIN_TOKENS=800 MAX_TOKENS=1200 CHECKPOINT_SECONDS=1 \
#     OPTIONS=memory_k=64,window=64,segment_tokens=128,block_tokens=16,recall_blocks=2 \
#     MAX_NEW_TOKENS=16 TAG=cpu-tiny bench/service/gpu_cluster.sh     # the harness on CPU
#
# Knobs (environment): DEVICE (cuda), WORKERS (default: GPUs x WORKERS_PER_GPU), WORKERS_PER_GPU
# (1), WORKER_THREADS (1), CAPACITY (4 documents per worker), CHECKPOINT_SECONDS (5), DOCS (64),
# MIN_TOKENS (32000), MAX_TOKENS (1000000), BYTES_PER_TOKEN (4.35), OPTIONS (job memory options,
# default: the server's), MAX_NEW_TOKENS (32), PHASES (one,all,kill), KILL_AFTER_FRACTION (0.4:
# the kill comes no earlier than this fraction of the `all` phase's time, and only while the
# victim reads a document the coordinator holds a checkpoint of), CORPUS (README.md docs, plus
# data/seeds if present: copy more real text there), BUILD_DIR (build), MODEL, TAG, NOTES, KEEP
# (1: keep the processes' directories and logs), WORKER_METRICS (0: workers serve no /metrics;
# every number but the workers' device-memory gauge comes from the job's events anyway).
# Needs the binaries (ninja -C $BUILD_DIR longread longread-coordinator longread-worker), the
# model, python3 (standard library only) and, for cuda, nvidia-smi. Not a test: nothing here
# asserts a speed.
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD_DIR=${BUILD_DIR:-build}
for t in services/cli/longread services/coordinator/longread-coordinator \
         services/worker/longread-worker; do
  [ -x "$BUILD_DIR/$t" ] || {
    echo "missing $BUILD_DIR/$t: ninja -C $BUILD_DIR $(basename "$t")" >&2
    exit 2
  }
done
corpus=${CORPUS:-README.md docs}
[ -z "${CORPUS:-}" ] && [ -d data/seeds ] && corpus="$corpus data/seeds"
read -r -a corpus_paths <<< "$corpus"
optional=()
[ -n "${KEEP:-}" ] && optional+=(--keep)
[ "${WORKER_METRICS:-1}" = 0 ] && optional+=(--no-worker-metrics)
date=$(date -u +%Y-%m-%d)${TAG:+-$TAG}
settings="DEVICE=${DEVICE:-cuda} WORKERS=${WORKERS:-} WORKERS_PER_GPU=${WORKERS_PER_GPU:-1}"
settings+=" DOCS=${DOCS:-64} MIN_TOKENS=${MIN_TOKENS:-32000} MAX_TOKENS=${MAX_TOKENS:-1000000}"
settings+=" BYTES_PER_TOKEN=${BYTES_PER_TOKEN:-4.35} CHECKPOINT_SECONDS=${CHECKPOINT_SECONDS:-5}"
settings+=" CAPACITY=${CAPACITY:-4} WORKER_THREADS=${WORKER_THREADS:-1} OPTIONS=${OPTIONS:-}"
settings+=" MAX_NEW_TOKENS=${MAX_NEW_TOKENS:-32} PHASES=${PHASES:-one,all,kill}"
settings+=" KILL_AFTER_FRACTION=${KILL_AFTER_FRACTION:-0.4} WORKER_METRICS=${WORKER_METRICS:-1}"
exec python3 bench/service/gpu_cluster.py \
  --build-dir "$BUILD_DIR" \
  --model "${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}" \
  --device "${DEVICE:-cuda}" --workers "${WORKERS:-0}" \
  --workers-per-gpu "${WORKERS_PER_GPU:-1}" --worker-threads "${WORKER_THREADS:-1}" \
  --capacity "${CAPACITY:-4}" --checkpoint-seconds "${CHECKPOINT_SECONDS:-5}" \
  --bytes-per-token "${BYTES_PER_TOKEN:-4.35}" --docs "${DOCS:-64}" \
  --min-tokens "${MIN_TOKENS:-32000}" --max-tokens "${MAX_TOKENS:-1000000}" \
  --options "${OPTIONS:-}" --max-new-tokens "${MAX_NEW_TOKENS:-32}" \
  --phases "${PHASES:-one,all,kill}" --kill-after-fraction "${KILL_AFTER_FRACTION:-0.4}" \
  --corpus "${corpus_paths[@]}" "${optional[@]}" --notes "${NOTES:-}" \
  --out "bench/results/gpu-cluster-$date.json" \
  --command "$settings bench/service/gpu_cluster.sh"
