#!/usr/bin/env bash
# Pins the quality bench's default haystack corpus into a folder, so that runs on different
# machines (the dev box, a lent GPU machine's host) read the same documents for the same seed.
# Takes what DefaultHaystackDirs() would read here: the licenses, 400 of /usr/share/doc's
# copyright files and 150 C++ standard headers (each spread evenly over the sorted file list, as
# the bench does), and this repository's engine/ kernels/ services/ cache/ at REV (default HEAD).
#   bench/quality/make_corpus.sh [OUT_DIR [REV]]   (default data/haystack HEAD)
# The issue-12 and GPU tables used REV 461f555: pass it to read their documents again.
# Then: longread_quality_bench $(sed 's/^/--haystack-dir /' OUT_DIR/dirs.txt) ...
set -euo pipefail
cd "$(dirname "$0")/../.."
out=${1:-data/haystack}
rev=${2:-HEAD}
rm -rf "$out"
mkdir -p "$out"/licenses "$out"/doc "$out"/cxx "$out"/repo
cp -r /usr/share/common-licenses/. "$out"/licenses/
pick() {  # pick N FILE...: N files spread evenly over the (sorted) list
  local n=$1
  shift
  local total=$# i
  ((total == 0)) && return 0
  local files=("$@")
  ((n > total)) && n=$total
  for ((i = 0; i < n; i++)); do echo "${files[i * total / n]}"; done
}
text() { grep -Il . "$@" 2>/dev/null || true; }  # text files only, as the bench keeps
mapfile -t doc < <(find /usr/share/doc -name copyright -type f | LC_ALL=C sort | xargs -r -d '\n' grep -Il . 2>/dev/null || true)
i=0
for f in $(pick 400 "${doc[@]}"); do
  mkdir -p "$out/doc/$i" && cp "$f" "$out/doc/$i/copyright"
  i=$((i + 1))
done
mapfile -t cxx < <(find /usr/include/c++/12 -type f | LC_ALL=C sort | xargs -r -d '\n' grep -Il . 2>/dev/null || true)
i=0
for f in $(pick 150 "${cxx[@]}"); do
  mkdir -p "$out/cxx/$(printf %03d $i)" && cp "$f" "$out/cxx/$(printf %03d $i)/"
  i=$((i + 1))
done
git archive "$rev" engine kernels services cache | tar -x -C "$out"/repo
{
  echo "$out/licenses"
  echo "$out/doc:copyright"
  echo "$out/cxx"
  for d in engine kernels services cache; do echo "$out/repo/$d"; done
} >"$out"/dirs.txt
echo "pinned corpus in $out ($(du -sh "$out" | cut -f1), $(find "$out" -type f | wc -l) files, from $(git rev-parse --short "$rev"))"
