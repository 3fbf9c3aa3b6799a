#!/usr/bin/env bash
# GPU check for the rasterizer: build the CUDA kernels, run the gpu tests, benchmark cuda (and gsplat).
# Run in the repository root on a machine with a GPU, a CUDA build of torch and nvcc. Logs and JSON go to
# $OUT when set (the device machine), else benchmarks/results/. Every step runs even if an earlier one
# failed; the whole script stays under ~8 minutes (~13 with the NeRF lego run).
set -x
cd "$(dirname "$0")/.." || exit 1
dest="${OUT:-benchmarks/results}"
mkdir -p "$dest"
log="$dest/gpu_check.log"
: > "$log"
py="${PYTHON:-.venv/bin/python}"
[ -x "$py" ] || py="$(command -v python3)"
if [ -z "${CUDA_HOME:-}" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then export CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then CUDA_HOME="$(dirname "$(dirname "$(readlink -f "$(command -v nvcc)")")")"; export CUDA_HOME
  fi
fi
export TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}"
export TORCH_EXTENSIONS_DIR="${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}"
export MAX_JOBS="${MAX_JOBS:-8}"
status=0
step() {  # step NAME TIMEOUT_S COMMAND...: run, tee into the log, remember failures, go on
  local name="$1" limit="$2"
  shift 2
  echo "=== $name ($(date -u +%H:%M:%S))" | tee -a "$log"
  timeout "$limit" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc" | tee -a "$log"
  [ "$rc" -eq 0 ] || status=1
}
step "environment" 60 bash -c "nvidia-smi; '$py' -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.is_available())'; echo CUDA_HOME=\$CUDA_HOME; \$CUDA_HOME/bin/nvcc --version"
step "compile check" 120 bash cuda/compile_check.sh
step "build cuda kernels" 300 "$py" -c "from recon3d.backends.kernels import load_kernels; m = load_kernels(with_cuda=True); print('built with cuda:', m.built_with_cuda())"
step "pytest -m gpu" 240 "$py" -m pytest -m gpu -q -p no:cacheprovider tests/test_render_cuda.py
backends="cuda"
"$py" -c "import gsplat" 2>/dev/null && backends="cuda gsplat"
# shellcheck disable=SC2086
step "benchmark" 240 "$py" benchmarks/rasterize.py --backends $backends --sizes 100000 500000 --res 400 800 --repeats 10 \
  --out "$dest/rasterize_gpu.json"
# the anti-aliased mode, cuda against gsplat's rasterize_mode="antialiased" (issue 17)
# shellcheck disable=SC2086
step "benchmark antialiased" 180 "$py" benchmarks/rasterize.py --backends $backends --sizes 100000 500000 --res 800 \
  --repeats 10 --antialiased --out "$dest/rasterize_gpu_antialiased.json"
# large captures on one GPU (issue 21): peak RSS and steps/s of 600 views at 1600x1200 against 60, cuda backend
step "scale, 1 GPU" 240 "$py" benchmarks/scale.py --skip processes --steps 100 --threads 8 --work /tmp/recon3d-scale \
  --out "$dest/scale_gpu.json"
# NeRF on the GPU (issue 20): our CUDA kernels (built first, outside the clock), their gpu tests (CUDA vs CPU
# kernels, tcnn parity where tinycudann is installed, a short training on cuda), then lego 400^2 trained for
# 2 minutes on the GPU (target: held-out val/ >= 32 dB). The lego folder: $LEGO, else ../shared/data/lego or
# shared/data/lego (carry it there: train/, val/ and their transforms are what the run reads)
step "nerf cuda kernels" 300 "$py" -c "from recon3d.nerf import kernels; ok = kernels.cuda_available(); print('nerf cuda kernels:', ok, kernels.cuda_build_error() or ''); raise SystemExit(0 if ok else 1)"
step "pytest -m gpu nerf" 300 "$py" -m pytest -m gpu -q -p no:cacheprovider -rs tests/test_nerf_tcnn.py
lego="${LEGO:-}"
for d in ../shared/data/lego ../../shared/data/lego shared/data/lego; do
  [ -z "$lego" ] && [ -f "$d/transforms_train.json" ] && lego="$d"
done
if [ -n "$lego" ]; then
  step "nerf lego 2 min" 420 "$py" benchmarks/nerf.py train "$lego" --minutes 2 --device cuda --threads 8 \
    --set nerf.samples_per_step=262144 --out /tmp/recon3d-nerf-lego-gpu --json "$dest/nerf_lego_gpu.json"
else
  echo "=== nerf lego 2 min: skipped, no lego folder (set LEGO=path/to/lego)" | tee -a "$log"
fi
echo "gpu_check: done, status $status; logs in $log" | tee -a "$log"
exit $status
