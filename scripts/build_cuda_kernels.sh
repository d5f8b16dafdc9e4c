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
#
# Why the patch: both setup.py files hard-code a -gencode list of up to 10 architectures and ignore
# TORCH_CUDA_ARCH_LIST; compiling only the GPU's own architecture cuts the build several-fold.
set -euo pipefail
sdist_dir=$(cd "$1" && pwd)
arch=${2:-$(python -c 'import torch; major, minor = torch.cuda.get_device_capability(); print(f"{major}{minor}")')}
work=$(mktemp -d)
export MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE  # never try to download a prebuilt wheel
export MAX_JOBS=${MAX_JOBS:-$(nproc)}

for package in causal_conv1d mamba_ssm; do
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
  echo "building $package for sm_$arch with MAX_JOBS=$MAX_JOBS"
  python -m pip install --no-build-isolation --no-deps --no-index -v "$source_dir" 2>&1 | tail -n 5
done
python -c 'import causal_conv1d, mamba_ssm; print("kernels import:", causal_conv1d.__version__, mamba_ssm.__version__)'
