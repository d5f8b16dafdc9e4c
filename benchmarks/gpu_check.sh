#!/usr/bin/env bash
# Every check and measurement of the GPU path that needs a GPU, as one command for one short, offline GPU session
# (under 10 minutes; docs/gpu.md and docs/benchmarks.md record what it measured):
#
#   benchmarks/gpu_check.sh CARRY_DIR OUT_DIR [ARCH]
#
# CARRY_DIR holds wheels/*.whl (installed with --no-deps into /tmp/site, ahead of the machine's own packages: e.g.
# transformers 5.24, pytest) and sdists/ (causal_conv1d-*.tar.gz, mamba_ssm-*.tar.gz; scripts/build_cuda_kernels.sh says
# how to fetch them). ARCH defaults to 90 (H100/H200). Steps, each under its own time limit, none stopping the next;
# all output goes to OUT_DIR/log, results to OUT_DIR/*.json:
#   1. environment (GPU, nvcc, torch, triton, transformers);
#   2. causal-conv1d's build, alone on every core, CONV_LIMIT s (default 300: it had not finished after 200 s
#      on 4 cores beside the mamba-ssm build);
#   3. mamba-ssm's build on every core, MAMBA_LIMIT s (default 200; it took 148 s on 12 cores);
#   4. if both import: pytest -m gpu (the kernels vs the torch ops, the fused Mamba2 op, autocast on the kernels);
#   5. the Triton kernels and the fused Mamba2 op vs the torch ops in fp32 and bf16 -> triton_gpu.json;
#   6. benchmarks/bench_gpu.py: training tok/s at 1x1 cycles and decode ms/token (eager; CUDA graphs: our
#      static-cache compiled generate and compile_decoding, mamba_ssm's generate(cg=True)) against transformers'
#      Mamba2 and mamba_ssm's MambaLMHeadModel at equal width and depth, bf16 then fp32, until TOTAL -> bench.json.
# Without the compiled kernels (a failed build) steps 5-6 still run on the Triton kernels (step 4 is skipped).
# TOTAL (default 570 s; give the run tool's timeout 20 s more) bounds the whole run.
set -uo pipefail
carry=$(cd "$1" && pwd)
mkdir -p "$2" && out=$(cd "$2" && pwd)
arch=${3:-90}
TOTAL=${TOTAL:-570}
CONV_LIMIT=${CONV_LIMIT:-300}
MAMBA_LIMIT=${MAMBA_LIMIT:-200}
cd "$(dirname "$0")/.."
exec > >(tee -a "$out/log") 2>&1
step() { echo "=== [${SECONDS} s] $*"; }
left() { echo $((TOTAL - SECONDS)); }
smaller() { echo $(( $1 < $2 ? $1 : $2 )); }
export PYTHONUNBUFFERED=1

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
echo "cores: $(nproc)"

build() {  # PACKAGE LIMIT
  local start=$SECONDS
  PACKAGES=$1 MAX_JOBS=$(nproc) BUILD_LOG_DIR=$out timeout "$2" scripts/build_cuda_kernels.sh "$carry/sdists" "$arch"
  echo "exit status $? after $((SECONDS - start)) s"
}
step "2. causal-conv1d build, every core (limit ${CONV_LIMIT} s)"
build causal_conv1d "$CONV_LIMIT" 2>&1 | sed -u 's/^/[build causal_conv1d] /'
mamba_limit=$(smaller "$MAMBA_LIMIT" $(( $(left) - 200 )))
step "3. mamba-ssm build, every core (limit ${mamba_limit} s)"
if [ "$mamba_limit" -gt 30 ]; then
  build mamba_ssm "$mamba_limit" 2>&1 | sed -u 's/^/[build mamba_ssm] /'
else
  echo "skipped: $(left) s left"
fi

src_path=""
if python3 -c 'import causal_conv1d, mamba_ssm' 2>/dev/null; then
  step "4. pytest -m gpu (limit $(smaller 100 $(( $(left) - 120 ))) s)"
  timeout "$(smaller 100 $(( $(left) - 120 )))" python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py
  echo "exit status $?"
else
  step "4. skipped: the kernels do not import; steps 5-6 on mamba-ssm's Python part from the sdist"
  python3 -c 'import causal_conv1d, mamba_ssm' 2>&1 | tail -n 3
  src=/tmp/kernel_src && mkdir -p $src
  for archive in "$carry"/sdists/*.tar.gz; do tar -xzf "$archive" -C $src; done
  src_path=$(ls -d $src/*/ | tr '\n' ':')
fi

step "5. Triton kernels and the fused Mamba2 op vs the torch ops, fp32 and bf16 (limit 60 s)"
PYTHONPATH=$src_path$PYTHONPATH MAMBA_DETERMINISTIC=1 timeout 60 python3 tests/triton_checks.py --device cuda \
  --dtypes float32 bfloat16 --json "$out/triton_gpu.json" >/dev/null
echo "exit status $?"

step "6. training and decoding against MambaLMHeadModel and transformers' Mamba2 ($(( $(left) - 10 )) s)"
PYTHONPATH=$src_path$PYTHONPATH timeout $(( $(left) - 5 )) python3 benchmarks/bench_gpu.py \
  --budget-s $(( $(left) - 60 )) --json "$out/bench.json"
echo "exit status $?"
step "done"
sleep 1  # let tee finish the log
