#!/usr/bin/env bash
# Every check of the GPU path that needs a GPU, as one command for a short, offline GPU session
# (docs/gpu.md records what it measured):
#
#   scripts/gpu_check.sh CARRY_DIR OUT_DIR [ARCH]
#
# CARRY_DIR holds wheels/*.whl (installed with --no-deps into /tmp/site, ahead of the machine's own
# packages: e.g. a newer transformers) and sdists/ (causal_conv1d-*.tar.gz, mamba_ssm-*.tar.gz; see
# scripts/build_cuda_kernels.sh for how to fetch them). ARCH defaults to 90 (H100/H200).
# Steps, each under its own time limit, none stopping the next; all output goes to OUT_DIR/log:
#   1. environment (GPU, nvcc, torch, triton, transformers);
#   2. in the background: the kernel build, both packages at once on their own cores (causal-conv1d
#      on 0-3, mamba-ssm on 4-11), BUILD_LIMIT s (default 280: on an H200 machine mamba-ssm took 148 s,
#      causal-conv1d had not finished after 200 s when it shared 12 cores with mamba-ssm: docs/gpu.md);
#   3. meanwhile: mamba-ssm's Triton kernels vs the torch ops on the GPU in fp32 and bf16
#      (tests/triton_checks.py, mamba-ssm's pure-Python part from the sdist) -> triton_gpu.json;
#   4. meanwhile: scripts/bench_gpu.py without the compiled kernels -> bench_triton.json;
#   5. after the build, if the kernels import: pytest -m gpu, and bench_gpu.py with them -> bench_kernels.json.
# TOTAL (default 400 s; give the run tool's timeout 15 s more) bounds the whole run; the Triton users run with MAMBA_DETERMINISTIC=1 (one
# autotune config each: compile time, not speed, is what a short lease runs out of).
set -uo pipefail
carry=$(cd "$1" && pwd)
mkdir -p "$2" && out=$(cd "$2" && pwd)
arch=${3:-90}
TOTAL=${TOTAL:-400}
BUILD_LIMIT=${BUILD_LIMIT:-280}
cd "$(dirname "$0")/.."
exec > >(tee -a "$out/log") 2>&1
step() { echo "=== [${SECONDS} s] $*"; }
left() { echo $((TOTAL - SECONDS)); }
export PYTHONUNBUFFERED=1 MAMBA_DETERMINISTIC=1

step "1. environment"
if ! command -v python >/dev/null; then  # the build script and pip's build backends call `python`
  mkdir -p /tmp/pybin && ln -sf "$(command -v python3)" /tmp/pybin/python && export PATH=/tmp/pybin:$PATH
fi
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
  "$carry"/wheels/*.whl || echo "wheel install failed"
export PYTHONPATH=/tmp/site:$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv || true
nvcc --version | tail -n 2 || true
python3 -c 'import torch, triton, transformers; print("torch", torch.__version__, "cuda", torch.version.cuda,
"| triton", triton.__version__, "| transformers", transformers.__version__, "|", torch.cuda.get_device_name())'
nproc
pin_conv="" pin_mamba="" pin_py=""
if command -v taskset >/dev/null && [ "$(nproc)" -ge 16 ]; then
  pin_conv="taskset -c 0-3" pin_mamba="taskset -c 4-11" pin_py="taskset -c 12-15"
fi
src=/tmp/kernel_src  # the sdists' pure-Python parts, for steps 3-4 (no compiled extension needed)
mkdir -p $src && for archive in "$carry"/sdists/*.tar.gz; do tar -xzf "$archive" -C $src; done
src_path=$(ls -d $src/*/ | tr '\n' ':')

step "2. kernel build in the background (limit ${BUILD_LIMIT} s)"
build() {  # PACKAGE MAX_JOBS PIN
  local start=$SECONDS
  PACKAGES=$1 MAX_JOBS=$2 BUILD_LOG_DIR=$out $3 timeout "$BUILD_LIMIT" scripts/build_cuda_kernels.sh "$carry/sdists" "$arch"
  echo "exit status $? after $((SECONDS - start)) s"
}
build causal_conv1d 4 "$pin_conv" 2>&1 | sed -u 's/^/[build causal_conv1d] /' &
builds=($!)
build mamba_ssm 8 "$pin_mamba" 2>&1 | sed -u 's/^/[build mamba_ssm] /' &
builds+=($!)

step "3. Triton kernels vs torch ops on the GPU, fp32 and bf16"
PYTHONPATH=$src_path$PYTHONPATH $pin_py timeout 90 python3 tests/triton_checks.py --device cuda \
  --dtypes float32 bfloat16 --json "$out/triton_gpu.json" >/dev/null
echo "exit status $?"

step "4. benchmark without the compiled kernels"
PYTHONPATH=$src_path$PYTHONPATH $pin_py timeout 70 python3 scripts/bench_gpu.py --budget-s 40 \
  --json "$out/bench_triton.json"
echo "exit status $?"

step "waiting for the build"
wait "${builds[@]}"  # not a bare `wait`: that would also wait for the tee above
if [ "$(left)" -lt 60 ]; then
  step "5. skipped: $(left) s left"
elif python3 -c 'import causal_conv1d, mamba_ssm' 2>/dev/null; then
  limit=$(( $(left) - 55 < 60 ? $(left) - 55 : 60 ))
  step "5a. pytest -m gpu (limit $limit s)"
  timeout $limit python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
  echo "exit status $?"
  step "5b. benchmark with the compiled kernels"
  timeout $(( $(left) - 5 )) python3 scripts/bench_gpu.py --budget-s $(( $(left) - 30 )) --json "$out/bench_kernels.json"
  echo "exit status $?"
else
  step "5. skipped: the kernels do not import"
  python3 -c 'import causal_conv1d, mamba_ssm' 2>&1 | tail -n 3
fi
step "done"
sleep 1  # let tee finish the log
