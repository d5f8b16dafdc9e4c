"""Causal depthwise convolution (Mamba's short conv), sequence form and single-token step.

The convolution state is the last ``width - 1`` inputs, the layout ``causal_conv1d`` uses for
``initial_states`` / ``final_states_out``:

    x:      (b, d, l)      input channels over time
    weight: (d, w)         one filter per channel
    state:  (b, d, w - 1)  the inputs preceding x (zeros at the start of a sequence)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .precision import compute_dtype, fp32_op


@fp32_op
def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv over a sequence (the fast path of :func:`causal_conv1d_reference`), computed in fp32
    (float64 inputs in float64), returned in x's dtype, as causal_conv1d's kernel does.

    Computed time-major as one autograd node (:class:`CausalConvTimeMajor`): a (b, d, l) input that is a
    transposed view of (b, l, d) memory (a mixer's projection) is read without a copy, and the output is such a
    view too, so ``y.transpose(1, 2)`` is contiguous (b, l, d).

    Args:
        x: (b, d, l). weight: (d, w). bias: (d,) or None. initial_state: (b, d, w - 1) or None (zeros).
    Returns:
        y: (b, d, l), and the final state (b, d, w - 1) to continue the sequence with.
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
    batch, dim, _ = x.shape
    width, dtype = weight.shape[-1], compute_dtype(x)
    if initial_state is None:
        initial_state = x.new_zeros(batch, dim, width - 1)
    padded = torch.cat([_as(initial_state, dtype).transpose(1, 2), _as(x, dtype).transpose(1, 2)],
                       dim=1)  # (b, w - 1 + l, d)
    y = CausalConvTimeMajor.apply(padded, _as(weight, dtype), None if bias is None else _as(bias, dtype),
                                  activation is not None)  # (b, l, d)
    final_state = padded[:, padded.shape[1] - (width - 1):].transpose(1, 2)  # (b, d, w - 1)
    final_state = final_state.to(x.dtype, memory_format=torch.contiguous_format, copy=True)  # own storage
    return _as(y, x.dtype).transpose(1, 2), final_state


class CausalConvTimeMajor(torch.autograd.Function):
    """y_t = act(sum_k w_k x_{t + k} + bias) over time-major ``padded`` (b, w - 1 + l, d), whose first w - 1 steps
    are the state; weight (d, w), bias (d,) or None, silu: bool. Returns y (b, l, d).

    Each shifted multiply-add reads a contiguous (b, l, d) block. Backward accumulates the input gradient in
    place in one (b, w - 1 + l, d) buffer (autograd through the slices would allocate and add a zero-padded
    full-size tensor per tap) and reduces each tap's weight gradient directly."""

    @staticmethod
    def forward(ctx, padded, weight, bias, silu: bool):
        width, length = weight.shape[-1], padded.shape[1] - weight.shape[-1] + 1
        taps = weight.t().contiguous()  # (w, d): each tap a contiguous row of d channels
        pre = padded[:, :length] * taps[0]  # (b, l, d)
        for k in range(1, width):
            pre.addcmul_(padded[:, k:k + length], taps[k])
        if bias is not None:
            pre += bias
        ctx.save_for_backward(padded, weight, pre if silu else None)
        ctx.has_bias, ctx.silu = bias is not None, silu
        return F.silu(pre) if silu else pre

    @staticmethod
    @once_differentiable
    @fp32_op
    def backward(ctx, grad_y):
        padded, weight, pre = ctx.saved_tensors
        width, length = weight.shape[-1], padded.shape[1] - weight.shape[-1] + 1
        grad_y = grad_y.contiguous()  # (b, l, d)
        grad_pre = torch.ops.aten.silu_backward(grad_y, pre) if ctx.silu else grad_y
        taps = weight.t().contiguous()  # (w, d)
        grad_padded = padded.new_zeros(padded.shape)  # (b, w - 1 + l, d)
        grad_taps, product = torch.empty_like(taps), torch.empty_like(grad_pre)  # (w, d), (b, l, d)
        for k in range(width):
            grad_padded[:, k:k + length].addcmul_(grad_pre, taps[k])
            torch.sum(torch.mul(grad_pre, padded[:, k:k + length], out=product), (0, 1), out=grad_taps[k])
        grad_bias = grad_pre.sum((0, 1)) if ctx.has_bias else None
        return grad_padded, grad_taps.t(), grad_bias, None


@fp32_op
def causal_conv1d_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv over a sequence: the readable form (autograd through the shifted multiply-adds).
    :func:`causal_conv1d` computes the same as one autograd node; tests compare them.

    Args:
        x: (b, d, l). weight: (d, w). bias: (d,) or None. initial_state: (b, d, w - 1) or None (zeros).
    Returns:
        y: (b, d, l), and the final state (b, d, w - 1) to continue the sequence with.
    """
    batch, dim, _ = x.shape
    width, dtype = weight.shape[-1], compute_dtype(x)
    if initial_state is None:
        initial_state = x.new_zeros(batch, dim, width - 1)
    padded = torch.cat([initial_state.to(x.dtype), x], dim=-1).to(dtype)  # (b, d, w - 1 + l)
    # y_t = sum_k w_k x_{t - (w - 1) + k}: w shifted multiply-adds. Same as a grouped F.conv1d, whose
    # CPU backward is ~50x slower for depthwise filters.
    length = x.shape[-1]
    weight = weight.to(dtype)
    y = padded[:, :, :length] * weight[:, :1]
    for k in range(1, width):
        y = torch.addcmul(y, padded[:, :, k:k + length], weight[:, k:k + 1])
    if bias is not None:
        y = y + bias.to(dtype)[:, None]
    # a copy: a slice would keep the whole (b, d, w - 1 + l) padded input alive in a cache
    final_state = padded[:, :, padded.shape[-1] - (width - 1):].to(x.dtype, copy=True)
    return _activate(y, activation).to(x.dtype), final_state


@fp32_op
def causal_conv1d_step(
    x: torch.Tensor,
    state: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of :func:`causal_conv1d`.

    Args:
        x: (b, d). state: (b, d, w - 1). weight: (d, w). bias: (d,) or None.
    Returns:
        y: (b, d), and the new state (b, d, w - 1). The input state is not modified.
    """
    dtype = compute_dtype(x)
    window = torch.cat([_as(_as(state, x.dtype), dtype), _as(x, dtype).unsqueeze(-1)], dim=-1)  # (b, d, w)
    y = (window * _as(weight, dtype)).sum(-1)  # (b, d)
    if bias is not None:
        y += bias
    new_state = window[:, :, 1:].to(x.dtype, copy=True)  # own storage, not a view of the window
    return _as(_activate(y, activation), x.dtype), new_state


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in ``dtype``; no call at all when it already is (a step runs this per layer and token)."""
    return t if t.dtype == dtype else t.to(dtype)


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
