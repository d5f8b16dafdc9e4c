"""Mamba1's selective scan (S6) in PyTorch: the readable specification and the CPU path.

Glossary (mamba_ssm's ``selective_scan_fn`` layout; paper symbols in brackets):
    u      (b, d, l)   input x_t
    delta  (b, d, l)   step size Delta_t (before ``delta_bias`` and softplus)
    A      (d, n)      continuous state matrix A (negative; ``-exp(A_log)``)
    B, C   (b, n, l)   input-dependent B_t, C_t
    D      (d,)        skip connection
    z      (b, d, l)   gate, output multiplied by silu(z)
    state  (b, d, n)   h_t

Recurrence: h_t = exp(Delta_t A) * h_{t-1} + Delta_t B_t u_t;  y_t = C_t . h_t + D u_t.

:func:`selective_scan` (the fast path) runs the whole scan as one autograd node over time blocks
(ops/blocked_scan.py). :func:`selective_scan_reference` is its readable twin: the linear recurrence
h_t = a_t h_{t-1} + b_t over materialized (l, b, d, n) tensors is one autograd node
(:class:`LinearRecurrence`) whose forward and backward are O(l) loops over contiguous time slices, so the
backward is O(l), not the O(l^2) that indexing ``dA[:, :, t]`` in an autograd loop costs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .blocked_scan import blocked_selective_scan
from .precision import fp32_op


class LinearRecurrence(torch.autograd.Function):
    """h_t = a_t * h_{t-1} + b_t over the leading (time) dim; returns all h_t.

    a, b: (l, *s); h0: (*s). Returns h: (l, *s). Backward is the reversed recurrence
    g_t = dL/dh_t + a_{t+1} g_{t+1};  dL/db_t = g_t;  dL/da_t = g_t h_{t-1};  dL/dh0 = a_0 g_0.
    """

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
        h = torch.empty_like(b)
        prev = h0
        for t in range(b.shape[0]):
            torch.addcmul(b[t], a[t], prev, out=h[t])
            prev = h[t]
        ctx.save_for_backward(a, h, h0)
        return h

    @staticmethod
    @fp32_op
    def backward(ctx, grad_h: torch.Tensor):
        a, h, h0 = ctx.saved_tensors
        grad_b = torch.empty_like(grad_h)
        carry = torch.zeros_like(h0)
        for t in range(grad_h.shape[0] - 1, -1, -1):
            torch.add(grad_h[t], carry, out=grad_b[t])
            carry = a[t] * grad_b[t]
        h_prev = torch.cat([h0.unsqueeze(0), h[:-1]], dim=0)  # (l, *s): h_{t-1}
        grad_a = grad_b * h_prev
        return grad_a, grad_b, carry


@fp32_op
def linear_recurrence(a: torch.Tensor, b: torch.Tensor, h0: torch.Tensor) -> torch.Tensor:
    """All states of h_t = a_t h_{t-1} + b_t. a, b: (l, *s); h0: (*s) -> (l, *s)."""
    a, b = torch.broadcast_tensors(a, b)
    return LinearRecurrence.apply(a.contiguous(), b.contiguous(), h0.to(b.dtype).contiguous())


@fp32_op
def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan over a sequence, computed in fp32 by time blocks (ops/blocked_scan.py): the fast path of
    :func:`selective_scan_reference`, same arguments and results.

    Args: see the module glossary; ``initial_state`` (b, d, n) or None (zeros).
    Returns:
        y: (b, d, l) in u's dtype, and the final state (b, d, n) in fp32.
    """
    batch, dim, _ = u.shape
    dtype, u = u.dtype, u.float()  # one cast: u's two uses get their gradients summed in fp32
    # 1. Discretize Delta (bias, softplus) in fp32; the block scan does exp(Delta A) and Delta B u itself.
    delta = _softplus_dt(delta.float(), delta_bias, delta_softplus)  # (b, d, l)
    if initial_state is None:
        initial_state = delta.new_zeros(batch, dim, A.shape[-1])
    # 2. Recurrence and readout y_t = C_t . h_t, one block of steps at a time.
    y, final_state = blocked_selective_scan(u.float(), delta, A.float(), B.float(), C.float(), initial_state.float())
    # 3. D skip and the silu(z) gate.
    return _skip_and_gate(y, u, D, z).to(dtype), final_state


@fp32_op
def selective_scan_reference(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Selective scan over a sequence, computed in fp32: the readable parallel form (every (l, b, d, n) tensor
    materialized). :func:`selective_scan` computes the same with the blocked autograd node; tests compare them.

    Args: see the module glossary; ``initial_state`` (b, d, n) or None (zeros).
    Returns:
        y: (b, d, l) in u's dtype, and the final state (b, d, n) in fp32.
    """
    dtype, u = u.dtype, u.float()  # one cast: u's two uses get their gradients summed in fp32
    batch, dim, _ = u.shape
    # 1. Discretize: dA = exp(Delta A), dBu = Delta B u, time-major for contiguous steps.
    delta = _softplus_dt(delta.float(), delta_bias, delta_softplus)  # (b, d, l)
    delta_t = delta.permute(2, 0, 1).unsqueeze(-1)  # (l, b, d, 1)
    dA = torch.exp(delta_t * A.float())  # (l, b, d, n)
    dBu = delta_t * u.float().permute(2, 0, 1).unsqueeze(-1) * B.float().permute(2, 0, 1).unsqueeze(2)  # (l, b, d, n)
    # 2. Recurrence over time.
    if initial_state is None:
        initial_state = dBu.new_zeros(batch, dim, A.shape[-1])
    states = linear_recurrence(dA, dBu, initial_state.float())  # (l, b, d, n)
    # 3. Read out y_t = C_t . h_t, plus the D skip and the silu(z) gate.
    y = torch.einsum("lbdn,bnl->bdl", states, C.float())
    # clone: states[-1] is a view that would keep the whole (l, b, d, n) state history alive in a cache
    return _skip_and_gate(y, u, D, z).to(dtype), states[-1].clone()


@fp32_op
def selective_scan_sequential(
    u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=True, initial_state=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Step-by-step reference of :func:`selective_scan` built from :func:`selective_state_update`.

    Slow (autograd through every step); for tests only. Same arguments and returns.
    """
    batch, dim, length = u.shape
    dtype, u = u.dtype, u.float()
    state = initial_state.float() if initial_state is not None else u.new_zeros(batch, dim, A.shape[-1]).float()
    outputs = []
    for t in range(length):
        y_t, state = selective_state_update(
            state, u[:, :, t], delta[:, :, t], A, B[:, :, t], C[:, :, t], D,
            None if z is None else z[:, :, t], delta_bias, delta_softplus,
        )
        outputs.append(y_t)
    return torch.stack(outputs, dim=-1).to(dtype), state


@fp32_op
def selective_state_update(
    state: torch.Tensor,
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the selective scan.

    Args:
        state: (b, d, n). u, delta, z: (b, d). A: (d, n). B, C: (b, n). D, delta_bias: (d,).
    Returns:
        y: (b, d) in u's dtype, and the new state (b, d, n) in fp32. The input state is not modified.
    """
    dtype, u = u.dtype, u.float()  # one cast: u's two uses get their gradients summed in fp32
    delta = _softplus_dt(delta.float(), delta_bias, delta_softplus)  # (b, d)
    new_state = torch.addcmul(torch.exp(delta.unsqueeze(-1) * A.float()) * state.float(),
                              (delta * u.float()).unsqueeze(-1), B.float().unsqueeze(1))  # (b, d, n)
    y = (new_state * C.float().unsqueeze(1)).sum(-1)  # (b, d); mul + sum: a tiny einsum/bmm is slower on CPU
    return _skip_and_gate(y, u, D, z).to(dtype), new_state


@fp32_op
def initial_state_contribution(delta, A, C, delta_bias, delta_softplus: bool, initial_state,
                               block: int = 256) -> tuple[torch.Tensor, torch.Tensor]:
    """What an initial state h0 (b, d, n) adds to a selective scan that starts from zeros: its read-out
    C_t . (exp(A cum_t) * h0) (b, d, l), before any gate, and exp(A cum_l) * h0 (b, d, n), cum_t = sum_{s<=t} Delta_s
    (Delta after bias and softplus). fp32; ``block`` steps at a time, so the (b, d, n, T) decays stay small."""
    dt = _softplus_dt(delta.float(), delta_bias, delta_softplus)  # (b, d, l)
    cum = dt.double().cumsum(-1).float()  # (b, d, l); summed in float64, as SSD's log-decays
    A, h0, C = A.float(), initial_state.float(), C.float()
    pieces = []
    for start in range(0, cum.shape[-1], block):
        decay = torch.exp(A[None, :, :, None] * cum[:, :, None, start:start + block])  # (b, d, n, T)
        pieces.append(torch.einsum("bdnt,bdn,bnt->bdt", decay, h0, C[..., start:start + block]))
    final = torch.exp(A[None] * cum[:, :, -1:]) * h0  # (b, d, n)
    return torch.cat(pieces, dim=-1), final


def _softplus_dt(delta: torch.Tensor, delta_bias: torch.Tensor | None, softplus: bool) -> torch.Tensor:
    if delta_bias is not None:
        bias = delta_bias.float()
        delta = delta + (bias[:, None] if delta.dim() == 3 else bias)
    return F.softplus(delta) if softplus else delta


def _skip_and_gate(y: torch.Tensor, u: torch.Tensor, D: torch.Tensor | None, z: torch.Tensor | None) -> torch.Tensor:
    if D is not None:
        y = y + u.float() * (D.float()[:, None] if u.dim() == 3 else D.float())
    if z is not None:
        y = y * F.silu(z.float())
    return y
