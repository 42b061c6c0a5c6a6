#!/usr/bin/env bash
# The whole test suite from nothing (this is what CI runs): set-up, format check, -Werror build,
# unit/integration/fault tests, an ASan+UBSan build of the unit tests, and bounded fuzzing.
#   scripts/test.sh              everything
#   FUZZ_SECONDS=N               seconds per fuzzer (default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
step() { echo "=== $* ==="; }

step "setup"
bash scripts/setup.sh

step "clang-format"
mapfile -t sources < <(git ls-files '*.cc' '*.h' '*.cu' '*.cuh')
if ((${#sources[@]})); then
  clang-format --dry-run --Werror "${sources[@]}"
fi

step "deploy checks"; bash scripts/check_deploy.sh

step "build (Release, -Werror)"
# build/ may already exist, configured by scripts/summarize.sh without tests: force the options
# the suite needs (the objects it built are reused: the same options, unity batches included).
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGREAD_BUILD_TESTS=ON \
  -DLONGREAD_ENGINE_ONLY=OFF -DLONGREAD_UNITY_BUILD=ON >/dev/null
ninja -C build -j"$jobs"

# The sanitizer and fuzzer builds need nothing from the tests' run: they compile at the lowest CPU
# priority while the tests run, on the cycles the tests leave idle (a test waiting on a child
# process, a socket or a kill schedule), so the tests keep the cores they ask for.
# Only the binaries that hold unit tests are sanitized: the sanitizer run is about memory errors in
# our code, not about re-running the model-sized integration tests ten times slower.
unit_targets=$(ctest --test-dir build -L unit -LE 'gpu|slow' --show-only=json-v1 |
  python3 -c 'import json, os, sys
print(" ".join(sorted({os.path.basename(t["command"][0]) for t in json.load(sys.stdin)["tests"]})))')
[ -n "$unit_targets" ] || { echo "no unit tests found in build/" >&2; exit 1; }
background_log=$(mktemp)
# shellcheck disable=SC2016,SC2086  # $1 and ${@:2} belong to the inner bash
setsid -w nice -n 19 bash -c '
  set -euo pipefail
  cmake -S . -B build-asan -G Ninja -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="-O1 -g1" \
    -DLONGREAD_SANITIZE=address,undefined -DLONGREAD_UNITY_BUILD=ON >/dev/null
  ninja -C build-asan -j"$1" ${@:2}
  bash scripts/run_fuzzers.sh --build-only' \
  background-build "$jobs" $unit_targets >"$background_log" 2>&1 &
background=$!
trap 'kill -- -$background 2>/dev/null || true; rm -f "$background_log"' EXIT

step "tests: unit, integration, fault"
ctest --test-dir build -L 'unit|integration|fault' -LE 'gpu|slow' -j"$jobs" --output-on-failure \
  --timeout 900 --no-tests=error

step "build + unit tests under ASan and UBSan"
# The build started before the tests: wait for it (and the fuzzers' build) and show its output.
background_status=0
wait "$background" || background_status=$?
cat "$background_log"
((background_status == 0)) || { echo "sanitizer/fuzzer build failed" >&2; exit 1; }
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan -L unit -LE 'gpu|slow' -j"$jobs" --output-on-failure --timeout 900 \
  --no-tests=error

step "fuzzers (${FUZZ_SECONDS:-20} s each, $jobs at a time)"
bash scripts/run_fuzzers.sh "${FUZZ_SECONDS:-20}"
echo "=== all tests passed ==="
