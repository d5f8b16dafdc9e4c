"""Adapters from mamba_ssm / causal_conv1d kernels to the torch ops' functional signatures.

Imported only by ``backend._cuda_ops`` once the kernels are known to import. Each adapter keeps the
torch op's contract: states in, new states out, inputs not modified (the update kernels work in
place, so they run on a copy). Where a kernel lacks a feature (``selective_scan_fn`` takes no
initial state) the adapter uses the torch op for that call.
"""

from __future__ import annotations

from causal_conv1d import causal_conv1d_fn, causal_conv1d_update
from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
from mamba_ssm.ops.triton.selective_state_update import selective_state_update as _state_update_kernel
from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined

from . import selective_scan as torch_scan
from .ssd import discretize_dt


def conv(x, weight, bias=None, initial_state=None, activation="silu"):
    """See ops.conv.causal_conv1d. x: (b, d, l) -> (y (b, d, l), state (b, d, w - 1))."""
    x_channel_last = x.transpose(1, 2).contiguous().transpose(1, 2)  # states need stride(1) == 1
    if initial_state is not None:
        initial_state = initial_state.to(x.dtype).transpose(1, 2).contiguous().transpose(1, 2)
    y, final_state = causal_conv1d_fn(x_channel_last, weight, bias, initial_states=initial_state,
                                      return_final_states=True, activation=activation)
    return y, final_state


def conv_step(x, state, weight, bias=None, activation="silu"):
    """See ops.conv.causal_conv1d_step. x: (b, d); state: (b, d, w - 1)."""
    new_state = state.to(x.dtype).clone()
    y = causal_conv1d_update(x, new_state, weight, bias, activation)
    return y, new_state


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None):
    """See ops.selective_scan.selective_scan. The kernel starts from zeros only."""
    if initial_state is not None:
        return torch_scan.selective_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus, initial_state)
    y, last_state = selective_scan_fn(u, delta, A, B, C, D=None if D is None else D.float(), z=z,
                                      delta_bias=None if delta_bias is None else delta_bias.float(),
                                      delta_softplus=delta_softplus, return_last_state=True)
    return y, last_state.float()


def selective_state_update(state, u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True):
    """See ops.selective_scan.selective_state_update. state: (b, d, n)."""
    new_state = state.float().clone()
    y = _state_update_kernel(new_state, u, delta, A, B, C, D=D, z=z, dt_bias=delta_bias, dt_softplus=delta_softplus)
    return y, new_state


def ssd(x, dt, A, B, C, chunk_size, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")),
        initial_state=None):
    """See ops.ssd.ssd_chunked. x: (b, l, h, p) -> (y, state (b, h, p, n))."""
    y, final_state = mamba_chunk_scan_combined(
        x, dt, A, B, C, chunk_size, D=D, dt_bias=dt_bias, dt_softplus=dt_softplus, dt_limit=dt_limit,
        initial_states=None if initial_state is None else initial_state.float(), return_final_states=True,
    )
    return y, final_state.float()


def ssd_state_update(state, x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf"))):
    """See ops.ssd.ssd_state_update, through the kernel's tied-head layout. state: (b, h, p, n)."""
    heads, head_dim = x.shape[1], x.shape[2]
    state_size = B.shape[-1]
    if dt_limit != (0.0, float("inf")):  # the kernel has no clamp: discretize here
        dt, dt_bias, dt_softplus = discretize_dt(dt, dt_bias, dt_softplus, dt_limit), None, False
    dt_p = dt.unsqueeze(-1).expand(-1, heads, head_dim)  # (b, h, p), stride 0 over p
    A_p = A.float()[:, None, None].expand(heads, head_dim, state_size)  # (h, p, n)
    D_p = None if D is None else D.float()[:, None].expand(heads, head_dim)  # (h, p)
    bias_p = None if dt_bias is None else dt_bias.float()[:, None].expand(heads, head_dim)  # (h, p)
    new_state = state.float().clone()
    y = _state_update_kernel(new_state, x, dt_p, A_p, B, C, D=D_p, dt_bias=bias_p, dt_softplus=dt_softplus)
    return y, new_state


