#!/usr/bin/env bash
# Many documents at once on the device (issue 19, item 2), in one command on the device machine:
# memory_read_bench --documents (1, 4 and 16 documents read together through
# CudaReadingBackend::ReadSegments, each 8K, 32K and 128K tokens, product defaults without the
# archive; 16 x 32K also the worker's way, a thread per document through one SegmentBatcher) and
# transformers at 16 x 8K in one forward (hf_read_bench.py --batch 16) for the ratio. Outputs go to
# OUT_DIR (read-batch.json, hf16.json).
#   bench/gpu/batch_run.sh BIN_DIR MODEL.gguf SCORER.lrscorer TEXT OUT_DIR
set -euo pipefail
bin=$1 model=$2 scorer=$3 text=$4 out=$5
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
"$bin/memory_read_bench" --model "$model" --scorer "$scorer" --text "$text" \
  --tokens 8192,32768,131072 --documents 1,4,16 --batcher-tokens 32768 \
  --json "$out/read-batch.json"
python3 "$here/hf_read_bench.py" --json "$out/hf16.json" --lengths 8192 --batch 16
