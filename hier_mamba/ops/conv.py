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


def causal_conv1d(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    initial_state: torch.Tensor | None = None,
    activation: str | None = "silu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv over a sequence.

    Args:
        x: (b, d, l). weight: (d, w). bias: (d,) or None. initial_state: (b, d, w - 1) or None (zeros).
    Returns:
        y: (b, d, l), and the final state (b, d, w - 1) to continue the sequence with.
    """
    batch, dim, _ = x.shape
    width = weight.shape[-1]
    if initial_state is None:
        initial_state = x.new_zeros(batch, dim, width - 1)
    padded = torch.cat([initial_state.to(x.dtype), x], dim=-1)  # (b, d, w - 1 + l)
    # y_t = sum_k w_k x_{t - (w - 1) + k}: w shifted multiply-adds. Same as a grouped F.conv1d, whose
    # CPU backward is ~50x slower for depthwise filters.
    length = x.shape[-1]
    weight = weight.to(x.dtype)
    y = padded[:, :, :length] * weight[:, :1]
    for k in range(1, width):
        y = torch.addcmul(y, padded[:, :, k:k + length], weight[:, k:k + 1])
    if bias is not None:
        y = y + bias.to(x.dtype)[:, None]
    # clone: a slice would keep the whole (b, d, w - 1 + l) padded input alive in a cache
    final_state = padded[:, :, padded.shape[-1] - (width - 1):].clone()
    return _activate(y, activation), final_state


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
    window = torch.cat([_as(state, x.dtype), x.unsqueeze(-1)], dim=-1)  # (b, d, w)
    y = (window * _as(weight, x.dtype)).sum(-1)  # (b, d)
    if bias is not None:
        y += bias
    return _activate(y, activation), window[:, :, 1:].clone()  # own storage, not a view of the window


def _as(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """t in ``dtype``; no call at all when it already is (a step runs this per layer and token)."""
    return t if t.dtype == dtype else t.to(dtype)


def _activate(y: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return y
    if activation in ("silu", "swish"):
        return F.silu(y)
    raise ValueError(f"activation must be None, 'silu' or 'swish', got {activation!r}")
