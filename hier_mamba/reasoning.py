"""The H/L cycle core of HRM over Mamba stacks: input injection, gradient window, cycle checkpointing.

One forward runs ``H_cycles * (L_cycles + 1)`` stack invocations, each a full scan over the sequence:

    for h in range(H_cycles):
        for l in range(L_cycles):
            z_L = L(z_L + z_H + x)      # fast module, input injection of x and z_H
        z_H = H(z_H + z_L)              # slow module

Gradient through the cycles is a setting (``bptt_steps``): only the last ``bptt_steps``
invocations are recorded by autograd (2 or "one_step" = HRM's one-step gradient: the last L and the
last H call; "last_cycle" = TRM's: the whole last H cycle; None = full BPTT). The earlier ones run
under ``torch.no_grad()``, so activation memory is O(1) in the number of cycles. ``checkpoint_cycles`` runs
the recorded invocations in ~sqrt(m) segments under ``torch.utils.checkpoint``: O(sqrt(m)) stored states
instead of O(m), one extra forward.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .blocks import HierMambaStack
from .configuration import HierMambaConfig
from .memory import HMemoryAttention
from .mixers import MixerState


class Carry(NamedTuple):
    """The recurrent sequences of HRM. z_H, z_L: (b, l, d); memory: up to h_memory_size past z_H (b, l, d)."""

    z_H: torch.Tensor
    z_L: torch.Tensor
    memory: tuple[torch.Tensor, ...] = ()

    def detach(self) -> "Carry":
        """The same values cut from the autograd graph (the boundary between ACT segments)."""
        return Carry(self.z_H.detach(), self.z_L.detach(), tuple(m.detach() for m in self.memory))


H_INIT_SEED, L_INIT_SEED = 0, 1


def fixed_initial_state(size: int, seed: int) -> torch.Tensor:
    """(size,) standard-normal draw from its own generator seeded with ``seed``: the same on every call."""
    return torch.randn(size, generator=torch.Generator().manual_seed(seed))


def invocation_schedule(config: HierMambaConfig) -> list[str]:
    """Order of stack calls in one forward, e.g. ['L', 'L', 'H', 'L', 'L', 'H'] for H_cycles=L_cycles=2.

    ``architecture="looped"`` calls the single stack L for all ``num_invocations``.
    """
    if config.architecture == "looped":
        return ["L"] * config.num_invocations
    return (["L"] * config.L_cycles + ["H"]) * config.H_cycles


def first_recorded_invocation(config: HierMambaConfig) -> int:
    """Index of the first invocation that autograd records (the start of the bptt window)."""
    total = config.num_invocations
    window = config.recorded_invocations
    return 0 if window is None else max(0, total - window)


class HierarchicalReasoner(nn.Module):
    """The H and L stacks, their initial states, the optional H memory, and the cycle loop.

    forward: x (b, l, d) -> Carry of (b, l, d) sequences, plus per-invocation final states when asked.
    step:    x (b, d) and per-invocation states -> z_H (b, d) and the new states (O(1) per token).
    """

    def __init__(self, config: HierMambaConfig):
        super().__init__()
        self.config = config
        self.looped = config.architecture == "looped"
        self.L = HierMambaStack(config, config.L_layers, final_norm=config.L_final_norm)
        self.H = None if self.looped else HierMambaStack(config, config.H_layers)
        self.memory = (HMemoryAttention(config.hidden_size, config.h_memory_heads, config.rms_norm_eps)
                       if config.h_memory_size else None)
        # HRM's fixed initial states: one unit-scale vector per module, broadcast over positions. Frozen
        # parameters with a seeded draw (HrmText's frozen z_L_init): every construction path, the meta-device
        # one of from_pretrained included, gives the same values, and checkpoints store them.
        # initial_states="zeros" (a converted Mamba): no parameters, both states start at 0.
        if config.initial_states == "zeros":
            self.register_parameter("H_init", None)
            self.register_parameter("L_init", None)
        else:
            self.H_init = nn.Parameter(fixed_initial_state(config.hidden_size, H_INIT_SEED), requires_grad=False)
            self.L_init = nn.Parameter(fixed_initial_state(config.hidden_size, L_INIT_SEED), requires_grad=False)
        self.schedule = invocation_schedule(config)

    def initial_carry(self, x: torch.Tensor) -> Carry:
        """Initial z_H, z_L broadcast to x's shape (..., d), and an empty memory."""
        if self.H_init is None:  # initial_states="zeros"
            zeros = x.new_zeros(()).expand_as(x)  # (..., d), no memory allocated
            return Carry(zeros, zeros)
        return Carry(self.H_init.to(x.dtype).expand_as(x), self.L_init.to(x.dtype).expand_as(x))

    def forward(
        self,
        x: torch.Tensor,
        carry: Carry | None = None,
        attention_mask: torch.Tensor | None = None,
        return_states: bool = False,
        initial_states: list[list[MixerState]] | None = None,
        hidden_states_out: list[torch.Tensor] | None = None,
        step: bool = False,
    ) -> tuple[Carry, list[list[MixerState]] | None]:
        """Run all cycles over the sequence (step=True: one token, see :meth:`step`).

        Args:
            x: (b, l, d) input embedding, injected into every L call.
            carry: z_H, z_L (and memory) to start from, e.g. the previous ACT segment's, detached; None: the init.
            attention_mask: (b, l) of 0/1; padded positions never reach a recurrent state.
            return_states: also return each invocation's final per-layer states (a cache prefill).
            initial_states: per-invocation per-layer states to continue from (a cached sequence), or None.
            hidden_states_out: if a list, every block output (b, l, d) of every invocation is appended in order.
        Returns:
            the final Carry, and (if asked) one list of per-layer MixerStates per invocation.
        """
        if step:
            if self._compiled_step is None:
                return self._step(x, initial_states, hidden_states_out)
            return self._compiled_step(self, x, initial_states, hidden_states_out)  # this instance's weights
        # 1. Start from the initial states (or the given carry).
        carry = carry if carry is not None else self.initial_carry(x)
        states = [] if return_states else None
        first = first_recorded_invocation(self.config)
        # 2. Invocations outside the gradient window: no autograd record.
        invoke = functools.partial(self._invoke, x=x, attention_mask=attention_mask, states_out=states,
                                   initial_states=initial_states, hidden_states_out=hidden_states_out)
        with torch.no_grad():
            for index in range(first):
                carry = invoke(index, carry)
        # 3. The gradient window, in ceil(sqrt(m))-sized checkpointed segments when asked.
        recorded = range(first, len(self.schedule))
        plain = return_states or initial_states is not None or hidden_states_out is not None
        if self.config.checkpoint_cycles and torch.is_grad_enabled() and not plain:
            size = math.isqrt(len(recorded) - 1) + 1 if len(recorded) else 1
            for start in range(first, len(self.schedule), size):
                segment = range(start, min(start + size, len(self.schedule)))
                carry = checkpoint(self._run_segment, segment, carry, x, attention_mask, use_reentrant=False)
        else:
            for index in recorded:
                carry = invoke(index, carry)
        return carry, states

    def step(
        self, x: torch.Tensor, states: list[list[MixerState]], hidden_states_out: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[list[MixerState]]]:
        """One token through all invocations. x: (b, d); states: one per-layer list per invocation;
        hidden_states_out as in forward, entries (b, d). Runs through ``__call__`` so module hooks (accelerate
        offload of H_init / L_init, FSDP) apply. Returns z_H (b, d) and the new states."""
        return self(x, initial_states=states, hidden_states_out=hidden_states_out, step=True)

    # set by compile_step: the torch.compile'd unbound _step that decoding then runs, called with the reasoner, so
    # a copy (copy.deepcopy) that shares it still runs on its own weights (dynamo guards on the module it gets)
    _compiled_step = None

    def compile_step(self, enabled: bool = True, **options) -> None:
        """Decode through ``torch.compile(HierarchicalReasoner._step, **options)`` (``dynamic=False`` unless given), or stop
        (``enabled=False``). One token's step is ~30 small ops per block: eager CPU decoding is bound by their
        dispatch, which inductor fuses into a few kernels between the projections. The first compiled token
        compiles (tens of seconds on CPU; again for a new batch size); module hooks are traced along (or split
        the graph). Numerics: the same ops, fused, so fp32 results agree to rounding (~1e-6)."""
        self._compiled_step = (torch.compile(HierarchicalReasoner._step, **{"dynamic": False, **options})
                               if enabled else None)

    def _step(self, x, states, hidden_states_out):
        """See :meth:`step`.

        The H memory of a token holds that token's earlier z_H, so it needs no cache of its own.
        """
        carry = self.initial_carry(x)
        new_states = []
        for index, invocation_states in enumerate(states):
            stack, inputs = self._route(index, carry, x)
            output, invocation_states = stack.step(inputs, invocation_states, hidden_states_out)
            carry = self._update(index, carry, output)
            new_states.append(invocation_states)
        return carry.z_H, new_states

    def _invoke(self, index, carry, x, attention_mask, states_out, initial_states=None,
                hidden_states_out=None) -> Carry:
        """Invocation ``index`` of the schedule: one full scan of the L or the H stack
        (from ``initial_states[index]`` when given)."""
        stack, inputs = self._route(index, carry, x)
        output, final_states = stack(inputs, None if initial_states is None else initial_states[index],
                                     attention_mask=attention_mask, hidden_states_out=hidden_states_out)
        if states_out is not None:
            states_out.append(final_states)
        return self._update(index, carry, output)

    def _route(self, index: int, carry: Carry, x: torch.Tensor) -> tuple[HierMambaStack, torch.Tensor]:
        """The stack of invocation ``index`` and its injected input: L(z_L + z_H + x), H(z_H + z_L), looped L(z + x)."""
        if self.looped:
            stack, terms = self.L, (carry.z_L, x)
        elif self.schedule[index] == "L":
            stack, terms = self.L, (carry.z_L, carry.z_H, x)
        else:
            stack, terms = self.H, (carry.z_H, carry.z_L)
        device = stack.layers[0].norm.weight.device  # a device_map may place H, L and the embeddings apart (as HrmText)
        if device.type == "meta":  # offloaded (accelerate loads it in the stack's own hook): leave the inputs be
            device = terms[0].device
        injected = terms[0].to(device)
        for term in terms[1:]:
            injected = injected + term.to(device)
        return stack, injected

    def _update(self, index: int, carry: Carry, output: torch.Tensor) -> Carry:
        """The carry after invocation ``index`` produced ``output``; H outputs also read and join the memory."""
        if self.looped:  # one stack: the head reads its state
            return Carry(output, output, carry.memory)
        if self.schedule[index] == "L":
            return Carry(carry.z_H, output, carry.memory)
        memory = carry.memory
        if self.memory is not None:
            if memory:
                output = self.memory(output, torch.stack(memory, dim=-2))  # memory: (..., M, d)
            memory = (memory + (output,))[-self.config.h_memory_size:]
        return Carry(output, carry.z_L, memory)

    def _run_segment(self, segment, carry, x, attention_mask) -> Carry:
        for index in segment:
            carry = self._invoke(index, carry, x, attention_mask, None)
        return carry
