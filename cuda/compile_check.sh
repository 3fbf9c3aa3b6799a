#!/usr/bin/env bash
# Compile every CUDA source in cuda/ with nvcc (no GPU needed) and fail on the first error.
# CI (.ci/run) calls this wherever nvcc exists. Usage: bash cuda/compile_check.sh [extra nvcc flags]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
nvcc_bin="${NVCC:-}"
if [ -z "$nvcc_bin" ]; then
  if [ -n "${CUDA_HOME:-}" ] && [ -x "$CUDA_HOME/bin/nvcc" ]; then nvcc_bin="$CUDA_HOME/bin/nvcc"
  elif command -v nvcc >/dev/null 2>&1; then nvcc_bin="$(command -v nvcc)"
  elif [ -x /usr/local/cuda/bin/nvcc ]; then nvcc_bin=/usr/local/cuda/bin/nvcc
  else echo "compile_check: nvcc not found (set CUDA_HOME, e.g. CUDA_HOME=/usr/local/cuda)" >&2; exit 2
  fi
fi
arch="${CUDA_ARCH:-sm_90}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
status=0
mapfile -t sources < <(find "$here" -name '*.cu' | sort)
if [ "${#sources[@]}" -eq 0 ]; then echo "compile_check: no .cu files under $here" >&2; exit 1; fi
for src in "${sources[@]}"; do
  rel="${src#"$here"/}"
  start=$(date +%s)
  if "$nvcc_bin" -arch="$arch" -std=c++17 -O3 -DRECON3D_WITH_CUDA -Werror all-warnings -I"$here/include" \
      -c "$src" -o "$out/$(basename "$src").o" "$@"; then
    echo "compile_check: ok   $rel ($(( $(date +%s) - start )) s, $arch)"
  else
    echo "compile_check: FAIL $rel" >&2
    status=1
  fi
done
exit $status
