#!/usr/bin/env bash
# The GPU attention benchmark in one command, on the device machine: our kernel's per-segment
# time (attention_bench) and PyTorch SDPA at 16K..1M in the same run, merged into a table and
# bench/results/gpu-attention-<date>.json (or OUT_JSON).
#   bench/gpu/run.sh BIN_DIR [OUT_JSON [VARIANT]]   (BIN_DIR holds attention_bench; VARIANT: the
#   attention kernel variant of the headline number, kernels/cuda/launch.h, default -1)
set -euo pipefail
bin=$1
out=${2:-bench/results/gpu-attention-$(date -u +%F).json}
variant=${3:--1}
tmp=$(mktemp -d)
"$bin/attention_bench" --json "$tmp/ours.json" --variant "$variant"
python3 "$(dirname "$0")/sdpa_bench.py" --json "$tmp/sdpa.json"
python3 "$(dirname "$0")/report.py" "$tmp/ours.json" "$tmp/sdpa.json" --command "$0 $*" --out "$out"
