#!/usr/bin/env bash
# The quality table on the GPU backend (issue 19 item 6) in one command: passkey retrieval at 8K,
# 32K, 128K and 1M tokens for dense (where it fits), window and the product's memory
# (blocks+task+recall, no scorer: longread run's defaults), read with --device cuda by many bench
# processes sharing one GPU, each over its own shard of trial indices; then merge_runs.py pools
# them into one JSON and table.py prints the table.
#
# Why many processes: one process reads ~150K tokens/s without an archive but ~16-22K with the
# in-RAM archive that recall needs (its host writer thread is the limit), using ~1.5 GiB of the
# GPU; a 16-core host runs ~16 of them on one GPU. The documents depend only on the seed, the
# trial index and the corpus (make_corpus.sh REV 461f555 gives the issue-12 CPU runs' documents).
#
#   bench/quality/gpu_table.sh                      # the full size, no deadline
#   SECONDS_BUDGET=240 bench/quality/gpu_table.sh   # stop starting work so that all ends by 240 s
#
# Jobs run in queues of lanes (one process per lane at a time), in plan order within a queue, so
# that under a deadline the short lengths finish first. Recall keeps every evicted block in RAM
# (fp32: ~46 KB per token, ~6 GB at 128K, ~47 GB at 1M), so those runs get queues of few lanes.
# env: BENCH (a built bench; default: build BUILD=build-quality-gpu), MODEL, CORPUS (dirs.txt),
# DEVICE (cuda), PLAN (lines "QUEUE LENGTH TRIALS SHARD METHODS"; TRIALS is a count from trial 0
# or FIRST-END, the indices FIRST..END-1), LANES ("QUEUE:N ..."),
# WORK (per-process JSON and logs), RESULT (merged JSON), COMPARE (the second answer's setting,
# or none), EXTRA (more bench options), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/../.."
start=$(date +%s)
DATE=$(date -u +%F)
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
CORPUS=${CORPUS:-data/haystack/dirs.txt}
DEVICE=${DEVICE:-cuda}
WORK=${WORK:-$(mktemp -d)}
RESULT=${RESULT:-bench/results/quality-gpu-$DATE.json}
PY=${PYTHON:-python3}
[ -f "$CORPUS" ] || bench/quality/make_corpus.sh "$(dirname "$CORPUS")" 461f555
if [ -z "${BENCH:-}" ]; then
  BUILD=${BUILD:-build-quality-gpu}
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGREAD_ENGINE_ONLY=ON \
    -DLONGREAD_BUILD_TESTS=OFF >/dev/null
  ninja -C "$BUILD" longread_quality_bench
  BENCH="$BUILD/bench/quality/longread_quality_bench"
fi
RECALL=blocks+task+recall
PLAN=${PLAN:-"main 8192 100 5 dense,window,$RECALL
main 32768 100 4 window,$RECALL
main 131072 100 2 window
archive 131072 100 2 $RECALL
long 1048576 20 1 window
longarchive 1048576 20 1 $RECALL"}
LANES=${LANES:-"main:10 archive:4 long:1 longarchive:1"}
# Issue 12's setting (bench/quality/README.md): budget 768 + 4 sinks, top-k 512 + window 256,
# blocks of 32, recall of 4 blocks, 24 answer tokens, greedy with longread run's defaults; every
# answer is also given without the no-repeat guard from the same read (compared_*), as the CPU
# runs of issue 12 answered before the guard existed.
COMMON=(--model "$MODEL" --device "$DEVICE" --threads 1 --scorer none --budget 768
  --sparsek-window 256 --block-tokens 32 --recall-blocks 4 --answer-tokens 24 --seed 1
  --haystack real --depths random)
COMPARE=${COMPARE:---compare-no-repeat-ngram 0}  # "none": one answer per trial
# shellcheck disable=SC2206
[ "$COMPARE" = none ] || COMMON+=($COMPARE)
while read -r dir; do COMMON+=(--haystack-dir "$dir"); done <"$CORPUS"
# shellcheck disable=SC2206
[ -n "${EXTRA:-}" ] && COMMON+=($EXTRA)
mkdir -p "$WORK" "$(dirname "$RESULT")"
if [ -n "${SECONDS_BUDGET:-}" ]; then
  # Keep MERGE_SECONDS for merging; a process still reading at the deadline is killed after
  # GRACE_SECONDS and its finished trials are recovered from its log.
  deadline=$((start + SECONDS_BUDGET - ${MERGE_SECONDS:-8} - ${GRACE_SECONDS:-6}))
fi

# xargs' children read COMMON from a file: bash cannot export arrays.
printf '%s\n' "${COMMON[@]}" >"$WORK/common.args"
# run_job QUEUE LENGTH FIRST END METHODS: one bench process over trials FIRST..END-1.
run_job() {
  local name="$5-$2-$3" limit=() now common
  mapfile -t common <"$WORK/common.args"
  name=${name//+/_}
  name=${name//,/.}
  if [ -n "${deadline:-}" ]; then
    now=$(date +%s)
    ((deadline - now >= ${MIN_START_SECONDS:-5})) || return 0
    limit=(timeout -s KILL $((deadline - now + ${GRACE_SECONDS:-6})))
    common+=(--max-seconds $((deadline - now)))
  fi
  "${limit[@]}" "$BENCH" "${common[@]}" --lengths "$2" --first-trial "$3" --trials "$4" \
    --methods "$5" --json "$WORK/$name.json" >"$WORK/$name.log" 2>&1 || true
  echo "[$(($(date +%s) - start))s] $1: len $2 trials $3-$(($4 - 1)) $5:" \
    "$(grep -c ' key [0-9]' "$WORK/$name.log" || true) records"
}
export -f run_job
export BENCH WORK start deadline GRACE_SECONDS MIN_START_SECONDS
# A queue: its jobs (shards of each plan line, in plan order) run on N lanes.
run_queue() {
  local queue=$1 lanes=$2
  local q length trials shard methods first
  while read -r q length trials shard methods; do
    [ "$q" = "$queue" ] || continue
    first=0
    if [[ $trials == *-* ]]; then  # FIRST-END: trial indices FIRST..END-1 (to extend a run)
      first=${trials%-*}
      trials=${trials#*-}
    fi
    for ((a = first; a < trials; a += shard)); do
      echo "$q $length $a $((a + shard < trials ? a + shard : trials)) $methods"
    done
  done <<<"$PLAN" | xargs -P "$lanes" -L 1 bash -c 'run_job "$@"' _
}
for spec in $LANES; do run_queue "${spec%%:*}" "${spec##*:}" & done
wait
jsons=$(find "$WORK" -name '*.json' -size +0 | sort)
# shellcheck disable=SC2086
gpu=$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
"$PY" bench/quality/merge_runs.py --noscorer-suffix --out "$RESULT" --logs "$WORK"/*.log \
  --note "gpu_table.sh on $DEVICE${gpu:+ ($gpu)}, $(ls "$WORK"/*.log | wc -l) processes, lanes $LANES" $jsons
"$PY" bench/quality/table.py "$RESULT"
echo "gpu_table.sh: $(($(date +%s) - start)) s"
