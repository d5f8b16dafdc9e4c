#!/usr/bin/env bash
# Build causal-conv1d and mamba-ssm from their source distributions for ONE GPU architecture,
# offline, against the torch already installed (see docs/gpu.md).
#
#   scripts/build_cuda_kernels.sh SDIST_DIR [ARCH]
#
# SDIST_DIR holds causal_conv1d-*.tar.gz and mamba_ssm-*.tar.gz, fetched beforehand on a machine
# with network access:
#   MAMBA_SKIP_CUDA_BUILD=TRUE CAUSAL_CONV1D_SKIP_CUDA_BUILD=TRUE pip download --no-deps \
#       --no-build-isolation --no-binary :all: causal-conv1d==1.7.0 mamba-ssm==2.3.2.post1 -d SDIST_DIR
# ARCH is the compute capability without the dot (default: the visible GPU's, e.g. 90 for H100/H200).
# PACKAGES (default "causal_conv1d mamba_ssm") picks which to build, e.g. to build both at once from two
# processes; each package's full pip log goes to $BUILD_LOG_DIR/build_<package>.log (default: a temp dir).
#
# Why the patch: both setup.py files hard-code a -gencode list of up to 10 architectures and ignore
# TORCH_CUDA_ARCH_LIST; compiling only the GPU's own architecture cuts the build several-fold.
set -euo pipefail
sdist_dir=$(cd "$1" && pwd)
arch=${2:-$(python -c 'import torch; major, minor = torch.cuda.get_device_capability(); print(f"{major}{minor}")')}
work=$(mktemp -d)
log_dir=${BUILD_LOG_DIR:-$work}
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE  # never try to download a prebuilt wheel
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-${arch:0:-1}.${arch: -1}}  # torch's own -gencode: the same one

for package in ${PACKAGES:-causal_conv1d mamba_ssm}; do
  archive=$(ls "$sdist_dir"/${package}-*.tar.gz | head -n 1)
  tar -xzf "$archive" -C "$work"
  source_dir=$(ls -d "$work"/${package}-*/ | head -n 1)
  # Replace every hard-coded -gencode append by `pass` (keeps the if-blocks valid), then add ours.
  python - "$source_dir/setup.py" "$arch" <<'PY'
import re, sys
path, arch = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r'cc_flag\.append\("-gencode"\)', "pass", text)
text = re.sub(r'cc_flag\.append\("arch=compute_\d+a?,code=sm_\d+a?"\)', "pass", text)
text, count = re.subn(r"(\n(\s*)cc_flag = \[\]\n)",
                      rf'\1\2cc_flag += ["-gencode", "arch=compute_{arch},code=sm_{arch}"]\n', text, count=1)
if count != 1:
    sys.exit(f"could not find `cc_flag = []` in {path}: the setup.py layout changed")
open(path, "w").write(text)
PY
  echo "building $package for sm_$arch with MAX_JOBS=$MAX_JOBS (log: $log_dir/build_$package.log)"
  start=$SECONDS
  if ! python -m pip install --no-build-isolation --no-deps --no-index -v "$source_dir" >"$log_dir/build_$package.log" 2>&1; then
    grep -E -m 20 "error|Error" "$log_dir/build_$package.log" || true
    tail -n 20 "$log_dir/build_$package.log"
    echo "FAILED: $package after $((SECONDS - start)) s"
    exit 1
  fi
  echo "built $package in $((SECONDS - start)) s"
done
python -c 'import importlib; [print("imports:", m, importlib.import_module(m).__version__) for m in "'"${PACKAGES:-causal_conv1d mamba_ssm}"'".split()]'
