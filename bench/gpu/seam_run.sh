#!/bin/bash
# The product path on the GPU (issue 19, the backend seam), as run through the device tool:
#  1. the gpu test of DocumentSession on cuda (checkpoint mid-document + resume; KL against cpu);
#  2. `longread run --device cuda` on a ~30K-token text (product defaults, a question), peak GPU
#     memory sampled by nvidia-smi; then the same with --device cpu on the device's cores;
#  3. `longread-worker --device cuda` behind a `longread-coordinator`, one job through
#     `longread submit --watch`, and the worker's /metrics.
# Usage: seam_run.sh BIN_DIR MODEL TEXT OUT_DIR (BIN_DIR holds longread, longread-worker,
# longread-coordinator and cuda_session_test built with CUDA; LONGREAD_SOURCE_DIR must hold
# models/ for the test). Results: bench/results/gpu-seam-*.json.
set -u
B=$1 M=$2 TEXT=$3 R=$4
mkdir -p "$R"
scratch=${TMPDIR:-/tmp}/longread-seam-$$
Q="What is the code of the harbor vault?"
st() { echo "== $1 rc=$2"; }
LONGREAD_REQUIRE_GPU=1 timeout 150 "$B/cuda_session_test" > "$R/cuda_session_test.log" 2>&1
st cuda_session_test $?
poll() { while true; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits; sleep 0.2; done; }
poll > "$R/smi_run.txt" 2>/dev/null &
smi=$!
timeout 120 "$B/longread" run --device cuda --model "$M" --threads 8 --cache-dir "$scratch/cache" \
  --task question --question "$Q" --json "$TEXT" > "$R/run_cuda.json" 2> "$R/run_cuda.err"
st run_cuda $?
kill $smi
echo "peak MiB: $(sort -n "$R/smi_run.txt" | tail -1)"
timeout 120 "$B/longread" run --device cpu --model "$M" --threads 16 --cache-dir "$scratch/cache2" \
  --task question --question "$Q" --json "$TEXT" > "$R/run_cpu.json" 2> "$R/run_cpu.err"
st run_cpu $?
"$B/longread-worker" --device cuda --model "$M" --listen 127.0.0.1:50071 \
  --metrics-listen 127.0.0.1:19465 --cache-dir "$scratch/worker" --threads 8 > "$R/worker.log" 2>&1 &
worker=$!
"$B/longread-coordinator" --model "$M" --listen 127.0.0.1:50081 --metrics-listen 127.0.0.1:19464 \
  --db "$scratch/coordinator.db" --workers 127.0.0.1:50071 > "$R/coordinator.log" 2>&1 &
coordinator=$!
sleep 3
timeout 120 "$B/longread" submit --coordinator 127.0.0.1:50081 --task question --question "$Q" \
  --watch "$TEXT" > "$R/submit.out" 2> "$R/submit.err"
st submit $?
python3 -c "import urllib.request;print(urllib.request.urlopen('http://127.0.0.1:19465/metrics').read().decode())" \
  > "$R/worker_metrics.txt"
kill $worker $coordinator
wait $worker $coordinator 2>/dev/null
rm -rf "$scratch"
