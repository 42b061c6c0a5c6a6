#!/usr/bin/env bash
# Reading through the SparseK memory on the device, in one command on the device machine:
# memory_read_bench at 32K, 128K and 1M tokens with and without the archive, the bare segment
# forward at the same segment length (forward_bench --segment 2048), and an ncu profile of every
# kernel's time over an 8K-token read, summarized per segment by ncu_summary.py (all four, and
# segment 4 alone: the memory is full from segment 3 on). Outputs go to
# OUT_DIR (read-memory.json, forward2048.json, ncu.csv, profile.txt, profile-segment4.txt).
#   bench/gpu/memory_read_run.sh BIN_DIR MODEL.gguf SCORER.lrscorer TEXT OUT_DIR
set -euo pipefail
bin=$1 model=$2 scorer=$3 text=$4 out=$5
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
"$bin/memory_read_bench" --model "$model" --scorer "$scorer" --text "$text" \
  --tokens 32768,131072,1048576 --archive both --json "$out/read-memory.json"
"$bin/forward_bench" --segment 2048 --reps 20 --json "$out/forward2048.json"
ncu --clock-control none --metrics gpu__time_duration.sum --csv \
  "$bin/memory_read_bench" --model "$model" --scorer "$scorer" --text "$text" --tokens 8192 \
  --archive 0 > "$out/ncu.csv"
python3 "$here/ncu_summary.py" "$out/ncu.csv" | tee "$out/profile.txt"
python3 "$here/ncu_summary.py" "$out/ncu.csv" 4 | tee "$out/profile-segment4.txt"
