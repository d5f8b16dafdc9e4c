"""Adapters from mamba_ssm / causal_conv1d kernels to the torch ops' functional signatures.

Imported only by ``backend._cuda_ops`` once the kernels are known to import. Each adapter keeps the
torch op's contract: states in, new states out, inputs not modified (the update kernels work in
place, so they run on a copy), outputs in the caller's dtype, autocast off inside (the kernels pick
their own precision; the torch parts here compute in fp32).

Beyond the torch ops' set, two fused paths mamba_ssm's own ``Mamba2`` trains through:
- :func:`mamba2_split_conv_scan`: the whole Mamba2 mixer between in_proj and out_proj (split, conv,
  SSD, gated RMSNorm) as ``mamba_split_conv1d_scan_combined``; it takes no conv state, so the mixer
  uses it for sequences that start from zeros (training, prefill without a cache), when the conv
  channels and width fit causal_conv1d (:func:`~hier_mamba.ops.kernel_limits.split_conv_scan_fits`);
- :func:`gated_rmsnorm`: mamba_ssm's Triton RMSNorm (grouped, gate before the norm) for fp16 / bf16.
Where a kernel lacks a feature the adapter completes it in torch: ``selective_scan_fn`` starts from
zeros, so a Mamba1 scan with an initial state adds that state's decayed contribution to the
zero-state kernel's outputs and final state (:func:`selective_scan`); ``causal_conv1d_fn`` takes and
returns states only in its channel-last layout, which needs channels % 8 == 0 (else the torch conv).

Kernel facts these adapters rely on (mamba-ssm 2.3.2, causal-conv1d 1.7.0; checked by
tests/test_kernel_signatures.py and tests/test_triton_interpret.py):
- ``selective_state_update`` reads ``D.stride`` and ``dt_bias.stride`` unconditionally: never pass
  None for either (zeros are the neutral values);
- ``causal_conv1d_update`` needs the conv state in the input's dtype; ``selective_scan_fn`` needs
  D and delta_bias in fp32.
"""

from __future__ import annotations

import functools
import warnings

import torch
import torch.nn.functional as F
from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
from mamba_ssm.ops.triton.selective_state_update import selective_state_update as _state_update_kernel
from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined, mamba_split_conv1d_scan_combined

from .conv import causal_conv1d as torch_conv
from .kernel_limits import CONV_CHANNEL_MULTIPLE
from .precision import fp32_op
from .selective_scan import initial_state_contribution
from .ssd import discretize_dt

NO_DT_LIMIT = (0.0, float("inf"))


@fp32_op
def conv(x, weight, bias=None, initial_state=None, activation="silu"):
    """See ops.conv.causal_conv1d. x: (b, d, l) -> (y (b, d, l), state (b, d, w - 1))."""
    if x.shape[1] % CONV_CHANNEL_MULTIPLE:
        _warn_conv_fallback(x.shape[1])
        return torch_conv(x, weight, bias, initial_state, activation)
    x_channel_last = x.transpose(1, 2).contiguous().transpose(1, 2)  # states need stride(1) == 1
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    y, final_state = causal_conv1d_fn(x_channel_last, weight, bias, initial_states=initial_state,
                                      return_final_states=True, activation=activation)
    return y, final_state


@fp32_op
def conv_step(x, state, weight, bias=None, activation="silu"):
    """See ops.conv.causal_conv1d_step. x: (b, d); state: (b, d, w - 1), returned in x's dtype."""
    new_state = state.to(x.dtype).clone()  # the kernel updates it in place and wants x's dtype
    y = causal_conv1d_update(x, new_state, weight, bias, activation)
    return y, new_state


@fp32_op
def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None):
    """See ops.selective_scan.selective_scan. The kernel starts from zeros; an initial state h0 adds, by linearity,
    y_t += (C_t . (exp(A cum_t) h0)) silu(z_t) and h_final += exp(A cum_l) h0, cum_t = sum_{s<=t} Delta_s, in torch."""
    y, last_state = selective_scan_fn(u, delta, A, B, C, D=None if D is None else D.float(), z=z,
                                      delta_bias=None if delta_bias is None else delta_bias.float(),
                                      delta_softplus=delta_softplus, return_last_state=True)
    if initial_state is None:
        return y, last_state.float()
    carried, decayed_state = initial_state_contribution(delta, A, C, delta_bias, delta_softplus, initial_state)
    if z is not None:
        carried = carried * F.silu(z.float())
    return (y.float() + carried).to(y.dtype), last_state.float() + decayed_state


@fp32_op
def selective_state_update(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """See ops.selective_scan.selective_state_update. state: (b, d, n); u, delta, z: (b, d)."""
    channels = u.shape[1]
    new_state = state.float().clone()
    y = _state_update_kernel(new_state, u, delta, A.float(), B, C, D=_fp32_or_zeros(D, channels, u.device), z=z,
                             dt_bias=_fp32_or_zeros(delta_bias, channels, u.device), dt_softplus=delta_softplus)
    return y, new_state


@fp32_op
def ssd(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=True, dt_limit=NO_DT_LIMIT,
        initial_state=None):
    """See ops.ssd.ssd_chunked. x: (b, l, h, p) -> (y, state (b, h, p, n))."""
    y, final_state = mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=tuple(dt_limit),
        initial_states=None if initial_state is None else initial_state.float(), return_final_states=True,
    )
    return y, final_state.float()


@fp32_op
def ssd_state_update(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, dt_limit=NO_DT_LIMIT):
    """See ops.ssd.ssd_state_update, through the kernel's tied-head layout. state: (b, h, p, n)."""
    heads, head_dim = x.shape[1], x.shape[2]
    state_size = B.shape[-1]
    if tuple(dt_limit) != NO_DT_LIMIT:  # the kernel has no clamp: discretize here, then a zero bias
        dt, dt_bias, dt_softplus = discretize_dt(dt, dt_bias, dt_softplus, dt_limit), None, False
    dt_p = dt.unsqueeze(-1).expand(-1, heads, head_dim)  # (b, h, p), stride 0 over p
    A_p = A.float()[:, None, None].expand(heads, head_dim, state_size)  # (h, p, n), strides 0 over p, n
    D_p = _fp32_or_zeros(D, heads, x.device)[:, None].expand(heads, head_dim)  # (h, p)
    bias_p = _fp32_or_zeros(dt_bias, heads, x.device)[:, None].expand(heads, head_dim)  # (h, p), stride 0 over p
    new_state = state.float().clone()
    y = _state_update_kernel(new_state, x, dt_p, A_p, B, C, D=D_p, dt_bias=bias_p, dt_softplus=dt_softplus)
    return y, new_state


@fp32_op
def mamba2_split_conv_scan(projected, d_inner: int, conv_channels: int, conv_weight, conv_bias, dt_bias, A, D,
                           chunk_size: int, dt_limit, norm_weight, norm_eps: float, head_dim: int, n_groups: int):
    """Mamba2's mixer between in_proj and out_proj as one kernel call, from zero states.

    projected: (b, l, d_inner + conv_channels + h), in_proj's output [z | x B C | dt]; conv_weight (c, w), conv_bias
    (c,) or None; dt_bias, A, D: (h,); norm_weight (d_inner,): the gated RMSNorm of groups of d_inner / n_groups
    channels, gate before the norm. Returns the normed y (b, l, d_inner) in projected's dtype, the final conv state
    (b, c, w - 1) (the last w - 1 conv inputs, taken here: the kernel returns none) and the final SSM state
    (b, h, p, n) in fp32."""
    width = conv_weight.shape[-1]
    y, final_state = mamba_split_conv1d_scan_combined(
        projected, conv_weight, conv_bias, dt_bias.float(), A.float(), D.float(), chunk_size,
        dt_limit=tuple(dt_limit), return_final_states=True, activation="silu", rmsnorm_weight=norm_weight,
        rmsnorm_eps=norm_eps, headdim=head_dim, ngroups=n_groups, norm_before_gate=False,
    )
    conv_inputs = projected[..., d_inner:d_inner + conv_channels].transpose(1, 2)  # (b, c, l)
    if conv_inputs.shape[-1] < width - 1:  # a sequence shorter than the window: zeros before it
        conv_inputs = F.pad(conv_inputs, (width - 1 - conv_inputs.shape[-1], 0))
    conv_state = conv_inputs[..., conv_inputs.shape[-1] - (width - 1):].contiguous()  # (b, c, w - 1)
    return y, conv_state, final_state.float()


def gated_rmsnorm(x, gate, weight, eps: float, group_size: int):
    """hier_mamba.norms.RMSNorm (x * silu(gate), normed per group, times weight) on mamba_ssm's Triton kernel.
    x, gate: (..., d) in fp16 / bf16; weight (d,). Returns (..., d) in x's dtype."""
    return rmsnorm_fn(x, weight, None, z=gate, eps=eps, group_size=group_size, norm_before_gate=False)


def _fp32_or_zeros(t: torch.Tensor | None, size: int, device: torch.device) -> torch.Tensor:
    """t as fp32, or zeros (size,): the state-update kernel dereferences D and dt_bias even when None."""
    return torch.zeros(size, device=device) if t is None else t.float()


@functools.lru_cache(maxsize=None)
def _warn_conv_fallback(channels: int) -> None:
    warnings.warn(f"hier_mamba: causal_conv1d's kernel needs conv channels divisible by {CONV_CHANNEL_MULTIPLE}, "
                  f"got {channels} (Mamba1: intermediate_size; Mamba2: intermediate_size + 2 * n_groups * state_size): "
                  "the torch conv runs instead", stacklevel=3)
