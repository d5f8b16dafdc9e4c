"""Ops compute in fp32 whatever autocast region calls them, and return the caller's dtype.

Under ``torch.autocast`` every matmul inside an op would run in fp16 / bf16: SSD's factorized decays reach
exp(+-60) (fp16 overflows past exp(11)), its chunk products sum up to Q terms, and bf16 keeps 8 bits of each.
The ops already take their inputs to fp32 and cast their outputs back to the input's dtype, so switching autocast
off for the op's body is all it takes; :func:`fp32_op` does that, and nothing at all when no autocast is active
(the fp32 path pays one check). mamba_ssm's kernels do the same (``custom_fwd(cast_inputs=...)``, fp32 inside).
"""

from __future__ import annotations

import functools

import torch

AUTOCAST_DEVICES = ("cpu", "cuda")


def autocast_active() -> bool:
    """Whether an autocast region is active on any device an op may run on."""
    return any(torch.is_autocast_enabled(device) for device in AUTOCAST_DEVICES)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op computes in for input ``x``: fp32, or float64 for float64 inputs (gradcheck)."""
    return torch.promote_types(x.dtype, torch.float32)


def fp32_op(fn):
    """Run ``fn`` with autocast off (its body computes in the dtypes it chooses: fp32 for the ops)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not autocast_active():
            return fn(*args, **kwargs)
        with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
            return fn(*args, **kwargs)

    return wrapper
