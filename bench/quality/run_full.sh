#!/usr/bin/env bash
# The full-size quality evaluation of issues 3 and 12 in one command, for a machine with more
# cores than the dev box: engine-only build (no RocksDB/gRPC/GTest), passkey at 4K/8K/32K/128K
# (50/50/20/N trials, random depths, real haystack pinned by make_corpus.sh; every memory method
# of issues 3 and 12), perplexity on 32K tokens of real text, the planted-facts summary check,
# JSON and PNG in bench/results/.
#
# Passkey trials run as PROCS independent processes of THREADS threads (default: one per core,
# 1 thread: on the lent H200 machine's 16-core host, 16 x 1 read ~2,700 tokens/s in all, where one
# 16-thread process read ~650), each over its own range of trial indices; merge_runs.py pools
# them. A trial's document depends only on the seed, the trial index and the pinned corpus, so
# ranges can also be split over machines (FIRST_TRIAL) and merged afterwards.
#
#   bench/quality/run_full.sh                   # everything, no time limit
#   MAX_SECONDS=21600 bench/quality/run_full.sh # each process stops cleanly after 6 h
#   TRIALS_128K=10 PROCS=16 bench/quality/run_full.sh
#   LENGTHS="4096 8192" TRIALS="50 50" PASSKEY_ONLY=1 BENCH=path bench/quality/run_full.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${BUILD:-build-quality-full}
PROCS=${PROCS:-$(nproc)}
THREADS=${THREADS:-1}
DATE=$(date +%F)
MODEL=${MODEL:-models/SmolLM2-135M-Instruct.Q4_1.gguf}
[ -f "$MODEL" ] || scripts/setup.sh
[ -f data/haystack/dirs.txt ] || bench/quality/make_corpus.sh data/haystack
HAYSTACK=()
while read -r dir; do HAYSTACK+=(--haystack-dir "$dir"); done <data/haystack/dirs.txt

if [ -z "${BENCH:-}" ]; then  # BENCH=path: use a bench binary built elsewhere
  cmake -S . -B "$BUILD" -G Ninja -DLONGREAD_ENGINE_ONLY=ON -DLONGREAD_BUILD_TESTS=OFF \
    -DLONGREAD_NATIVE=ON >/dev/null
  ninja -C "$BUILD" longread_quality_bench
  BENCH="$BUILD/bench/quality/longread_quality_bench"
fi
# Budget 768 (+4 sinks) is <= 10% of an 8K document's keys (issue 12's target setting).
METHODS=${METHODS:-dense,window,sparsek,blocks,blocks+task,blocks+task+recall,window+recall}
COMMON=(--model "$MODEL" --methods "$METHODS" --budget 768
        --sparsek-window 256 --block-tokens 32 --recall-blocks 4 --answer-tokens 24
        --scorer "${SCORER:-auto}" --seed "${SEED:-1}" --haystack real "${HAYSTACK[@]}")
[ -n "${MAX_SECONDS:-}" ] && COMMON+=(--max-seconds "$MAX_SECONDS")

# passkey LENGTH TRIALS: PROCS processes over trial indices FIRST_TRIAL .. FIRST_TRIAL+TRIALS-1.
passkey() {
  local length=$1 trials=$2 first=${FIRST_TRIAL:-0} tmp
  tmp=$(mktemp -d)
  local per=$(((trials + PROCS - 1) / PROCS)) p a b
  for ((p = 0; p < PROCS; p++)); do
    a=$((first + p * per))
    b=$((a + per > first + trials ? first + trials : a + per))
    ((a < b)) || continue
    "$BENCH" "${COMMON[@]}" --threads "$THREADS" --depths random --lengths "$length" \
      --first-trial "$a" --trials "$b" --json "$tmp/p$p.json" >"$tmp/p$p.log" 2>&1 &
  done
  wait
  "${PYTHON:-.venv/bin/python}" bench/quality/merge_runs.py --logs "$tmp"/p*.log \
    --out "bench/results/quality-passkey-full-$length-$DATE.json" "$tmp"/p*.json
}
read -r -a lengths <<<"${LENGTHS:-4096 8192 32768 131072}"
read -r -a counts <<<"${TRIALS:-50 50 20 ${TRIALS_128K:-10}}"
for i in "${!lengths[@]}"; do passkey "${lengths[i]}" "${counts[i]}"; done
[ -n "${PASSKEY_ONLY:-}" ] && exit 0
COMMON+=(--threads "$(nproc)")

# A long coherent text for perplexity: the repository's own sources, concatenated in order.
"$BENCH" "${COMMON[@]}" --trials 0 --perplexity engine --ppl-tokens 32768 \
  --json "bench/results/quality-ppl-full-$DATE.json"
# Dense perplexity only fits the 8K context: measure all three methods there too.
"$BENCH" "${COMMON[@]}" --trials 0 --perplexity engine --ppl-tokens 8192 \
  --facts 20 --facts-tokens 8192 --summary-tokens 256 \
  --json "bench/results/quality-ppl-facts-8k-$DATE.json"
"$BENCH" "${COMMON[@]}" --methods window,sparsek,blocks+task,blocks+task+recall --trials 0 \
  --facts 20 --facts-tokens 32768 \
  --summary-tokens 256 --json "bench/results/quality-facts-32k-$DATE.json"

PY=${PYTHON:-.venv/bin/python}
"$PY" bench/quality/plot.py bench/results/quality-passkey-full-*-"$DATE".json \
  "bench/results/quality-ppl-facts-8k-$DATE.json" --out "bench/results/quality-full-$DATE.png"
