#!/usr/bin/env bash
# Decode on the device, in one command on the device machine: the device sampler's and the
# device-choice tests (label gpu), `longread generate --device cuda`, decode_bench after 128K
# tokens (host / device / top-p choice), transformers' generate after 128K on the same GPU,
# and an ncu profile of three decode steps after 8K (kernels and time per step, ncu_summary.py).
# Outputs go to OUT_DIR (one log per step, decode.json, hf-decode.json, ncu.csv, profile.txt).
#   bench/gpu/decode_run.sh BIN_DIR MODEL.gguf TEXT OUT_DIR
set -uo pipefail
bin=$1 model=$2 text=$3 out=$4
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$out"
step() {  # name, seconds, command...: runs it with a limit, logs it, prints its last lines
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  timeout "$limit" "$@" >"$out/$name.log" 2>&1
  echo "== $name rc=$? $((SECONDS - start))s"
  grep -E "^\[  (PASSED|FAILED)|FAILED  \]|\[device|tokens/s|DIFFER|hf generate|^[0-9]+ kernels" \
    "$out/$name.log" | head -12
}
export LONGREAD_REQUIRE_GPU=1
step sampler 20 "$bin/cuda_sampler_test"
step session 40 "$bin/cuda_session_test" --gtest_filter='*TokensChosenOnTheDevice*'
step generate 20 "$bin/longread" generate --model "$model" --device cuda --max-tokens 24 \
  --prompt "Name three colors."
step decode 45 "$bin/decode_bench" --model "$model" --text "$text" --tokens 131072 \
  --decode 48 --json "$out/decode.json"
step hf 45 python3 "$here/hf_decode_bench.py" --lengths 131072 --new 32 \
  --json "$out/hf-decode.json"
timeout 25 ncu --clock-control none --cache-control none --profile-from-start off \
  --metrics gpu__time_duration.sum --csv "$bin/decode_bench" --model "$model" --text "$text" --tokens 8192 --decode 12 \
  --modes device --profile-steps 3 >"$out/ncu.csv" 2>"$out/ncu.err"
echo "== ncu rc=$?"
python3 "$here/ncu_summary.py" "$out/ncu.csv" >"$out/profile.txt" 2>&1
head -14 "$out/profile.txt"
