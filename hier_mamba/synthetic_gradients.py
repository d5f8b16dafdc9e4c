"""Synthetic gradients across ACT segment boundaries (decoupled neural interfaces, bootstrapped).

Deep supervision detaches the carry between segments, so segment s never learns how its carry
affects later segments' losses. At each boundary a small module predicts that gradient,
g_hat = SG(carry_s), and :func:`synthetic_boundary` injects it in backward:

    forward:   carry_in = carry_s                       (values unchanged: the loss is the same)
    backward:  d/d carry_s      <- g_hat                (the prediction replaces the cut gradient)
               d/d g_hat        <- scale * (g_hat - g)  (regression towards the measured gradient)

where g is the true gradient arriving at carry_in from the later segments, itself including the
synthetic gradient injected at the next boundary (the bootstrap of DNI). One backward does all.
"""

from __future__ import annotations

import torch
from torch import nn

from .norms import RMSNorm


class SyntheticGradientModel(nn.Module):
    """Predicts d(future loss)/d(z_H, z_L) per position. z_H, z_L: (b, l, d) -> two (b, l, d).

    The last layer starts at zero (no injected gradient before it has learned anything).
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(2 * hidden_size, eps=eps)
        self.hidden = nn.Linear(2 * hidden_size, 2 * hidden_size)
        self.out = nn.Linear(2 * hidden_size, 2 * hidden_size)
        self.out.zero_init = True  # read by HierMambaPreTrainedModel._init_weights
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([z_H, z_L], dim=-1)  # (b, l, 2d)
        g_H, g_L = self.out(torch.nn.functional.gelu(self.hidden(self.norm(both)))).chunk(2, dim=-1)
        return g_H, g_L


class _SyntheticBoundary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, carry: torch.Tensor, predicted: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(predicted)
        ctx.scale = scale
        return carry.detach().clone()

    @staticmethod
    def backward(ctx, true_grad: torch.Tensor):
        (predicted,) = ctx.saved_tensors
        return predicted.detach(), ctx.scale * (predicted - true_grad), None


def synthetic_boundary(carry: torch.Tensor, predicted: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """Identity in forward; in backward sends ``predicted`` to ``carry`` and trains ``predicted``.

    carry, predicted: same shape. ``scale`` weighs the regression loss 0.5 * ||predicted - g||^2.
    """
    return _SyntheticBoundary.apply(carry, predicted, scale)
