#!/usr/bin/env bash
# Builds the scorer-calibration corpus (engine/scorer/weights/README.md) in OUT_DIR: freely
# licensed prose and code that every Debian machine and every checkout of this repository has.
#   licenses/  the license texts of Debian's base-files (/usr/share/common-licenses; symlinks,
#              which only duplicate other entries, are skipped)
#   repo/      this repository's C++ sources and Markdown docs (*.cc, *.h, *.md) as of COMMIT
#              (default HEAD), read from git so the working tree's state does not matter
# Deterministic for a given base-files version and COMMIT. Prints a manifest (sha256 per file)
# and one digest over it on stdout.
#
# Usage: scripts/make_calibration_corpus.sh OUT_DIR [COMMIT]
set -euo pipefail

if [[ $# -lt 1 || $# -gt 2 ]]; then
  echo "usage: $0 OUT_DIR [COMMIT]" >&2
  exit 2
fi
out=$1
repo=$(cd "$(dirname "$0")/.." && pwd)
commit=$(git -C "$repo" rev-parse --verify "${2:-HEAD}^{commit}")

rm -rf "$out"
mkdir -p "$out/licenses" "$out/repo"
find /usr/share/common-licenses -maxdepth 1 -type f -print0 | sort -z |
  xargs -0 -I{} cp {} "$out/licenses/"
git -C "$repo" ls-tree -r --name-only "$commit" | LC_ALL=C sort |
  grep -E '\.(cc|h|md)$' | while IFS= read -r path; do
    mkdir -p "$out/repo/$(dirname "$path")"
    git -C "$repo" show "$commit:$path" >"$out/repo/$path"
  done

echo "# calibration corpus: commit $commit, base-files $(dpkg-query -W -f='${Version}' base-files 2>/dev/null || echo unknown)"
manifest=$(cd "$out" && find . -type f -print0 | LC_ALL=C sort -z | xargs -0 sha256sum)
echo "$manifest"
echo "# files: $(echo "$manifest" | wc -l), bytes: $(cd "$out" && find . -type f -print0 | xargs -0 cat | wc -c)"
echo "# digest: $(echo "$manifest" | sha256sum | cut -d' ' -f1)"
