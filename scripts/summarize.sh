#!/usr/bin/env bash
# The main job, from nothing: set up, build, and summarize a long document with the default model,
# on the GPU when this build has CUDA and one is visible, else on the CPU (--device auto; pass
# --device cpu or --device cuda to choose).   scripts/summarize.sh [FILE] [longread run options...]
# Without FILE it reads the GNU GPL version 3 (/usr/share/common-licenses/GPL-3, shipped by
# Debian's base-files package on every Debian machine; ~35 KB, ~8K tokens).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --no-venv
build=build
if [ ! -f "$build/build.ninja" ]; then
  cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DLONGREAD_BUILD_TESTS=OFF \
    -DLONGREAD_UNITY_BUILD=ON >/dev/null
fi
ninja -C "$build" longread >/dev/null
doc=/usr/share/common-licenses/GPL-3
if [ $# -gt 0 ] && [ "${1#-}" = "$1" ]; then
  doc=$1
  shift
fi
exec "$build/services/cli/longread" run --task summarize --device auto "$@" "$doc"
