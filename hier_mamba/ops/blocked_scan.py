"""Mamba1's selective scan as one autograd node over time blocks: the CPU training path.

Same recurrence and layout as :func:`~hier_mamba.ops.selective_scan.selective_scan_reference` (see the
glossary of ops/selective_scan.py), without the D skip and the gate:

    h_t = exp(Delta_t A) * h_{t-1} + Delta_t B_t u_t;   y_t = C_t . h_t

The reference materializes dA, dBu and every state h_t as (l, b, d, n) fp32 tensors, then autograd keeps
them and their gradients: ~15 passes over tensors 16x the size of the input (n = 16), each freshly
allocated. Here the sequence is cut into blocks of ``block`` steps. Forward discretizes, scans and reads
out one block at a time and keeps only the state entering each block. Backward walks the blocks in
reverse: it recomputes the block's dA, dBu and states from the kept entering state, runs the reversed
recurrence of the gradient and reduces it to the (b, d, l) / (b, n, l) input gradients at once. Every
(T, b, d, n) buffer is one block long (cache-sized) and reused; memory is O(l / block) states.

Backward, with G_t = dL/dh_t (all paths) and dy_t = dL/dy_t:
    G_t = dy_t C_t + exp(Delta_{t+1} A) G_{t+1}      (G_{l-1} also gets dL/dh_final)
    dL/dDelta_t = sum_n G_t (A dA_t h_{t-1} + B_t u_t)
    dL/du_t = Delta_t sum_n G_t B_t;   dL/dB_t = sum_d G_t Delta_t u_t;   dL/dC_t = sum_d dy_t h_t
    dL/dA = sum_{t,b} G_t Delta_t dA_t h_{t-1};   dL/dh0 = exp(Delta_0 A) G_0
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from .decay import exp_decay_
from .precision import fp32_op

DEFAULT_BLOCK = 64  # steps per block: (64, b, n, d) fp32 buffers stay in cache at b d n ~ 16k


class BlockedSelectiveScan(torch.autograd.Function):
    """y, final state of the selective scan (no D, no gate). Inputs fp32: u, delta (b, d, l) with delta already
    discretized (bias and softplus applied), A (d, n), B, C (b, n, l), h0 (b, d, n); block: steps per block.
    Returns y (b, d, l) and the final state (b, d, n).

    Inside, states are laid out (T, b, n, d): d innermost, so every broadcast product (Delta A, Delta u B,
    dy C) and every reduction over n runs along contiguous rows of d_inner channels."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, h0, block: int):
        y, final_state, saved = _forward(u, delta, A, B, C, h0, block)
        ctx.save_for_backward(*saved)
        ctx.block = block
        return y, final_state

    @staticmethod
    @once_differentiable
    @fp32_op
    def backward(ctx, grad_y, grad_final):
        return *_backward(grad_y, grad_final, ctx.saved_tensors, ctx.block), None


def _forward(u, delta, A, B, C, h0, block: int):
    """BlockedSelectiveScan's forward: y (b, d, l), the final state (b, d, n), and what backward reads: time-major
    delta, u (l, b, d), A (n, d), B, C (l, b, n) and the state entering each block (blocks, b, n, d)."""
    length = u.shape[-1]
    # 1. Time-major copies (l, b, ...) so each step and each block is one contiguous slice.
    delta_t, u_t = delta.permute(2, 0, 1).contiguous(), u.permute(2, 0, 1).contiguous()  # (l, b, d)
    B_t, C_t = B.permute(2, 0, 1).contiguous(), C.permute(2, 0, 1).contiguous()  # (l, b, n)
    A_t = A.t().contiguous()  # (n, d)
    y = torch.empty_like(delta_t)  # (l, b, d)
    buffers = _BlockBuffers(block, h0.transpose(1, 2))
    entering = []  # the state (b, n, d) entering each block: all that is kept for backward
    h = h0.transpose(1, 2).contiguous()  # (b, n, d)
    # 2. Per block: discretize, scan, read out y_t = C_t . h_t.
    for start in range(0, length, block):
        span = slice(start, min(start + block, length))
        entering.append(h)
        _, states = _scan_block(buffers, delta_t[span], u_t[span], A_t, B_t[span], h)
        y[span] = torch.matmul(C_t[span].unsqueeze(-2), states).squeeze(-2)  # (T, b, 1, n) @ (T, b, n, d)
        h = states[-1].clone()
    saved = (delta_t, u_t, A_t, B_t, C_t, torch.stack(entering))
    return y.permute(1, 2, 0), h.transpose(1, 2).contiguous(), saved  # (b, d, l), (b, d, n), what backward reads


def _backward(grad_y, grad_final, saved, block: int):
    """BlockedSelectiveScan's backward from what :func:`_forward` saved: gradients of u, delta, A, B, C and h0."""
    delta_t, u_t, A_t, B_t, C_t, entering = saved
    length = delta_t.shape[0]
    grad_y_t = grad_y.permute(2, 0, 1).contiguous()  # (l, b, d)
    grad_delta, grad_u = torch.empty_like(delta_t), torch.empty_like(u_t)  # (l, b, d)
    grad_B, grad_C = torch.empty_like(B_t), torch.empty_like(C_t)  # (l, b, n)
    grad_A = torch.zeros_like(A_t)  # (n, d)
    carry = grad_final.transpose(1, 2).contiguous()  # (b, n, d): a_{t+1} G_{t+1}, G_{l-1} gets dL/dh_final
    buffers = _BlockBuffers(block, carry)
    starts = list(range(0, length, block))
    for index in reversed(range(len(starts))):
        span = slice(starts[index], min(starts[index] + block, length))
        h0, delta, u, B, C, dy = entering[index], delta_t[span], u_t[span], B_t[span], C_t[span], grad_y_t[span]
        # 1. Recompute the block's decays and states from the state entering it.
        dA, states = _scan_block(buffers, delta, u, A_t, B, h0)  # (T, b, n, d) each
        # 2. dL/dC_t = sum_d dy_t h_t.
        grad_C[span] = torch.matmul(states, dy.unsqueeze(-1)).squeeze(-1)  # (T, b, n)
        # 3. Reversed recurrence: G_t = dy_t C_t + a_{t+1} G_{t+1}.
        G = buffers.take("G", dA.shape)
        torch.mul(C.unsqueeze(-1), dy.unsqueeze(-2), out=G)  # (T, b, n, d)
        for t in range(G.shape[0] - 1, -1, -1):
            G[t] += carry
            carry = dA[t] * G[t]
        # 4. G_t dA_t h_{t-1}: dL/dA's term, and A times it dL/dDelta's decay term. In place of dA.
        decay_grad = dA
        decay_grad[1:] *= states[:-1]
        decay_grad[0] *= h0
        decay_grad *= G
        grad_A += torch.mul(decay_grad, delta.unsqueeze(-2), out=states).sum((0, 1))
        # 5. (b, d) and (b, n) gradients per step: sum_n G B, sum_d G Delta u, and dL/dDelta.
        G_B = torch.matmul(B.unsqueeze(-2), G).squeeze(-2)  # (T, b, d)
        grad_B[span] = torch.matmul(G, (delta * u).unsqueeze(-1)).squeeze(-1)  # (T, b, n)
        torch.mul(G_B, delta, out=grad_u[span])
        torch.addcmul(torch.mul(decay_grad, A_t, out=states).sum(-2), G_B, u, out=grad_delta[span])
    grad_h0 = carry.transpose(1, 2)  # (b, d, n)
    return (grad_u.permute(1, 2, 0), grad_delta.permute(1, 2, 0), grad_A.t(), grad_B.permute(1, 2, 0),
            grad_C.permute(1, 2, 0), grad_h0)


@torch.library.custom_op("hier_mamba::blocked_selective_scan", mutates_args=())
def _scan_op(u: torch.Tensor, delta: torch.Tensor, A: torch.Tensor, B: torch.Tensor, C: torch.Tensor,
             h0: torch.Tensor, block: int) -> list[torch.Tensor]:
    """The scan as one opaque operator for torch.compile (its time loops would otherwise be traced step by step,
    thousands of nodes at l = 512): [y, final state, *what backward reads]."""
    inputs = (u, delta, A, B, C, h0)
    y, final_state, saved = _forward(u, delta, A, B, C, h0, block)
    return [_owned(t, inputs) for t in (y, final_state, *saved)]


def _owned(t: torch.Tensor, inputs) -> torch.Tensor:
    """t contiguous in storage of its own: a custom op's outputs may not alias its inputs, and their strides must be
    those of the fake implementation."""
    shares = any(t.untyped_storage().data_ptr() == i.untyped_storage().data_ptr() for i in inputs)
    return t.clone(memory_format=torch.contiguous_format) if shares else t.contiguous()


@_scan_op.register_fake
def _(u, delta, A, B, C, h0, block):
    (batch, dim, length), state_size = u.shape, A.shape[1]
    blocks = -(-length // block)
    return [u.new_empty(batch, dim, length), u.new_empty(batch, dim, state_size),
            u.new_empty(length, batch, dim), u.new_empty(length, batch, dim), u.new_empty(state_size, dim),
            u.new_empty(length, batch, state_size), u.new_empty(length, batch, state_size),
            u.new_empty(blocks, batch, state_size, dim)]


@torch.library.custom_op("hier_mamba::blocked_selective_scan_backward", mutates_args=())
def _scan_backward_op(grad_y: torch.Tensor, grad_final: torch.Tensor, saved: list[torch.Tensor],
                      block: int) -> list[torch.Tensor]:
    inputs = (grad_y, grad_final, *saved)
    return [_owned(t, inputs) for t in _backward(grad_y, grad_final, saved, block)]


@_scan_backward_op.register_fake
def _(grad_y, grad_final, saved, block):
    delta_t, _, A_t, B_t, _, entering = saved
    length, batch, dim = delta_t.shape
    state_size = A_t.shape[0]
    return [grad_y.new_empty(batch, dim, length), grad_y.new_empty(batch, dim, length),
            grad_y.new_empty(dim, state_size), grad_y.new_empty(batch, state_size, length),
            grad_y.new_empty(batch, state_size, length), grad_y.new_empty(batch, dim, state_size)]


def _setup_context(ctx, inputs, output):
    ctx.block = inputs[-1]
    ctx.save_for_backward(*output[2:])


def _op_backward(ctx, grads):
    grad_y, grad_final = grads[0], grads[1]
    grad_y = torch.zeros_like(ctx.saved_tensors[0]).permute(1, 2, 0) if grad_y is None else grad_y
    if grad_final is None:
        delta_t, A_t = ctx.saved_tensors[0], ctx.saved_tensors[2]
        grad_final = delta_t.new_zeros(delta_t.shape[1], delta_t.shape[2], A_t.shape[0])
    return (*_scan_backward_op(grad_y, grad_final, list(ctx.saved_tensors), ctx.block), None)


_scan_op.register_autograd(_op_backward, setup_context=_setup_context)


class _BlockBuffers:
    """Reusable (T, b, n, d) scratch tensors, one per name, sized for a full block (shorter blocks take a prefix)."""

    def __init__(self, block: int, like: torch.Tensor):
        self.block, self.like, self.tensors = block, like, {}

    def take(self, name: str, shape: torch.Size) -> torch.Tensor:
        if name not in self.tensors:
            self.tensors[name] = self.like.new_empty((self.block, *shape[1:]))
        return self.tensors[name][:shape[0]]


def _scan_block(buffers: _BlockBuffers, delta, u, A_t, B, h0):
    """One block of the recurrence. delta, u: (T, b, d); A_t: (n, d); B: (T, b, n); h0: (b, n, d).
    Returns dA = exp(Delta A) and the states h_t, both (T, b, n, d) buffers of ``buffers``."""
    shape = (delta.shape[0], delta.shape[1], A_t.shape[0], delta.shape[2])
    dA, states = buffers.take("dA", shape), buffers.take("states", shape)
    exp_decay_(torch.mul(delta.unsqueeze(-2), A_t, out=dA))
    torch.mul(B.unsqueeze(-1), (delta * u).unsqueeze(-2), out=states)  # dBu, overwritten by the states below
    prev = h0
    for t in range(states.shape[0]):
        states[t].addcmul_(dA[t], prev)
        prev = states[t]
    return dA, states


def blocked_selective_scan(u, delta, A, B, C, h0, block: int = DEFAULT_BLOCK):
    """y (b, d, l) and final state (b, d, n) of the scan without D and gate; all inputs fp32 (see the class)."""
    if block < 1:
        raise ValueError(f"block must be a positive number of steps, got {block}")
    args = (u.contiguous(), delta.contiguous(), A.contiguous(), B.contiguous(), C.contiguous(), h0.contiguous(), block)
    if torch.compiler.is_compiling():  # one opaque node (custom op) instead of the traced time loops
        y, final_state, *_ = _scan_op(*args)
        return y, final_state
    return BlockedSelectiveScan.apply(*args)
