"""Synthetic gradients across ACT segment boundaries (decoupled neural interfaces, bootstrapped).

Deep supervision detaches the carry between segments, so segment s never learns how its carry
affects later segments' losses. At each boundary a small module predicts that gradient in units
of sigma, u_hat = SG(carry_s), and :func:`synthetic_boundary` injects it in backward:

    forward:   carry_in = carry_s                            (values unchanged: the loss is the same)
    backward:  d/d carry_s  <- sigma * u_hat                 (the prediction replaces the cut gradient)
               d/d u_hat    <- scale * (u_hat - g / sigma) / N   (regression towards the measured gradient)

where g is the true gradient arriving at carry_in from the later segments, itself including the
synthetic gradient injected at the next boundary (the bootstrap of DNI), sigma is a running RMS
of g (a buffer, updated in backward) and N the number of elements. One backward does all.

Why the unit sigma: g is tiny (~1e-5 per element: the loss is a mean over the batch and tokens),
and Adam moves the predictor's weights by ~lr per step whatever the gradient scale, so a predictor
regressed on g directly overshot it by orders of magnitude within a few steps; the injected
gradients then swamped the model's own and training collapsed (Sudoku, full BPTT: training loss
4.2 against 1.9 without synthetic gradients; docs/credit-assignment.md). In units of sigma the
target is O(1), and the regression is a mean over its elements, so that its gradient (which joins
the model's in one global-norm clip) stays O(1) too: as a sum over the b * l * 2d elements it
reached norms of ~1000, and clipping to 1 then scaled the model's own gradient down a thousandfold.
"""

from __future__ import annotations

import torch
from torch import nn

from .norms import RMSNorm

UNIT_MOMENTUM = 0.9  # running RMS of the measured gradient: sigma <- 0.9 sigma + 0.1 rms(g)


class SyntheticGradientModel(nn.Module):
    """Predicts d(future loss)/d(z_H, z_L) per position, in units of the buffers ``unit_H`` / ``unit_L``.

    z_H, z_L: (b, l, d) -> two (b, l, d). The last layer starts at zero (no injected gradient before
    it has learned anything).
    """

    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.norm = RMSNorm(2 * hidden_size, eps=eps)
        self.hidden = nn.Linear(2 * hidden_size, 2 * hidden_size)
        self.out = nn.Linear(2 * hidden_size, 2 * hidden_size)
        self.out.zero_init = True  # read by HierMambaPreTrainedModel._init_weights
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.register_buffer("unit_H", torch.zeros(()))  # running RMS of the true gradient at z_H (0 = none yet)
        self.register_buffer("unit_L", torch.zeros(()))

    def forward(self, z_H: torch.Tensor, z_L: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        both = torch.cat([z_H, z_L], dim=-1)  # (b, l, 2d)
        g_H, g_L = self.out(torch.nn.functional.gelu(self.hidden(self.norm(both)))).chunk(2, dim=-1)
        return g_H, g_L


class _SyntheticBoundary(torch.autograd.Function):
    @staticmethod
    def forward(ctx, carry: torch.Tensor, predicted: torch.Tensor, unit: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(predicted)
        ctx.unit, ctx.scale = unit, scale
        return carry.detach().clone()

    @staticmethod
    def backward(ctx, true_grad: torch.Tensor):
        (predicted,) = ctx.saved_tensors
        unit = ctx.unit
        with torch.no_grad():
            rms = true_grad.float().pow(2).mean().sqrt()
            unit.copy_(torch.where(unit > 0, UNIT_MOMENTUM * unit + (1 - UNIT_MOMENTUM) * rms, rms))  # first: rms
            target = true_grad / unit.clamp(min=torch.finfo(true_grad.dtype).tiny)  # g / sigma; 0 while g is 0
            injected = predicted.detach() * unit.to(predicted.dtype)
        return injected, ctx.scale * (predicted - target) / predicted.numel(), None, None  # mean, not sum


def synthetic_boundary(carry: torch.Tensor, predicted: torch.Tensor, unit: torch.Tensor,
                       scale: float = 1.0) -> torch.Tensor:
    """Identity in forward; in backward sends ``unit * predicted`` to ``carry`` and trains ``predicted``.

    carry, predicted: same shape; ``predicted`` is in units of ``unit``, a 0-dim buffer holding the
    running RMS of the measured gradient (0 = not measured yet), updated in place in backward.
    ``scale`` weighs the regression loss 0.5 * mean((predicted - g / unit)^2).
    """
    return _SyntheticBoundary.apply(carry, predicted, unit, scale)
