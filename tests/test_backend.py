"""Backend resolution for CUDA tensors, on any machine: the warning when "auto" has to fall back to
the torch ops on a GPU, and the config's refusal of shapes the CUDA conv kernel cannot take.

No CUDA is needed: ``get_ops`` only reads the device type, and the kernels' availability is
replaced for one test (``monkeypatch``) with the resolution cache cleared before and after.
"""

import warnings

import pytest
import torch

from hier_mamba import HierMambaConfig
from hier_mamba.ops import TORCH_OPS, backend


@pytest.fixture
def kernels_missing(monkeypatch):
    """cuda_kernels_error() reports missing kernels; every cached resolution is dropped around the test."""
    backend.clear_resolutions()
    monkeypatch.setattr(backend, "cuda_kernels_error", lambda: "ModuleNotFoundError: No module named 'selective_scan_cuda'")
    yield
    backend.clear_resolutions()


def test_auto_on_cuda_without_kernels_warns_once_with_the_install_command(kernels_missing):
    with pytest.warns(UserWarning, match="pip install --no-build-isolation") as caught:
        assert backend.get_ops("auto", torch.device("cuda")) is TORCH_OPS
    assert "selective_scan_cuda" in str(caught[0].message)  # names the reason too
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second resolution must not warn again
        assert backend.get_ops("auto", torch.device("cuda", 0)) is TORCH_OPS


def test_auto_on_cpu_and_explicit_torch_stay_silent(kernels_missing):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert backend.get_ops("auto", torch.device("cpu")) is TORCH_OPS
        assert backend.get_ops("torch", torch.device("cuda")) is TORCH_OPS


def test_cuda_without_kernels_raises_with_the_install_command(kernels_missing):
    with pytest.raises(ImportError, match="no-build-isolation"):
        backend.get_ops("cuda", torch.device("cuda"))


@pytest.mark.parametrize("mixer,extra,channels", [
    ("mamba1", dict(hidden_size=30), 60),                     # conv over expand * hidden = 60 channels
    ("mamba2", dict(hidden_size=64, state_size=6, head_dim=16), 140),  # 128 + 2 * 1 * 6
])
def test_cuda_backend_needs_conv_channels_divisible_by_8(mixer, extra, channels):
    with pytest.raises(ValueError, match=f"divisible by 8.*got {channels}"):
        HierMambaConfig(mixer=mixer, ssm_backend="cuda", **extra)
    HierMambaConfig(mixer=mixer, ssm_backend="auto", **extra)  # auto: the adapter falls back to the torch conv
    HierMambaConfig(mixer=mixer, ssm_backend="cuda", **{**extra, "hidden_size": 32, "state_size": 8})
