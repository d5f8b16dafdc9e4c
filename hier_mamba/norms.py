"""RMSNorm, optionally gated and grouped (Mamba2's ``RMSNormGated`` with norm_before_gate=False)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd.function import once_differentiable

from .ops.precision import fp32_op


class RMSNorm(nn.Module):
    """y = weight * x / rms(x), rms taken over groups of ``group_size`` channels (default: all).

    With a gate: x is first multiplied by silu(gate) (mamba_ssm's ``norm_before_gate=False``).
    Computed in fp32 (autocast off inside), returned in the input dtype. x, gate: (..., d) -> (..., d).
    fp32 training runs one autograd node (:class:`GatedRMSNormFunction`); the composite form below is the
    specification and the path of every other dtype and of inference.
    """

    def __init__(self, hidden_size: int, eps: float = 1e-5, group_size: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps
        self.group_size = group_size or hidden_size

    @fp32_op
    def forward(self, x: torch.Tensor, gate: torch.Tensor | None = None) -> torch.Tensor:
        if _one_node(x, gate, self.weight):
            return GatedRMSNormFunction.apply(x, gate, self.weight, self.group_size, self.eps)
        dtype = x.dtype
        x = x.float()
        if gate is not None:
            x = x * F.silu(gate.float())
        grouped = x.unflatten(-1, (-1, self.group_size))  # (..., groups, group_size)
        normed = F.rms_norm(grouped, (self.group_size,), eps=self.eps).flatten(-2)  # x / sqrt(mean(x^2) + eps)
        if self.weight.dtype == normed.dtype:  # fp32 weights (an fp32 model, or autocast): weight in fp32, then cast
            return (self.weight * normed).to(dtype)
        return self.weight * normed.to(dtype)  # a bf16 / fp16 model: transformers' rounding (weight after the cast)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}, group_size={self.group_size}"


def _one_node(x: torch.Tensor, gate: torch.Tensor | None, weight: torch.Tensor) -> bool:
    """fp32 throughout and a gradient to compute (inference keeps the composite's fewer Python calls)."""
    tensors = (x, weight) if gate is None else (x, gate, weight)
    return (torch.is_grad_enabled() and any(t.requires_grad for t in tensors)
            and all(t.dtype == torch.float32 for t in tensors))


class GatedRMSNormFunction(torch.autograd.Function):
    """out = weight * g / sqrt(mean(g^2) + eps) per group of ``group_size`` channels, g = x * silu(gate) (x when
    gate is None); fp32 x, gate (..., d) and weight (d,). The same as :class:`RMSNorm`'s composite form (tests
    compare), with about half its full-size passes over memory, forward and backward."""

    @staticmethod
    def forward(ctx, x, gate, weight, group_size: int, eps: float):
        g = x * F.silu(gate) if gate is not None else x
        grouped = g.unflatten(-1, (-1, group_size))  # (..., groups, group_size)
        mean_square = torch.linalg.vector_norm(grouped, dim=-1, keepdim=True).square_().div_(group_size)
        rstd = mean_square.add_(eps).rsqrt_()  # (..., groups, 1)
        normed = grouped * rstd  # (..., groups, group_size)
        ctx.save_for_backward(x, gate, weight, normed, rstd)
        ctx.group_size = group_size
        return normed.flatten(-2) * weight

    @staticmethod
    @once_differentiable
    @fp32_op
    def backward(ctx, grad_out):
        x, gate, weight, normed, rstd = ctx.saved_tensors
        group_size = ctx.group_size
        # 1. Weight: sum over every position of grad * normalized input.
        grad_weight = (grad_out * normed.flatten(-2)).flatten(0, -2).sum(0)  # (d,)
        # 2. Through the normalization: rstd (gw - normed mean(gw normed)) per group, gw = grad * weight.
        gw = (grad_out * weight).unflatten(-1, (-1, group_size))  # (..., groups, group_size)
        projection = torch.linalg.vecdot(gw, normed, dim=-1).unsqueeze(-1).div_(-group_size)  # (..., groups, 1)
        grad_g = gw.addcmul_(normed, projection).mul_(rstd).flatten(-2)  # (..., d)
        if gate is None:
            return grad_g, None, grad_weight, None, None
        # 3. Through the gate: g = x silu(gate).
        grad_x = grad_g * F.silu(gate)
        grad_gate = torch.ops.aten.silu_backward(grad_g.mul_(x), gate)
        return grad_x, grad_gate, grad_weight, None, None
