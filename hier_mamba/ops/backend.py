"""Backend dispatch: the one place that decides between the torch ops and the CUDA kernels.

``get_ops(requested, device)`` returns an :class:`Ops` bundle whose functions all share the torch
ops' signatures (functional: states in, new states out, inputs never modified):

    "torch"  the pure-PyTorch ops of this package (any device);
    "cuda"   mamba_ssm / causal_conv1d kernels (raises with an install hint when they are missing,
             or when the tensors are not on a CUDA device);
    "auto"   "cuda" when the kernels import and the tensors are on CUDA, else "torch" (on a CUDA
             device without the kernels this warns once, naming the install command).

The choice is logged once per (requested, device type). Nothing global is rebound.
"""

from __future__ import annotations

import functools
import logging
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from .conv import causal_conv1d, causal_conv1d_step
from .selective_scan import selective_scan, selective_state_update
from .split_conv import split_causal_conv1d
from .ssd import ssd_chunked, ssd_state_update

logger = logging.getLogger(__name__)

INSTALL_HINT = (
    "install the CUDA kernels with: MAMBA_FORCE_BUILD=TRUE CAUSAL_CONV1D_FORCE_BUILD=TRUE "
    "pip install --no-build-isolation 'hier_mamba[cuda]' (see docs/gpu.md)"
)


@dataclass(frozen=True)
class Ops:
    """The ops one mixer call uses; see ops/conv.py, ops/selective_scan.py and ops/ssd.py for shapes.

    ``split_conv`` (ops/split_conv.py) fuses Mamba2's projection split with ``conv``; a bundle without it (None:
    the kernels, whose own fusion takes the whole mixer) gets the split and ``conv`` called one after the other.
    ``mamba2_fused`` (the kernels' whole Mamba2 mixer from zero states) and ``gated_norm`` (their fp16 / bf16 gated
    RMSNorm) exist only in the kernels' bundle; see ops/cuda_kernels.py for their signatures."""

    name: str
    conv: Callable
    conv_step: Callable
    selective_scan: Callable
    selective_state_update: Callable
    ssd: Callable
    ssd_state_update: Callable
    split_conv: Callable | None = None
    mamba2_fused: Callable | None = None
    gated_norm: Callable | None = None


TORCH_OPS = Ops("torch", causal_conv1d, causal_conv1d_step, selective_scan, selective_state_update,
                ssd_chunked, ssd_state_update, split_causal_conv1d)


@functools.lru_cache(maxsize=1)
def cuda_kernels_error() -> str | None:
    """None when mamba_ssm and causal_conv1d import with their compiled extensions, else the reason."""
    try:
        import causal_conv1d  # noqa: F401
        import mamba_ssm  # noqa: F401
    except Exception as error:  # their __init__ fails without the compiled extension
        return f"{type(error).__name__}: {error}"
    return None


_RESOLVED: dict[tuple[str, str], Ops] = {}  # a plain dict: torch.compile reads it without a graph break


def get_ops(requested: str, device: torch.device) -> Ops:
    """Resolve ``requested`` ("auto" | "torch" | "cuda") for tensors on ``device``."""
    key = (requested, device.type if isinstance(device, torch.device) else torch.device(device).type)
    ops = _RESOLVED.get(key)
    if ops is None:  # first use: resolve, warn and log once
        ops = _RESOLVED[key] = _resolve(*key)
    return ops


def clear_resolutions() -> None:
    """Forget every resolution (tests that change what is importable)."""
    _RESOLVED.clear()


def _resolve(requested: str, device_type: str) -> Ops:
    if requested == "torch":
        ops = TORCH_OPS
    elif requested == "cuda":
        error = cuda_kernels_error()
        if error is not None:
            raise ImportError(f"ssm_backend='cuda' needs mamba_ssm and causal_conv1d ({error}); {INSTALL_HINT}")
        if device_type != "cuda":
            raise ValueError(f"ssm_backend='cuda' needs tensors on a CUDA device, got device type {device_type!r}")
        ops = _cuda_ops()
    elif requested == "auto":
        error = cuda_kernels_error() if device_type == "cuda" else None
        if error is not None:  # once per process: get_ops keeps the resolution
            warnings.warn(f"hier_mamba: tensors are on CUDA but the mamba-ssm / causal-conv1d kernels do not import "
                          f"({error}), so the slow pure-PyTorch ops run; {INSTALL_HINT}. "
                          "ssm_backend='torch' silences this.", stacklevel=4)
        ops = _cuda_ops() if device_type == "cuda" and error is None else TORCH_OPS
    else:
        raise ValueError(f"ssm_backend must be 'auto', 'torch' or 'cuda', got {requested!r}")
    if not torch.compiler.is_compiling():  # a logger call is a graph break
        logger.info("hier_mamba: ssm_backend=%r on %s -> %s ops", requested, device_type, ops.name)
    return ops


def _cuda_ops() -> Ops:
    from . import cuda_kernels

    return Ops("cuda", cuda_kernels.conv, cuda_kernels.conv_step, cuda_kernels.selective_scan,
               cuda_kernels.selective_state_update, cuda_kernels.ssd, cuda_kernels.ssd_state_update,
               mamba2_fused=cuda_kernels.mamba2_split_conv_scan, gated_norm=cuda_kernels.gated_rmsnorm)
