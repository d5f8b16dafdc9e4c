"""Mamba1 (S6) and Mamba2 (SSD) mixers: sequence forward and single-token step, explicit state in/out.

Parameter names and shapes are those of transformers' ``MambaMixer`` / ``Mamba2Mixer`` (and so
mamba_ssm's ``Mamba`` / ``Mamba2``), so weights copy across and those classes serve as oracles.

State of one mixer (:class:`MixerState`): ``conv`` (b, conv_channels, conv_kernel - 1), the last
inputs of the causal conv; ``ssm`` (b, d_inner, n) for Mamba1, (b, heads, head_dim, n) for Mamba2,
always fp32. Neither depends on the sequence length.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from .configuration import HierMambaConfig
from .norms import RMSNorm
from .ops import get_ops
from .ops.kernel_limits import split_conv_scan_fits


class MixerState(NamedTuple):
    """Recurrent state of one mixer: conv (b, channels, w - 1) and ssm (fp32, see module docstring)."""

    conv: torch.Tensor
    ssm: torch.Tensor


def mask_padding(x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Zero padded positions. x: (b, l, c); attention_mask: (b, l) of 0/1, or None."""
    if attention_mask is None:
        return x
    return x * attention_mask[:, :, None].to(x.dtype)


def inverse_softplus_dt(size: int, config: HierMambaConfig) -> torch.Tensor:
    """dt bias such that softplus(bias) is log-uniform in [time_step_min, time_step_max]."""
    log_min, log_max = math.log(config.time_step_min), math.log(config.time_step_max)
    log_dt = torch.rand(size, dtype=torch.float32) * (log_max - log_min) + log_min
    dt = torch.exp(log_dt).clamp(min=config.time_step_floor)
    return dt + torch.log(-torch.expm1(-dt))


def intercepted(module: nn.Module) -> bool:
    """Whether something stands in a module's forward (a peft adapter, an accelerate offload hook, a forward hook):
    then the mixers call the module instead of reading its weights (their fast path)."""
    return (type(module) not in (nn.Conv1d, nn.Linear, RMSNorm) or bool(module._forward_hooks)
            or bool(module._forward_pre_hooks) or hasattr(module, "_hf_hook"))


def causal_conv(conv1d: nn.Conv1d, ops, x: torch.Tensor, state: torch.Tensor | None, width: int):
    """The mixer's causal depthwise conv (width w) + silu over x (b, c, l) from state (b, c, w - 1) or None (zeros).

    Returns y (b, c, l) and the final state. The ops' conv reads ``conv1d``'s weights; an intercepted conv1d is
    called as a module on [state, x] (its padding w - 1 makes output t + w - 1 the causal window ending at t).
    """
    if not intercepted(conv1d):
        return ops.conv(x, conv1d.weight.squeeze(1), conv1d.bias, state)
    length = x.shape[-1]
    if state is None:
        state = x.new_zeros(x.shape[0], x.shape[1], width - 1)
    full = torch.cat([state.to(x.dtype), x], dim=-1)  # (b, c, w - 1 + l)
    y = conv1d(full)[..., width - 1:width - 1 + length]  # (b, c, l)
    return nn.functional.silu(y), full[..., full.shape[-1] - (width - 1):].clone()


def causal_conv_step(conv1d: nn.Conv1d, ops, x: torch.Tensor, state: torch.Tensor):
    """One token of :func:`causal_conv`: x (b, c), state (b, c, w - 1) -> y (b, c), new state."""
    if not intercepted(conv1d):
        return ops.conv_step(x, state, conv1d.weight.squeeze(1), conv1d.bias)
    window = torch.cat([state.to(x.dtype), x.unsqueeze(-1)], dim=-1)  # (b, c, w)
    y = conv1d(window)[..., window.shape[-1] - 1]  # the window ending at the new token
    return nn.functional.silu(y), window[..., 1:].clone()


def gated_norm(norm: RMSNorm, ops, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """norm(y, z): on the kernels' fp16 / bf16 gated RMSNorm when the ops have one (not for an intercepted norm)."""
    if ops.gated_norm is not None and y.dtype in (torch.float16, torch.bfloat16) and not intercepted(norm):
        return ops.gated_norm(y, z, norm.weight, norm.eps, norm.group_size)
    return norm(y, z)


FP32_PARAMETERS = ("A_log", "D", "dt_bias")
"""Mixer parameters kept in fp32 whatever the model dtype (mamba_ssm's and the kernels' convention):
a bf16 A or dt bias moves every decay exp(dt A); HierMambaPreTrainedModel names them for from_pretrained."""


class _KeepFP32(nn.Module):
    """``.to(torch.bfloat16)`` / ``.half()`` leave :data:`FP32_PARAMETERS` in fp32 (devices still move)."""

    def _apply(self, fn, recurse=True):
        originals = {name: parameter.data for name in FP32_PARAMETERS
                     if (parameter := getattr(self, name, None)) is not None and parameter.dtype == torch.float32}
        super()._apply(fn, recurse)
        for name, original in originals.items():
            parameter = getattr(self, name)
            if parameter.dtype in (torch.float16, torch.bfloat16):  # a cast down: undo it from the fp32 original
                parameter.data = original.to(parameter.device)
        return self

    def step(self, hidden_states: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """One token (b, d) from ``state``: through ``__call__`` (forward with step=True), so the module's hooks
        (accelerate offload, FSDP, peft) run on the decoding path too. Returns (b, d) and the new state."""
        return self(hidden_states, state, step=True)


class Mamba2Mixer(_KeepFP32):
    """Mamba2 mixer: in_proj -> causal conv over (x, B, C) -> SSD -> gated RMSNorm -> out_proj.

    forward: hidden_states (b, l, d) -> (b, l, d); step: (b, d) -> (b, d).
    """

    def __init__(self, config: HierMambaConfig):
        super().__init__()
        self.config = config
        self.d_inner = config.intermediate_size
        self.heads, self.head_dim = config.num_heads, config.head_dim
        self.n_groups, self.state_size = config.n_groups, config.state_size
        self.conv_dim = self.d_inner + 2 * self.n_groups * self.state_size  # conv over (x, B, C)
        self.in_proj = nn.Linear(config.hidden_size, self.d_inner + self.conv_dim + self.heads, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, config.conv_kernel, groups=self.conv_dim,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.dt_bias = nn.Parameter(inverse_softplus_dt(self.heads, config))
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.heads + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.heads, dtype=torch.float32))
        self.norm = RMSNorm(self.d_inner, eps=config.rms_norm_eps, group_size=self.d_inner // self.n_groups)
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: MixerState | None = None,
        attention_mask: torch.Tensor | None = None,
        step: bool = False,
    ) -> tuple[torch.Tensor, MixerState]:
        """hidden_states: (b, l, d); state: initial state or None (zeros). Returns (b, l, d) and the final state.
        step=True: one token, hidden_states (b, d) and a state required (see :meth:`step`)."""
        if step:
            return self._step(hidden_states, state)
        batch, length, _ = hidden_states.shape
        ops = get_ops(self.config.ssm_backend, hidden_states.device)
        # 1. Input projection to the gate z, the conv input (x, B, C) and dt.
        projected = self.in_proj(mask_padding(hidden_states, attention_mask))
        if ops.mamba2_fused is not None and state is None and attention_mask is None and self._fused_fits():
            # 2-4 as one kernel (mamba_ssm's split + conv + SSD + gated RMSNorm), then the output projection.
            y, conv_state, ssm_state = ops.mamba2_fused(
                projected, self.d_inner, self.conv_dim, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias,
                -torch.exp(self.A_log.float()), self.D, self.config.chunk_size, self.config.time_step_limit,
                self.norm.weight, self.norm.eps, self.head_dim, self.n_groups,
            )  # (b, l, d_inner)
            return self.out_proj(y), MixerState(conv_state, ssm_state)
        # 2. Split, and the causal depthwise conv over time of (x, B, C).
        z, x, B, C, dt, conv_state = self._split_conv(projected, ops, state, attention_mask)
        # 3. Chunked SSD scan.
        y, ssm_state = ops.ssd(
            x.reshape(batch, length, self.heads, self.head_dim), dt, -torch.exp(self.A_log.float()),
            B.reshape(batch, length, self.n_groups, self.state_size),
            C.reshape(batch, length, self.n_groups, self.state_size),
            self.config.chunk_size, D=self.D, dt_bias=self.dt_bias, dt_softplus=True,
            dt_limit=self.config.time_step_limit, initial_state=None if state is None else state.ssm,
        )  # (b, l, h, p)
        # 4. Gated RMSNorm and output projection.
        out = self.out_proj(gated_norm(self.norm, ops, y.reshape(batch, length, self.d_inner), z))
        return out, MixerState(conv_state, ssm_state)

    def _fused_fits(self) -> bool:
        """Whether the kernels' whole-mixer op may run: no adapter or hook on the conv or the norm (the op reads
        their weights), and conv channels and width that causal_conv1d takes."""
        return (not intercepted(self.conv1d) and not intercepted(self.norm)
                and split_conv_scan_fits(self.conv_dim, self.config.conv_kernel))

    def _split_conv(self, projected: torch.Tensor, ops, state: MixerState | None,
                    attention_mask: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """projected (b, l, d_inner + conv_dim + heads) -> z, x, B, C, dt (b, l, .), conv'd (x, B, C) with
        padded positions zeroed, and the final conv state. One fused node (ops.split_conv) without a mask or an
        intercepted conv1d; else split, conv, split."""
        sizes = [self.d_inner, self.n_groups * self.state_size, self.n_groups * self.state_size]
        initial = None if state is None else state.conv
        if ops.split_conv is not None and attention_mask is None and not intercepted(self.conv1d):
            z, (x, B, C), dt, conv_state = ops.split_conv(projected, self.d_inner, sizes,
                                                          self.conv1d.weight.squeeze(1), self.conv1d.bias, initial)
            return z, x, B, C, dt, conv_state
        z, xBC, dt = projected.split([self.d_inner, self.conv_dim, self.heads], dim=-1)
        xBC = mask_padding(xBC, attention_mask)  # with use_bias, in_proj(0) = bias: the conv must see 0
        xBC, conv_state = causal_conv(self.conv1d, ops, xBC.transpose(1, 2), initial,
                                      self.config.conv_kernel)  # (b, conv_dim, l)
        xBC = mask_padding(xBC.transpose(1, 2), attention_mask)  # (b, l, conv_dim)
        return (z, *xBC.split(sizes, dim=-1), dt, conv_state)

    def _step(self, hidden_states: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """One token. hidden_states: (b, d); state from forward or a previous step. Returns (b, d), new state."""
        batch = hidden_states.shape[0]
        ops = get_ops(self.config.ssm_backend, hidden_states.device)
        z, xBC, dt = self.in_proj(hidden_states).split([self.d_inner, self.conv_dim, self.heads], dim=-1)
        xBC, conv_state = causal_conv_step(self.conv1d, ops, xBC, state.conv)
        x, B, C = xBC.split([self.d_inner, self.n_groups * self.state_size, self.n_groups * self.state_size], dim=-1)
        y, ssm_state = ops.ssd_state_update(
            state.ssm, x.reshape(batch, self.heads, self.head_dim), dt, -torch.exp(self.A_log.float()),
            B.reshape(batch, self.n_groups, self.state_size), C.reshape(batch, self.n_groups, self.state_size),
            D=self.D, dt_bias=self.dt_bias, dt_softplus=True, dt_limit=self.config.time_step_limit,
        )  # (b, h, p)
        y = gated_norm(self.norm, ops, y.reshape(batch, self.d_inner), z)
        return self.out_proj(y), MixerState(conv_state, ssm_state)


class Mamba1Mixer(_KeepFP32):
    """Mamba1 mixer: in_proj -> causal conv -> x_proj (dt, B, C) -> selective scan gated by silu(z) -> out_proj.

    forward: hidden_states (b, l, d) -> (b, l, d); step: (b, d) -> (b, d).
    """

    def __init__(self, config: HierMambaConfig):
        super().__init__()
        self.config = config
        self.d_inner, self.state_size, self.dt_rank = config.intermediate_size, config.state_size, config.time_step_rank
        self.in_proj = nn.Linear(config.hidden_size, 2 * self.d_inner, bias=config.use_bias)
        self.conv1d = nn.Conv1d(self.d_inner, self.d_inner, config.conv_kernel, groups=self.d_inner,
                                padding=config.conv_kernel - 1, bias=config.use_conv_bias)
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.state_size, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        with torch.no_grad():
            self.dt_proj.bias.copy_(inverse_softplus_dt(self.d_inner, config))
        A = torch.arange(1, self.state_size + 1, dtype=torch.float32).expand(self.d_inner, -1)  # S4D-real
        self.A_log = nn.Parameter(torch.log(A).contiguous())
        self.D = nn.Parameter(torch.ones(self.d_inner, dtype=torch.float32))
        self.out_proj = nn.Linear(self.d_inner, config.hidden_size, bias=config.use_bias)

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: MixerState | None = None,
        attention_mask: torch.Tensor | None = None,
        step: bool = False,
    ) -> tuple[torch.Tensor, MixerState]:
        """hidden_states: (b, l, d); state: initial state or None (zeros). Returns (b, l, d) and the final state.
        step=True: one token, hidden_states (b, d) and a state required (see :meth:`step`)."""
        if step:
            return self._step(hidden_states, state)
        ops = get_ops(self.config.ssm_backend, hidden_states.device)
        # 1. Input projection to x and the gate z, channels first for the conv and the scan.
        projected = self.in_proj(mask_padding(hidden_states, attention_mask))
        # with use_bias, in_proj(0) = bias: zero padded positions again so the conv sees 0 there
        projected = mask_padding(projected, attention_mask).transpose(1, 2)  # (b, 2 d_inner, l)
        x, z = projected.chunk(2, dim=1)
        # 2. Causal depthwise conv over time, padded positions zeroed again.
        x, conv_state = causal_conv(self.conv1d, ops, x, None if state is None else state.conv,
                                    self.config.conv_kernel)  # (b, d_inner, l)
        x = mask_padding(x.transpose(1, 2), attention_mask)  # (b, l, d_inner)
        # 3. Input-dependent dt, B, C.
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        if intercepted(self.dt_proj):  # an adapter or hook on dt_proj: call it (bias included)
            dt, dt_bias = self.dt_proj(dt).transpose(1, 2), None  # (b, d_inner, l)
        else:  # the bias is added in the scan, in fp32 (as mamba_ssm does)
            dt, dt_bias = self.dt_proj.weight @ dt.transpose(1, 2), self.dt_proj.bias  # (b, d_inner, l)
        # 4. Selective scan with the silu(z) gate, then the output projection.
        y, ssm_state = ops.selective_scan(
            x.transpose(1, 2), dt, -torch.exp(self.A_log.float()), B.transpose(1, 2), C.transpose(1, 2),
            D=self.D, z=z, delta_bias=dt_bias, delta_softplus=True,
            initial_state=None if state is None else state.ssm,
        )  # (b, d_inner, l)
        return self.out_proj(y.transpose(1, 2)), MixerState(conv_state, ssm_state)

    def _step(self, hidden_states: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """One token. hidden_states: (b, d); state from forward or a previous step. Returns (b, d), new state."""
        ops = get_ops(self.config.ssm_backend, hidden_states.device)
        x, z = self.in_proj(hidden_states).chunk(2, dim=-1)
        x, conv_state = causal_conv_step(self.conv1d, ops, x, state.conv)
        dt, B, C = self.x_proj(x).split([self.dt_rank, self.state_size, self.state_size], dim=-1)
        if intercepted(self.dt_proj):
            dt, dt_bias = self.dt_proj(dt), None  # (b, d_inner)
        else:
            dt, dt_bias = dt @ self.dt_proj.weight.t(), self.dt_proj.bias
        y, ssm_state = ops.selective_state_update(
            state.ssm, x, dt, -torch.exp(self.A_log.float()), B, C,
            D=self.D, z=z, delta_bias=dt_bias, delta_softplus=True,
        )  # (b, d_inner)
        return self.out_proj(y), MixerState(conv_state, ssm_state)


MIXER_CLASSES = {"mamba2": Mamba2Mixer, "mamba1": Mamba1Mixer}
