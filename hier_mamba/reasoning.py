"""The H/L cycle core of HRM over Mamba stacks: input injection, gradient window, cycle checkpointing.

One forward runs ``H_cycles * (L_cycles + 1)`` stack invocations, each a full scan over the sequence:

    for h in range(H_cycles):
        for l in range(L_cycles):
            z_L = L(z_L + z_H + x)      # fast module, input injection of x and z_H
        z_H = H(z_H + z_L)              # slow module

Gradient through the cycles is a setting (``bptt_steps``): only the last ``bptt_steps``
invocations are recorded by autograd (2 = HRM's one-step gradient: the last L and the last H call;
None = full BPTT). The earlier ones run under ``torch.no_grad()``, so activation memory is O(1) in
the number of cycles. ``checkpoint_cycles`` runs the recorded invocations in ~sqrt(m) segments
under ``torch.utils.checkpoint``: O(sqrt(m)) stored states instead of O(m), one extra forward.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import Stack
from .configuration import HierMambaConfig
from .mixers import MixerState


class Carry(NamedTuple):
    """The two recurrent sequences of HRM. z_H, z_L: (b, l, d)."""

    z_H: torch.Tensor
    z_L: torch.Tensor


def invocation_schedule(config: HierMambaConfig) -> list[str]:
    """Order of stack calls in one forward, e.g. ['L', 'L', 'H', 'L', 'L', 'H'] for H_cycles=L_cycles=2."""
    return (["L"] * config.L_cycles + ["H"]) * config.H_cycles


def first_recorded_invocation(config: HierMambaConfig) -> int:
    """Index of the first invocation that autograd records (the start of the bptt window)."""
    total = config.num_invocations
    return 0 if config.bptt_steps is None else max(0, total - config.bptt_steps)


class HierarchicalReasoner(nn.Module):
    """The H and L stacks, their initial states, and the cycle loop.

    forward: x (b, l, d) -> Carry of (b, l, d) sequences, plus per-invocation final states when asked.
    step:    x (b, d) and per-invocation states -> z_H (b, d) and the new states (O(1) per token).
    """

    def __init__(self, config: HierMambaConfig):
        super().__init__()
        self.config = config
        self.H = Stack(config, config.H_layers)
        self.L = Stack(config, config.L_layers)
        # HRM's fixed initial states: one random unit-scale vector per module, broadcast over positions.
        self.register_buffer("H_init", torch.randn(config.hidden_size))
        self.register_buffer("L_init", torch.randn(config.hidden_size))
        self.schedule = invocation_schedule(config)

    def initial_carry(self, x: torch.Tensor) -> Carry:
        """Initial z_H, z_L broadcast to x's shape (..., d)."""
        return Carry(self.H_init.to(x.dtype).expand_as(x), self.L_init.to(x.dtype).expand_as(x))

    def forward(
        self,
        x: torch.Tensor,
        carry: Carry | None = None,
        attention_mask: torch.Tensor | None = None,
        return_states: bool = False,
    ) -> tuple[Carry, list[list[MixerState]] | None]:
        """Run all cycles over the sequence.

        Args:
            x: (b, l, d) input embedding, injected into every L call.
            carry: z_H, z_L to start from (e.g. the previous ACT segment's, detached), or None for the init.
            attention_mask: (b, l) of 0/1; padded positions never reach a recurrent state.
            return_states: also return each invocation's final per-layer states (a cache prefill).
        Returns:
            the final Carry, and (if asked) one list of per-layer MixerStates per invocation.
        """
        # 1. Start from the initial states (or the given carry).
        z_H, z_L = carry if carry is not None else self.initial_carry(x)
        states: list[list[MixerState]] = []
        first = first_recorded_invocation(self.config)
        # 2. Invocations outside the gradient window: no autograd record.
        with torch.no_grad():
            for index in range(first):
                z_H, z_L = self._invoke(index, z_H, z_L, x, attention_mask, states if return_states else None)
        # 3. The gradient window, in sqrt-sized checkpointed segments when asked.
        recorded = range(first, len(self.schedule))
        if self.config.checkpoint_cycles and torch.is_grad_enabled() and not return_states:
            size = math.isqrt(len(recorded) - 1) + 1 if len(recorded) else 1  # ceil(sqrt(m))
            for start in range(first, len(self.schedule), size):
                segment = range(start, min(start + size, len(self.schedule)))
                z_H, z_L = checkpoint(self._run_segment, segment, z_H, z_L, x, attention_mask, use_reentrant=False)
        else:
            for index in recorded:
                z_H, z_L = self._invoke(index, z_H, z_L, x, attention_mask, states if return_states else None)
        return Carry(z_H, z_L), (states if return_states else None)

    def step(
        self, x: torch.Tensor, states: list[list[MixerState]]
    ) -> tuple[torch.Tensor, list[list[MixerState]]]:
        """One token through all invocations. x: (b, d); states: one per-layer list per invocation."""
        z_H, z_L = self.initial_carry(x)
        new_states = []
        for kind, invocation_states in zip(self.schedule, states):
            if kind == "L":
                z_L, invocation_states = self.L.step(z_L + z_H + x, invocation_states)
            else:
                z_H, invocation_states = self.H.step(z_H + z_L, invocation_states)
            new_states.append(invocation_states)
        return z_H, new_states

    def _invoke(self, index, z_H, z_L, x, attention_mask, states_out):
        """Invocation ``index`` of the schedule: one full scan of the L or the H stack."""
        if self.schedule[index] == "L":
            z_L, final_states = self.L(z_L + z_H + x, attention_mask=attention_mask)
        else:
            z_H, final_states = self.H(z_H + z_L, attention_mask=attention_mask)
        if states_out is not None:
            states_out.append(final_states)
        return z_H, z_L

    def _run_segment(self, segment, z_H, z_L, x, attention_mask):
        for index in segment:
            z_H, z_L = self._invoke(index, z_H, z_L, x, attention_mask, None)
        return z_H, z_L
