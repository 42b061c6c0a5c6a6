#!/usr/bin/env bash
# The reading benchmark in one command, on the device machine: forward_bench (our segment
# forward) and hf_read_bench.py (transformers, same shapes) in the same run, merged into
# bench/results/gpu-read-<date>.json (or OUT_JSON).
#   bench/gpu/read_run.sh BIN_DIR [OUT_JSON]     (BIN_DIR holds forward_bench)
set -euo pipefail
bin=$1
out=${2:-bench/results/gpu-read-$(date -u +%F).json}
tmp=$(mktemp -d)
"$bin/forward_bench" --json "$tmp/ours.json"
python3 "$(dirname "$0")/hf_read_bench.py" --json "$tmp/hf.json"
python3 "$(dirname "$0")/read_report.py" "$tmp/ours.json" "$tmp/hf.json" --command "$0 $*" --out "$out"
