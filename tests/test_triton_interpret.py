"""mamba-ssm's Triton kernels, through hier_mamba's CUDA adapters, on CPU under Triton's interpreter (fp32).

The chunk scan (length not a multiple of the chunk, 2 groups, initial and final states, dt_limit;
forward and backward), both state updates (with and without D, dt_bias, dt_limit), the gated
RMSNorm, a Mamba2 mixer, a Mamba2 mixer through the fused whole-mixer op (its conv on
causal_conv1d's torch stand-in; forward, backward, final states) and whole models are compared
with the torch ops. The work happens in a
child process, tests/triton_checks.py, because it needs TRITON_INTERPRET=1 before triton is
imported and stand-ins for the compiled extensions and two torch.cuda functions; none of them can
reach this test session (checked below). Skipped when triton, einops, mamba_ssm or causal_conv1d is
not installed: .ci/run installs them, docs/gpu.md says how. Marker: ``triton_interpret``.
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hier_mamba.ops import cuda_kernels_error
from helpers import KERNEL_PACKAGES_MISSING

WORKER = Path(__file__).with_name("triton_checks.py")
CHECKS = ["chunk_scan", "ssd_state_update", "selective_state_update", "gated_rmsnorm", "mamba2_mixer",
          "mamba2_fused", "model_mamba2", "model_mamba1"]
# Relative error in fp32. Measured on CPU: <= 3.3e-6 (chunk-scan gradients), 1.0e-6 (the fused mixer), <= 2e-7
# elsewhere; the kernels sum in another order than the torch ops, so exact equality is not expected.
TOLERANCE = 1e-4

missing = KERNEL_PACKAGES_MISSING  # tests/helpers.py
pytestmark = [
    pytest.mark.triton_interpret,
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (pure-Python install: docs/gpu.md)"),
]


@pytest.fixture(scope="module")
def report() -> dict:
    env = dict(os.environ, TRITON_INTERPRET="1", MAMBA_DETERMINISTIC="1")
    process = subprocess.run([sys.executable, str(WORKER), "--device", "cpu"], env=env, capture_output=True,
                             text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-5000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def test_worker_ran_every_check_under_the_interpreter(report):
    assert report["interpreter"] is True
    assert sorted(report["checks"]) == sorted(CHECKS)


@pytest.mark.parametrize("name", CHECKS)
def test_triton_kernel_matches_torch_op(report, name):
    result = report["checks"][name]
    assert "error" not in result, result.get("error")
    assert result["err"] < TOLERANCE, result
    assert result.get("same_tokens", True), f"greedy generation differs: {result}"
    assert result.get("fused_calls", 1) == 1, f"the fused Mamba2 op did not run: {result}"


def test_no_stand_in_reaches_this_session(report):
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        if importlib.util.find_spec(name) is None:  # not really installed: then no module of that name either
            assert name not in sys.modules
    assert isinstance(torch.cuda.device, type)  # the class, not the worker's CPU stand-in
    if not torch.cuda.is_available() or importlib.util.find_spec("selective_scan_cuda") is None:
        assert cuda_kernels_error() is not None
