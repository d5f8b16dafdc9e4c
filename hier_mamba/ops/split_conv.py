"""Mamba2's input split and causal conv as one autograd node: in_proj's output -> z, conv(x, B, C), dt.

The mixer projects to ``[z | x B C | dt]`` and convolves the middle columns over time. Written as
``split`` -> conv -> ``split``, autograd's backward concatenates the gradients of the pieces twice (the
(x, B, C) split's and the projection's) and the conv zero-fills its own padded input gradient: three
full-size passes over memory that do no arithmetic. :func:`split_causal_conv1d` reads the middle
columns where they lie and writes every gradient straight into one buffer of the projection's shape.
It computes what :func:`~hier_mamba.ops.conv.causal_conv1d` computes (with SiLU); tests compare them. The fused
node runs fp32 (and float64) projections outside torch.compile; other dtypes and compiled graphs take the split
and that conv (which computes in fp32).

    projected: (b, l, head + c + tail)   c = sum(conv_sizes) channels convolved
    weight:    (c, w)                    one filter per channel; bias (c,) or None
    state:     (b, c, w - 1)             the conv inputs preceding the sequence (None: zeros)
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .conv import causal_conv1d
from .precision import compute_dtype, fp32_op


@fp32_op
def split_causal_conv1d(
    projected: torch.Tensor,
    head: int,
    conv_sizes: list[int],
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Split ``projected`` into head, conv channels and tail; causal depthwise conv + SiLU over the conv channels.

    Args:
        projected: (b, l, head + sum(conv_sizes) + tail). head: leading columns passed through (Mamba2's z).
        conv_sizes: how the convolved channels split on output (Mamba2's x, B, C). weight: (c, w).
        bias: (c,) or None. initial_state: (b, c, w - 1) or None (zeros).
    Returns:
        head part (b, l, head) and tail part (b, l, tail), views of ``projected``; the conv outputs, one
        (b, l, size) per ``conv_sizes`` entry; the final conv state (b, c, w - 1), in projected's dtype.
    """
    channels, width = sum(conv_sizes), weight.shape[-1]
    if weight.shape[0] != channels or head + channels > projected.shape[-1]:
        raise ValueError(f"split_causal_conv1d: weight {tuple(weight.shape)} and conv_sizes {conv_sizes} (after "
                         f"head={head}) do not fit projected {tuple(projected.shape)}")
    dtype = projected.dtype
    if dtype != compute_dtype(projected) or torch.compiler.is_compiling():
        return _split_then_conv(projected, head, conv_sizes, weight, bias, initial_state)
    state = None if initial_state is None else initial_state.to(dtype)
    outputs = _SplitConv.apply(projected, state, weight.to(dtype), None if bias is None else bias.to(dtype),
                               head, tuple(conv_sizes))
    # 2. The final state: the last w - 1 conv inputs, from the sequence and (when it is shorter) the initial state.
    conv_inputs = projected[..., head:head + channels].transpose(1, 2)  # (b, c, l)
    length = projected.shape[1]
    if length < width - 1:
        earlier = projected.new_zeros(projected.shape[0], channels, width - 1) if state is None else state
        conv_inputs = torch.cat([earlier, conv_inputs], dim=-1)  # (b, c, w - 1 + l)
    final_state = conv_inputs[..., conv_inputs.shape[-1] - (width - 1):].contiguous()  # (b, c, w - 1), own storage
    return outputs[0], list(outputs[1:-1]), outputs[-1], final_state


def _split_then_conv(projected, head: int, conv_sizes: list[int], weight, bias, initial_state):
    """:func:`split_causal_conv1d` as split, :func:`~hier_mamba.ops.conv.causal_conv1d`, split: for fp16 / bf16
    projections (the conv computes in fp32 and returns their dtype) and under torch.compile, which traces the
    plain ops without a graph break (the fused node writes gradients through ``out=`` into strided views)."""
    channels = sum(conv_sizes)
    head_part, conv_inputs, tail = projected.split([head, channels, projected.shape[-1] - head - channels], dim=-1)
    y, final_state = causal_conv1d(conv_inputs.transpose(1, 2), weight, bias, initial_state)  # (b, c, l)
    return head_part, list(y.transpose(1, 2).split(list(conv_sizes), dim=-1)), tail, final_state


def _tap_rows(width: int, length: int):
    """Per tap k < w - 1 of a causal conv over a sequence of ``length``: (k, m), where outputs t < m read the
    state's rows k .. k + m - 1 and outputs t >= m read the sequence's rows t - m (m = min(w - 1 - k, length))."""
    return [(k, min(width - 1 - k, length)) for k in range(width - 1)]


class _SplitConv(torch.autograd.Function):
    """y = silu(sum_k w_k x_{t + k - (w - 1)} + bias) over the middle columns x of projected (earlier rows from
    state); returns (head, conv parts ..., tail). Backward writes into one (b, l, head + c + tail) buffer."""

    @staticmethod
    def forward(ctx, projected, state, weight, bias, head: int, conv_sizes: tuple):
        channels, width, length = sum(conv_sizes), weight.shape[-1], projected.shape[1]
        x = projected[..., head:head + channels]  # (b, l, c), a strided view: read in place
        taps = weight.t().contiguous()  # (w, c): each tap a contiguous row of c channels
        # 1. The newest tap over the whole sequence, then each older tap shifted by w - 1 - k rows.
        pre = x * taps[-1]  # (b, l, c)
        for k, m in _tap_rows(width, length):
            if m < length:
                pre[:, m:].addcmul_(x[:, :length - m], taps[k])
            if state is not None:
                pre[:, :m].addcmul_(state.transpose(1, 2)[:, k:k + m], taps[k])
        if bias is not None:
            pre += bias
        ctx.save_for_backward(projected, state, taps, pre)
        ctx.head, ctx.conv_sizes, ctx.has_bias = head, conv_sizes, bias is not None
        # 2. Outputs: the pass-through head and tail (views of the input) and the activated conv parts.
        y = torch.nn.functional.silu(pre)
        return (projected[..., :head], *y.split(list(conv_sizes), dim=-1), projected[..., head + channels:])

    @staticmethod
    @once_differentiable
    @fp32_op
    def backward(ctx, grad_head, *grads):
        projected, state, taps, pre = ctx.saved_tensors
        head, conv_sizes = ctx.head, ctx.conv_sizes
        grad_parts, grad_tail = grads[:-1], grads[-1]
        channels, width, length = sum(conv_sizes), taps.shape[0], projected.shape[1]
        x = projected[..., head:head + channels]  # (b, l, c)
        grad_projected = torch.empty_like(projected, memory_format=torch.contiguous_format)
        # 1. Pass-through columns.
        _write(grad_projected[..., :head], grad_head)
        _write(grad_projected[..., head + channels:], grad_tail)
        # 2. Through the SiLU, part by part into one (b, l, c) buffer.
        grad_pre = torch.empty_like(pre)
        start = 0
        for size, grad in zip(conv_sizes, grad_parts):
            columns = slice(start, start + size)
            if grad is None:
                grad_pre[..., columns].zero_()
            else:
                torch.ops.aten.silu_backward.grad_input(grad, pre[..., columns], grad_input=grad_pre[..., columns])
            start += size
        # 3. Through the taps: input gradient written in place into the projection's gradient, weight gradient
        #    reduced per tap.
        grad_x = grad_projected[..., head:head + channels]  # (b, l, c), a view
        torch.mul(grad_pre, taps[-1], out=grad_x)
        grad_taps, product = torch.empty_like(taps), torch.empty_like(grad_pre)  # (w, c), (b, l, c)
        torch.sum(torch.mul(grad_pre, x, out=product), (0, 1), out=grad_taps[-1])
        grad_state = None if state is None else torch.zeros_like(state)  # (b, c, w - 1)
        for k, m in _tap_rows(width, length):
            if m < length:
                grad_x[:, :length - m].addcmul_(grad_pre[:, m:], taps[k])
                torch.mul(grad_pre[:, m:], x[:, :length - m], out=product[:, m:])
            if state is None:
                product[:, :m].zero_()
            else:
                grad_state.transpose(1, 2)[:, k:k + m].addcmul_(grad_pre[:, :m], taps[k])
                torch.mul(grad_pre[:, :m], state.transpose(1, 2)[:, k:k + m], out=product[:, :m])
            torch.sum(product, (0, 1), out=grad_taps[k])  # the whole contiguous buffer: a slice sums ~10x slower
        grad_bias = grad_pre.sum((0, 1)) if ctx.has_bias else None
        return grad_projected, grad_state, grad_taps.t(), grad_bias, None, None


def _write(destination: torch.Tensor, gradient: torch.Tensor | None) -> None:
    """Copy a gradient into its columns of the input gradient (zeros where an output got none)."""
    if gradient is None:
        destination.zero_()
    else:
        destination.copy_(gradient)
