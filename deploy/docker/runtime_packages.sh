#!/usr/bin/env bash
# Prints "package=version" for every Debian/Ubuntu package that owns a shared library the given
# binaries load, so that the runtime stage installs exactly the builder's versions (and nothing
# else: no compiler, no -dev package). Libraries no package owns (the CUDA driver, which the
# NVIDIA container runtime mounts) are left out.
#   runtime_packages.sh BINARY... > runtime-packages.txt
set -euo pipefail
for binary in "$@"; do
  # "libfoo.so.1 => /lib/x86_64-linux-gnu/libfoo.so.1 (0x...)": the resolved path, if any.
  ldd "$binary" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }'
done | sort -u | while read -r lib; do
  real=$(readlink -f "$lib")
  # dpkg knows a file by the path its package shipped, /lib or /usr/lib (merged /usr).
  for path in "$lib" "$real" "/usr$lib" "/usr$real" "${lib#/usr}" "${real#/usr}"; do
    if owner=$(dpkg-query -S "$path" 2>/dev/null); then
      echo "${owner%%: *}"
      break
    fi
  done
done | tr ',' '\n' | sed 's/^ *//' | sort -u | while read -r package; do
  dpkg-query -W -f='${binary:Package}=${Version}\n' "$package"
done
