"""RMSNorm, optionally gated and grouped (Mamba2's ``RMSNormGated`` with norm_before_gate=False)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """y = weight * x / rms(x), rms taken over groups of ``group_size`` channels (default: all).

    With a gate: x is first multiplied by silu(gate) (mamba_ssm's ``norm_before_gate=False``).
    Computed in fp32, returned in the input dtype. x, gate: (..., d) -> (..., d).
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.group_size = group_size or hidden_size

    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        if gate is not None:
            x = x * F.silu(gate.float())
        grouped = x.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        grouped = F.rms_norm(grouped, (self.group_size,), eps=self.eps)  # x / sqrt(mean(x^2) + eps), one fused op
        return self.weight * grouped.flatten(-2).to(dtype)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"
