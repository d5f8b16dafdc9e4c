"""Mamba2's state-space duality (SSD) in PyTorch: chunked scan, step, and a sequential reference.

Glossary (mamba_ssm's ``mamba_chunk_scan_combined`` layout; paper symbols in brackets):
    x      (b, l, h, p)   input X, h heads of p = head_dim channels
    dt     (b, l, h)      step size Delta (before ``dt_bias`` and softplus)
    A      (h,)           scalar A per head (negative; ``-exp(A_log)``)
    B, C   (b, l, g, n)   input-dependent B, C; head i uses group i // (h / g)
    D      (h,)           skip connection
    state  (b, h, p, n)   H_t

Recurrence per head: H_t = exp(Delta_t A) H_{t-1} + Delta_t x_t B_t^T;  y_t = H_t C_t + D x_t.

The chunked form splits the sequence into blocks of Q = chunk_size: inside a block the output is a
masked (Q, Q) "attention" C B^T weighted by the decays; across blocks only the (h, p, n) states
are carried. Cost O(l Q) instead of O(l^2), and everything is batched matmuls (no time loop).
Heads are kept as (g, r) = (group, head within group) so B and C are never copied per head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from .decay import LOG_DECAY_FLOOR
from .precision import fp32_op


@fp32_op
def ssd_chunked(
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    chunk_size: int,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
    initial_state: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked SSD scan over a sequence, computed in fp32.

    Args: see the module glossary; ``initial_state`` (b, h, p, n) or None (zeros).
    Returns:
        y: (b, l, h, p) in x's dtype, and the final state (b, h, p, n) in fp32.
    """
    dtype, x = x.dtype, x.float()  # one cast: an input used twice gets its gradient summed in fp32
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b, l, h)
    # Non-finite inputs: a chunk's matmuls would spread a NaN / inf at position t to the earlier positions of its
    # chunk (0 * NaN = NaN). A non-finite input at t always makes y_t non-finite, so the scan runs on the inputs as
    # they are and only a non-finite result pays for the careful path: the scan on zeroed inputs, with NaN added
    # where the recurrence would be non-finite (see _split_non_finite). Under torch.compile (no data-dependent
    # branch) the careful path always runs; it adds exact zeros, so finite inputs give identical results either way.
    if not torch.compiler.is_compiling():
        y, final_state = _ssd_scan(x, dt, A, B, C, chunk_size, D, initial_state)
        if bool(torch.isfinite(y.sum() + final_state.sum())):  # one reduction; an overflowing sum only costs time
            return y.to(dtype), final_state
    x_finite, dt, B, C, poison, state_poison = _split_non_finite(x, dt, B, C)
    y, final_state = _ssd_scan(x_finite, dt, A, B, C, chunk_size, D, initial_state)
    return (y + poison).to(dtype), final_state + state_poison


def _ssd_scan(x, dt, A, B, C, chunk_size: int, D, initial_state) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunked scan proper, on discretized dt (b, l, h); other arguments as :func:`ssd_chunked`.
    Returns y (b, l, h, p) and the final state (b, h, p, n), both fp32.

    Layout: token-major inside a chunk, (b, c, g, q, r, p) -- for one group that is x's own (b, l, h, p), so
    neither x nor y is permuted -- and states (b, g, n, r, p). Then the products that share B or C across the r
    heads of a group (chunk end states, state read-out) are one matmul per chunk over all r p channels,
    (n, q) @ (q, r p) and (q, n) @ (n, r p), instead of r small ones."""
    batch, length, heads, head_dim = x.shape
    groups, state_size = B.shape[2], B.shape[3]
    rep = heads // groups
    Q = chunk_size
    pad = (Q - length % Q) % Q
    chunks = (length + pad) // Q

    # 1. Pad to whole chunks; x as (b, c, g, q, r, p) and dt as (b, c, g, q, r) (views for one group), B, C as
    #    (b, c, g, q, n), log-decays cumulated in a chunk. x dt is formed with the decays in step 2.
    x_c = _pad_time(x.float(), pad).view(batch, chunks, Q, groups, rep, head_dim).transpose(2, 3)
    dt_c = _pad_time(dt, pad).view(batch, chunks, Q, groups, rep).transpose(2, 3)
    # The cumulated log-decays are float64: exp(cum_q - cum_s) of two long fp32 sums loses digits when |dt A| is
    # large (transformers' init has A down to -24), 17x the error of the step-by-step recurrence at A = -24; in
    # float64 the differences are exact to fp32 (tests/test_ops.py). The tensor is small: (b, c, g, r, q).
    cum64 = torch.cumsum(_pad_time(dt * A.float(), pad).double().view(batch, chunks, Q, groups, rep), dim=2)
    cum64 = cum64.permute(0, 1, 3, 4, 2).contiguous()  # (b, c, g, r, q): log-decay from the chunk start
    dA_cum = cum64.float()
    B = _pad_time(B.float(), pad).view(batch, chunks, Q, groups, state_size).transpose(2, 3).contiguous()
    C = _pad_time(C.float(), pad).view(batch, chunks, Q, groups, state_size).transpose(2, 3).contiguous()

    # 2-3. Intra-chunk outputs (diagonal blocks), y_q = sum_{s<=q} C_q.B_s exp(cum_q - cum_s) x_s dt_s, and each
    #      chunk's own end state, from its inputs alone.
    diagonal = _diagonal_factorized if _factorizable(cum64) else _diagonal_segments
    y_diag, chunk_states = diagonal(x_c, dt_c, cum64, B, C)  # (b, c, g, q, r, p), (b, c, g, n, r p)

    # 4. Inter-chunk recurrence: the state entering each chunk, and the final state, as (b, g, n, r p).
    if initial_state is None:
        start = chunk_states.new_zeros(batch, groups, state_size, rep * head_dim)
    else:  # (b, h, p, n) -> (b, g, n, r p)
        start = initial_state.float().view(batch, groups, rep, head_dim, state_size).permute(0, 1, 4, 2, 3)
        start = start.reshape(batch, groups, state_size, rep * head_dim)
    chunk_decay = torch.exp(dA_cum[..., -1]).unsqueeze(-1).expand(-1, -1, -1, -1, head_dim).flatten(-2)  # (b,c,g,rp)
    if torch.compiler.is_compiling():  # one graph for every chunk count (a Python loop would unroll per count)
        entering, start = _pass_states(start, chunk_states, dA_cum[..., -1], head_dim)
    else:
        entering = []
        for decay_c, state_c in zip(chunk_decay.unsqueeze(-2).unbind(1), chunk_states.unbind(1)):  # O(c) backward
            entering.append(start)
            start = start * decay_c + state_c
        entering = torch.stack(entering, dim=1)  # (b, c, g, n, r p)

    # 5. Off-diagonal blocks: the entering state read out by C, (q, n) @ (n, r p), decayed since the chunk start.
    y = (C @ entering).view(batch, chunks, groups, Q, rep, head_dim)  # (b, c, g, q, r, p)
    y = torch.addcmul(y_diag, y, torch.exp(dA_cum).transpose(-1, -2).unsqueeze(-1))
    y = y.transpose(2, 3).reshape(batch, chunks * Q, heads, head_dim)[:, :length]  # (b, l, h, p); a view for g = 1

    # 6. Skip connection.
    if D is not None:
        y = torch.addcmul(y, x.float(), _per_head(D))
    final_state = start.view(batch, groups, state_size, rep, head_dim).permute(0, 1, 3, 4, 2)  # (b, g, r, p, n)
    return y, final_state.reshape(batch, heads, head_dim, state_size)


FACTOR_RANGE = 120.0
"""Largest log-decay range within a chunk for :func:`_diagonal_factorized`: its factors stay within exp(+-60)
(1e26), so a product overflows fp32 only if |C.B| |x dt| summed over a chunk exceeds ~1e12. Its precision does
not depend on the range (measured against a float64 recurrence up to a range of 162: 3-5e-6, as the segments)."""


def _factorizable(cum64: torch.Tensor) -> bool:
    """Whether every chunk's log-decay range (-cum at its end; cum64: (b, c, g, r, q)) is within FACTOR_RANGE.
    Under torch.compile (no data-dependent branch) the segment form always runs."""
    return not torch.compiler.is_compiling() and bool((cum64[..., -1] >= -FACTOR_RANGE).all())


def _diagonal_factorized(x, dt, cum64, B, C):
    """Intra-chunk outputs and chunk end states with the decays factorized: exp(cum_q - cum_s) =
    exp(cum_q - m) exp(m - cum_s), m = cum_end / 2 the middle of the chunk's log-decay range. The decays move onto
    the inputs and outputs, so the intra-chunk product is one (q, s) @ (s, r p) matmul per chunk shared by the
    group's heads and no (q, s) decay is formed per head. Only for ranges within FACTOR_RANGE (the factors are
    within exp(+-60); each is exp of a float64 difference, so a product is as precise as the segment form's).

    x: (b, c, g, q, r, p); dt: (b, c, g, q, r); cum64: (b, c, g, r, q) float64; B, C: (b, c, g, q, n).
    Returns y_diag (b, c, g, q, r, p) and chunk_states (b, c, g, n, r p)."""
    Q, rep, head_dim = x.shape[3], x.shape[4], x.shape[5]
    mid = cum64[..., -1:] / 2  # (b, c, g, r, 1)

    def per_token(log_factor: torch.Tensor) -> torch.Tensor:  # (b, c, g, r, q) -> (b, c, g, q, r) in fp32
        return torch.exp(log_factor).float().transpose(-1, -2)

    x_in = (x * (dt * per_token(mid - cum64)).unsqueeze(-1)).flatten(-2)  # (b, c, g, q, r p): x dt decayed back to m
    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    CB = (C @ B.transpose(-1, -2)).masked_fill(~causal, 0.0)  # (b, c, g, q, s)
    y_diag = (CB @ x_in).unflatten(-1, (rep, head_dim)) * per_token(cum64 - mid).unsqueeze(-1)  # (b,c,g,q,r,p)
    chunk_states = (B.transpose(-1, -2) @ x_in).unflatten(-1, (rep, head_dim))  # (b, c, g, n, r, p) at m
    chunk_states = chunk_states * torch.exp(mid).float().unsqueeze(3)  # decayed on to the chunk end: exp(cum_end - m)
    return y_diag, chunk_states.flatten(-2)


def _diagonal_segments(x, dt, cum64, B, C):
    """:func:`_diagonal_factorized` for any log-decay range: the (q, s) decays exp(cum_q - cum_s) formed per head
    (:class:`DecayedScores`), one (q, s) @ (s, p) matmul per head. Same arguments and returns."""
    x_dt = (x * dt.unsqueeze(-1)).contiguous()  # (b, c, g, q, r, p)
    scores = DecayedScores.apply(C @ B.transpose(-1, -2), cum64)  # (b, c, g, r, q, s)
    y_diag = scores @ x_dt.transpose(3, 4).contiguous()  # (b, c, g, r, q, p); head-major copy: matmul wants it
    to_end = torch.exp((cum64[..., -1:] - cum64).float()).transpose(-1, -2).unsqueeze(-1)  # (b, c, g, q, r, 1)
    chunk_states = B.transpose(-1, -2) @ (x_dt * to_end).flatten(-2)  # (b, c, g, n, r p)
    return y_diag.transpose(3, 4), chunk_states


def _pad_time(t: torch.Tensor, pad: int) -> torch.Tensor:
    """t (b, l, ...) padded with ``pad`` zero steps at the end (t itself when pad = 0)."""
    if pad == 0:
        return t
    return torch.cat([t, t.new_zeros(t.shape[0], pad, *t.shape[2:])], dim=1)


@fp32_op
def ssd_state_update(
    state: torch.Tensor,
    x: torch.Tensor,
    dt: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    dt_bias: torch.Tensor | None = None,
    dt_softplus: bool = True,
    dt_limit: tuple[float, float] = (0.0, float("inf")),
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token of the SSD recurrence.

    Args:
        state: (b, h, p, n). x: (b, h, p). dt: (b, h). A, D, dt_bias: (h,). B, C: (b, g, n).
    Returns:
        y: (b, h, p) in x's dtype, and the new state (b, h, p, n) in fp32. The input state is not modified.
    """
    batch, heads, head_dim = x.shape
    groups, state_size = B.shape[1], B.shape[2]
    grouped = (batch, groups, heads // groups)  # heads as (g, r): head i reads group i // r by broadcasting
    x32 = x.float()
    dt = discretize_dt(dt, dt_bias, dt_softplus, dt_limit)  # (b, h)
    decay = torch.exp(dt * A.float()).reshape(*grouped, 1, 1)  # (b, g, r, 1, 1)
    new_state = torch.addcmul(
        state.float().reshape(*grouped, head_dim, state_size) * decay,
        (dt.unsqueeze(-1) * x32).reshape(*grouped, head_dim, 1), B.float().reshape(batch, groups, 1, 1, state_size),
    )  # (b, g, r, p, n)
    readout = C.float().reshape(batch, groups, 1, 1, state_size)
    y = (new_state * readout).sum(-1).reshape(batch, heads, head_dim)  # (b, h, p); mul + sum: a tiny bmm is slower
    if D is not None:
        y = torch.addcmul(y, x32, _per_head(D))
    return y.to(x.dtype), new_state.reshape(batch, heads, head_dim, state_size)


@fp32_op
def ssd_sequential(
    x, dt, A, B, C, D=None, dt_bias=None, dt_softplus=True, dt_limit=(0.0, float("inf")), initial_state=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token reference of :func:`ssd_chunked` built from :func:`ssd_state_update`.

    Slow; for tests only. Same arguments (no chunk_size) and returns.
    """
    batch, length, heads, head_dim = x.shape
    dtype, x = x.dtype, x.float()
    state = (initial_state.float() if initial_state is not None
             else x.new_zeros(batch, heads, head_dim, B.shape[-1]).float())
    outputs = []
    for t in range(length):
        y_t, state = ssd_state_update(state, x[:, t], dt[:, t], A, B[:, t], C[:, t], D, dt_bias, dt_softplus, dt_limit)
        outputs.append(y_t)
    return torch.stack(outputs, dim=1).to(dtype), state


def _pass_states(start: torch.Tensor, chunk_states: torch.Tensor, chunk_log_decay: torch.Tensor, head_dim: int):
    """The inter-chunk recurrence in closed form (mamba_ssm's ssd_minimal): state entering chunk k =
    sum_{j <= k} exp(log-decay of chunks j..k-1) s_j, with s_0 the initial state. O(c^2) in the chunk count c,
    shape-generic (torch.compile traces it once for all lengths). start: (b, g, n, r p);
    chunk_states: (b, c, g, n, r p); chunk_log_decay: (b, c, g, r). Returns entering (b, c, g, n, r p), final."""
    log_decay = F.pad(chunk_log_decay.movedim(1, -1), (1, 0))  # (b, g, r, c + 1): chunk -1 is the initial state
    decay = _segment_decay(torch.cumsum(log_decay, dim=-1))  # (b, g, r, c + 1, c + 1)
    states = torch.cat([start.unsqueeze(1), chunk_states], dim=1)  # (b, c + 1, g, n, r p)
    states = states.unflatten(-1, (-1, head_dim))  # (b, c + 1, g, n, r, p)
    passed = torch.einsum("bgrzc,bcgnrp->bzgnrp", decay, states).flatten(-2)  # (b, c + 1, g, n, r p)
    return passed[:, :-1], passed[:, -1]


def _split_non_finite(x, dt, B, C):
    """Zero non-finite entries of x (b, l, h, p), dt (b, l, h), B, C (b, l, g, n), and return where the recurrence
    would have been non-finite, as NaN (else 0) to add: ``poison`` (b, l, h, p) for y and ``state_poison``
    (b, h, p, n) for the final state. The recurrence H_t = exp(dt_t A) H_{t-1} + dt_t x_t B_t^T, y_t = H_t C_t + D x_t
    spreads a bad x_t[p] to state row p (so y[p]) from t on, a bad dt_t to the whole head from t on, a bad B_t[n]
    to state column n (so every y[p]) from t on, and a bad C_t to y_t alone (C does not enter the state)."""
    rep = x.shape[2] // B.shape[2]
    finite_x, finite_dt = torch.isfinite(x), torch.isfinite(dt)
    finite_B, finite_C = torch.isfinite(B), torch.isfinite(C)
    bad_B = (~finite_B).repeat_interleave(rep, dim=2)  # (b, l, h, n)
    bad_head = (~finite_dt) | bad_B.any(-1)  # (b, l, h): the whole head's state from t on
    bad_rows = ((~finite_x) | bad_head.unsqueeze(-1)).cumsum(1) > 0  # (b, l, h, p): state row p non-finite at t
    bad_y = bad_rows | (~finite_C.all(-1)).repeat_interleave(rep, dim=2).unsqueeze(-1)  # (b, l, h, p)
    bad_state = ((~finite_x).any(1).unsqueeze(-1) | (~finite_dt).any(1)[..., None, None]
                 | bad_B.any(1).unsqueeze(2))  # (b, h, p, n): rows of bad x, bad heads, columns of bad B
    nan = float("nan")
    poison = torch.zeros(bad_y.shape, dtype=torch.float32, device=x.device).masked_fill(bad_y, nan)
    state_poison = torch.zeros(bad_state.shape, dtype=torch.float32, device=x.device).masked_fill(bad_state, nan)
    x, dt = torch.where(finite_x, x, 0), torch.where(finite_dt, dt, 0)
    B, C = torch.where(finite_B, B, 0), torch.where(finite_C, C, 0)
    return x, dt, B, C, poison, state_poison


def discretize_dt(dt, dt_bias, softplus: bool, limit: tuple[float, float]) -> torch.Tensor:
    """Delta = clamp(softplus(dt + dt_bias), *limit) in fp32. dt: (..., h); dt_bias: (h,)."""
    dt = dt.float()
    if dt_bias is not None:
        dt = dt + dt_bias.float()
    if softplus:
        dt = F.softplus(dt)
    if limit != (0.0, float("inf")):
        dt = dt.clamp(min=limit[0], max=limit[1])
    return dt


class DecayedScores(torch.autograd.Function):
    """scores = CB * exp(cum_q - cum_s) for s <= q, else 0: the intra-chunk weights of SSD as one autograd node
    (the same as ``CB.unsqueeze(3) * _segment_decay(cum)``, with three fewer full-size passes in backward).
    CB: (b, c, g, q, s), shared by the r heads of a group; cum: (b, c, g, r, q), any float dtype (the differences
    are taken in it, the exponential in CB's). Returns (b, c, g, r, q, s) in CB's dtype."""

    @staticmethod
    def forward(ctx, CB, cum):
        decay = _segment_decay(cum, CB.dtype, inplace=True)  # (b, c, g, r, q, s)
        ctx.save_for_backward(CB, decay)
        return CB.unsqueeze(3) * decay

    @staticmethod
    @once_differentiable
    @fp32_op
    def backward(ctx, grad_scores):
        CB, decay = ctx.saved_tensors
        weighted = grad_scores * decay  # dL/dscores * decay: both gradients start from it
        grad_CB = weighted.sum(3)  # (b, c, g, q, s)
        weighted *= CB.unsqueeze(3)  # dL/d(cum_q - cum_s) for s <= q (0 above the diagonal)
        return grad_CB, weighted.sum(-1) - weighted.sum(-2)  # (b, c, g, r, q): + as cum_q, - as cum_s


def _segment_decay(cum: torch.Tensor, dtype: torch.dtype | None = None, inplace: bool = False) -> torch.Tensor:
    """exp(cum_q - cum_s) for s <= q, else 0, the difference taken in cum's dtype, the result in ``dtype`` (default:
    cum's), log-decays below LOG_DECAY_FLOOR raised to it (ops/decay.py). cum: (..., q) -> (..., q, s).
    inplace: one buffer, no autograd through it (inside an autograd.Function)."""
    Q = cum.shape[-1]
    causal = torch.ones(Q, Q, dtype=torch.bool, device=cum.device).tril()
    if inplace:
        diff = torch.sub(cum.unsqueeze(-1), cum.unsqueeze(-2),
                         out=cum.new_empty(*cum.shape, Q, dtype=dtype or cum.dtype))  # (..., q, s)
        return diff.clamp_(LOG_DECAY_FLOOR, 0.0).exp_().masked_fill_(~causal, 0.0)
    diff = (cum.unsqueeze(-1) - cum.unsqueeze(-2)).to(dtype or cum.dtype)  # (..., q, s)
    return torch.exp(diff.clamp(LOG_DECAY_FLOOR, 0.0)).masked_fill(~causal, 0.0)


def _per_head(D: torch.Tensor) -> torch.Tensor:
    """D (h,) or (h, p) broadcast against (..., h, p)."""
    D = D.float()
    return D[:, None] if D.dim() == 1 else D
