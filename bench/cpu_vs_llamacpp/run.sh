#!/usr/bin/env bash
# One command for the side-by-side CPU benchmark of Longread and llama.cpp on the same GGUF, the
# same threads and the same token ids of real text. Writes bench/results/cpu-<date>.json (ours),
# bench/results/cpu-vs-llamacpp-<date>.json (both, with ratios) and, unless PROFILE=0,
# bench/results/cpu-profile-<date>.json (time share per op).
#
#   bench/cpu_vs_llamacpp/run.sh            # everything with the defaults below
#   THREADS=2 REPS=3 SPARSEK=8000,32000,128000,1000000 SKIP_TIME=128000,1000000 \
#   SKIP_REASON="..." SPARSEK_REPS=1 NOTES="..." PROFILE=1 bench/cpu_vs_llamacpp/run.sh
#
# llama.cpp is measured twice in the same run, under its default OpenMP wait policy (workers
# spin: its best on an idle machine) and under OMP_WAIT_POLICY=PASSIVE (its best when the cores
# are oversubscribed), and ours is compared against the faster of the two. Do not set
# OMP_WAIT_POLICY yourself: the script sets it for each measurement.
#
# It installs llama-cpp-python (which compiles llama.cpp from source, minutes) into .venv-bench
# when missing (LLAMA_CMAKE_ARGS: llama.cpp's CMake options, default AVX2/FMA/F16C without -march=native; delete
# .venv-bench to rebuild an older install made with -march=native). Never in CI: the comparison is a developer's measurement, not a test.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$(pwd)
LLAMA_CPP_PYTHON_VERSION=0.3.36
MODEL=${MODEL:-$root/models/SmolLM2-135M-Instruct.Q4_1.gguf}
THREADS=${THREADS:-$(nproc)}
REPS=${REPS:-3}
SPARSEK_REPS=${SPARSEK_REPS:-$REPS}
PREFILL=${PREFILL-512,2048,8000}
DECODE_AFTER=${DECODE_AFTER-512,8000}
DECODE_TOKENS=${DECODE_TOKENS:-64}
SPARSEK=${SPARSEK-8000,32000,128000,1000000}
SKIP_TIME=${SKIP_TIME:-}
SKIP_REASON=${SKIP_REASON:-skipped with SKIP_TIME (too long for this machine)}
PROFILE=${PROFILE:-1}
NOTES=${NOTES:-}
date=$(date -u +%Y-%m-%d)${TAG:+-$TAG}  # TAG=quiet: cpu-<date>-quiet.json etc.
BUILD_DIR=${BUILD_DIR:-build-bench}  # a shared machine: each engineer benches from their own build
work=$root/$BUILD_DIR/cpu_vs_llamacpp
results=$root/bench/results

if [ -n "${CI:-}" ]; then
  echo "bench/cpu_vs_llamacpp is not run in CI (it builds llama.cpp from source)" >&2
  exit 1
fi
[ -f "$MODEL" ] || { echo "model missing: $MODEL (run scripts/setup.sh)" >&2; exit 1; }

py=$root/.venv-bench/bin/python
if ! "$py" -c "import llama_cpp, sys; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON_VERSION')" \
    2>/dev/null; then
  echo "installing llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION into .venv-bench (builds llama.cpp)"
  [ -x "$py" ] || python3 -m venv "$root/.venv-bench"
  # Not -march=native: a machine may advertise AMX / AVX-512 that its sandbox does not let a
  # process use (llama.cpp then dies of SIGILL). AVX2 + FMA + F16C, named explicitly (GGML_NATIVE
  # off alone builds a baseline without them, a peer at less than its best), is also the ISA of
  # our own kernels here.
  CMAKE_ARGS=${LLAMA_CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON} \
    "$py" -m pip install --no-cache-dir "llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION" numpy
fi

cmake -S . -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGREAD_NATIVE=OFF \
  -DLONGREAD_ENGINE_ONLY=ON -DLONGREAD_BUILD_TESTS=OFF >/dev/null
ninja -C "$BUILD_DIR" longread_cpu_bench
mkdir -p "$work" "$results"

"$py" bench/cpu_vs_llamacpp/llamacpp_bench.py tokenize --model "$MODEL" --out "$work/tokens.txt"

profile_args=()
[ "$PROFILE" = 1 ] && profile_args=(--profile --profile-json "$results/cpu-profile-$date.json")
LONGREAD_SOURCE_DIR=$root "$BUILD_DIR"/bench/engine/longread_cpu_bench --model "$MODEL" \
  --threads "$THREADS" --tokens "$work/tokens.txt" --prefill "$PREFILL" \
  --decode-after "$DECODE_AFTER" --decode-tokens "$DECODE_TOKENS" --sparsek "$SPARSEK" \
  --skip-time "$SKIP_TIME" --skip-reason "$SKIP_REASON" --reps "$REPS" \
  --sparsek-reps "$SPARSEK_REPS" --notes "$NOTES" --json "$results/cpu-$date.json" \
  "${profile_args[@]}"

measure_llamacpp() {  # OUT.json, then env assignments for the process
  local out=$1
  shift
  env -u OMP_WAIT_POLICY "$@" "$py" bench/cpu_vs_llamacpp/llamacpp_bench.py measure \
    --model "$MODEL" --tokens "$work/tokens.txt" --threads "$THREADS" --prefill "$PREFILL" \
    --decode-after "$DECODE_AFTER" --decode-tokens "$DECODE_TOKENS" --reps "$REPS" --json "$out"
}
echo "llama.cpp, default OpenMP wait policy:"
measure_llamacpp "$work/llamacpp.json"
echo "llama.cpp, OMP_WAIT_POLICY=PASSIVE:"
measure_llamacpp "$work/llamacpp-passive.json" OMP_WAIT_POLICY=PASSIVE

"$py" bench/cpu_vs_llamacpp/compare.py --ours "$results/cpu-$date.json" \
  --llamacpp "$work/llamacpp.json" --llamacpp-passive "$work/llamacpp-passive.json" \
  --out "$results/cpu-vs-llamacpp-$date.json" \
  --command "THREADS=$THREADS REPS=$REPS SPARSEK_REPS=$SPARSEK_REPS SPARSEK=$SPARSEK SKIP_TIME=$SKIP_TIME bench/cpu_vs_llamacpp/run.sh" \
  --notes "$NOTES"
