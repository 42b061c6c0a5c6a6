#!/usr/bin/env bash
# Builds the libFuzzer targets with clang in build-fuzz/ and runs each for SECONDS_EACH seconds
# (default 20) from a generated seed corpus plus the committed regression inputs. Exits non-zero
# if any fuzzer finds a crash, a sanitizer report, a leak, a huge allocation or a timeout.
# Fuzzers are single-threaded: they run side by side, as many at a time as there are cores.
#   scripts/run_fuzzers.sh [SECONDS_EACH]
#   scripts/run_fuzzers.sh --build-only     build only (scripts/test.sh builds them early)
set -euo pipefail
cd "$(dirname "$0")/.."
build_only=0
if [ "${1:-}" = --build-only ]; then
  build_only=1
  shift
fi
seconds=${1:-20}
build=build-fuzz
targets=(gguf safetensors hf_json streaming_encoder)

CC=clang CXX=clang++ cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DLONGREAD_BUILD_FUZZERS=ON -DLONGREAD_BUILD_TESTS=OFF -DLONGREAD_ENGINE_ONLY=ON >/dev/null
ninja -C "$build" make_fuzz_seeds "${targets[@]/%/_fuzz}"
((build_only)) && exit 0

corpus="$build/fuzz_corpus"
artifacts="$build/fuzz_artifacts"
mkdir -p "$artifacts"
"$build/tests/fuzz/make_fuzz_seeds" "$corpus"

fuzz() {
  local t=$1
  local dirs=("$corpus/$t")
  [[ -d tests/fuzz/corpus/$t ]] && dirs+=("tests/fuzz/corpus/$t")
  # The first corpus directory collects new inputs; the committed one is only read.
  "$build/tests/fuzz/${t}_fuzz" -max_total_time="$seconds" -rss_limit_mb=2048 \
    -malloc_limit_mb=1024 -timeout=10 -print_final_stats=1 -dict=tests/fuzz/fuzz.dict \
    -artifact_prefix="$artifacts/$t-" "${dirs[@]}" 2> "$artifacts/$t.log"
}

declare -A pid_of
running=0
for t in "${targets[@]}"; do
  if ((running >= $(nproc))); then
    wait -n || true  # each fuzzer's own status is read below
    running=$((running - 1))
  fi
  echo "[fuzz] $t for ${seconds}s" >&2
  fuzz "$t" &
  pid_of[$t]=$!
  running=$((running + 1))
done
failed=()
for t in "${targets[@]}"; do
  if ! wait "${pid_of[$t]}"; then
    failed+=("$t")
    tail -n 40 "$artifacts/$t.log" >&2
  else
    grep -E '^(stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' \
      "$artifacts/$t.log" | sed "s/^/[fuzz] $t: /" >&2 || true
  fi
done

if ((${#failed[@]})); then
  echo "[fuzz] FAILED: ${failed[*]} (inputs in $artifacts/; copy a minimized one to" \
       "tests/fuzz/corpus/<target>/ once fixed)" >&2
  exit 1
fi
echo "[fuzz] all fuzzers ran ${seconds}s each without findings" >&2
