"""Pre-norm residual Mamba blocks and the stacks (H and L modules) built from them.

A :class:`HierMambaBlock` is a ``GradientCheckpointingLayer``: ``model.gradient_checkpointing_enable()`` or
``TrainingArguments(gradient_checkpointing=True)`` recomputes each block in backward (depth-wise
checkpointing), independent of the cycle-wise setting ``checkpoint_cycles``.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration import HierMambaConfig
from .grid import inverse_order, scan_order
from .mixers import MIXER_CLASSES, MixerState
from .norms import RMSNorm


class HierMambaBlock(GradientCheckpointingLayer):
    """x + mixer(norm(x)); with ``bidirectional`` also + reverse_mixer over the time-reversed sequence;
    with ``grid_scan_orders`` beyond "row", also + both scans of each further grid order (grid.py),
    each run on the permuted sequence and its output permuted back.

    forward: (b, l, d) -> (b, l, d) and the mixer's final state; step: (b, d) -> (b, d) and new state.
    """

    def __init__(self, config: HierMambaConfig):
        super().__init__()
        mixer_class = MIXER_CLASSES[config.mixer]
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = mixer_class(config)
        self.residual_in_fp32 = config.residual_in_fp32
        # The reverse scan sees the future: only for non-generative (puzzle) heads.
        self.reverse_mixer = mixer_class(config) if config.bidirectional else None
        extra_orders = [order for order in config.grid_scan_orders if order != "row"]
        self.grid_mixers = nn.ModuleDict({order: nn.ModuleList([mixer_class(config), mixer_class(config)])
                                          for order in extra_orders})  # (forward, reverse) per order
        self.grid_length = math.prod(config.grid_shape) if config.grid_shape else None
        # Built on first use per device, not buffers: derived from the config, so nothing to save, and
        # nothing for from_pretrained's meta-device construction to leave uninitialised.
        self.grid_shape, self.box_shape = config.grid_shape, config.box_shape
        self._scan_orders: dict[tuple[str, torch.device], tuple[torch.Tensor, torch.Tensor]] = {}

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: MixerState | None = None,
        attention_mask: torch.Tensor | None = None,
        step: bool = False,
    ) -> tuple[torch.Tensor, MixerState]:
        """hidden_states: (b, l, d); state: the forward mixer's initial state or None. Returns (b, l, d), final state.
        step=True: one token (b, d), see :meth:`step`."""
        if step:
            return self._step(hidden_states, state)
        # 1. The row-major (given-order) scan, whose final state a cache can continue from.
        residual, hidden_states = self._residual(hidden_states)
        normed = self.norm(hidden_states)
        out, final_state = self.mixer(normed, state, attention_mask)
        if self.reverse_mixer is not None:
            if state is not None:
                raise ValueError("a bidirectional block cannot continue from a recurrent state (no cache, no generation)")
            out = out + _reverse_scan(self.reverse_mixer, normed, attention_mask)
        # 2. Each further grid order: permute into scan order, scan both ways, permute back.
        if self.grid_mixers and normed.shape[1] != self.grid_length:
            raise ValueError(f"grid_scan_orders needs sequences of grid_shape's {self.grid_length} cells, "
                             f"got length {normed.shape[1]}")
        for order, (forward_mixer, reverse_mixer) in self.grid_mixers.items():
            permutation, inverse = self._scan_order(order, normed.device)  # (l,) each
            permuted = normed[:, permutation]  # (b, l, d) in scan order
            mask = None if attention_mask is None else attention_mask[:, permutation]
            scanned = forward_mixer(permuted, None, mask)[0] + _reverse_scan(reverse_mixer, permuted, mask)
            out = out + scanned[:, inverse]  # (b, l, d) back in row-major order
        return residual + out, final_state

    def _residual(self, hidden_states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The residual stream and the norm's input: with ``residual_in_fp32`` the stream in fp32 and the input in the
        weights' dtype (transformers' MambaBlock / mamba_ssm's Block), else both ``hidden_states``."""
        if not self.residual_in_fp32:
            return hidden_states, hidden_states
        return hidden_states.float(), hidden_states.to(self.norm.weight.dtype)

    def _scan_order(self, order: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """The permutation of ``order`` and its inverse, (l,) int64 each on ``device``, built once."""
        key = (order, device)
        if key not in self._scan_orders:
            permutation = scan_order(order, self.grid_shape, self.box_shape, device=device)
            self._scan_orders[key] = (permutation, inverse_order(permutation))
        return self._scan_orders[key]

    def step(self, hidden_states: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """One token: hidden_states (b, d). Returns (b, d) and the new state. Through ``__call__``, so hooks on the
        block (FSDP2's fully_shard unsharding, offload) run when decoding too."""
        return self(hidden_states, state, step=True)

    def _step(self, hidden_states: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        if self.reverse_mixer is not None:
            raise ValueError("a bidirectional block has no single-token step (it reads the future)")
        residual, hidden_states = self._residual(hidden_states)
        out, new_state = self.mixer.step(self.norm(hidden_states), state)
        return residual + out, new_state


def _reverse_scan(mixer: nn.Module, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """mixer over the time-reversed sequence, returned in forward time. x: (b, l, d) -> (b, l, d)."""
    mask = None if attention_mask is None else attention_mask.flip(1)
    return mixer(x.flip(1), None, mask)[0].flip(1)


class HierMambaStack(nn.Module):
    """``num_layers`` blocks and a final RMSNorm: one H or L module of HRM.

    The final norm keeps the H/L states at unit scale however many cycles add into them (HRM's
    post-norm plays that role); ``final_norm=False`` leaves it out (norm_f is None: the output is the residual
    stream, as in the L stack of a converted Mamba). forward: (b, l, d) -> (b, l, d) and one state per layer.
    """

    def __init__(self, config: HierMambaConfig, num_layers: int, final_norm: bool = True):
        super().__init__()
        self.layers = nn.ModuleList([HierMambaBlock(config) for _ in range(num_layers)])
        self.norm_f = RMSNorm(config.hidden_size, eps=config.rms_norm_eps) if final_norm else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        states: list[MixerState] | None = None,
        attention_mask: torch.Tensor | None = None,
        hidden_states_out: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[MixerState]]:
        """hidden_states: (b, l, d); states: one initial state per layer, or None. Returns (b, l, d), final states.

        hidden_states_out: if a list, each block's output (b, l, d) is appended, the last one after norm_f.
        """
        final_states = []
        for index, layer in enumerate(self.layers):
            hidden_states, state = layer(hidden_states, None if states is None else states[index],
                                         attention_mask=attention_mask)
            final_states.append(state)
            if hidden_states_out is not None and index < len(self.layers) - 1:
                hidden_states_out.append(hidden_states)
        return self._output(hidden_states, hidden_states_out), final_states

    def step(
        self, hidden_states: torch.Tensor, states: list[MixerState], hidden_states_out: list[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, list[MixerState]]:
        """One token: hidden_states (b, d); states: one per layer. Returns (b, d) and the new states (hidden_states_out
        as in forward, entries (b, d))."""
        new_states = []
        for index, (layer, state) in enumerate(zip(self.layers, states)):
            hidden_states, state = layer.step(hidden_states, state)
            new_states.append(state)
            if hidden_states_out is not None and index < len(self.layers) - 1:
                hidden_states_out.append(hidden_states)
        return self._output(hidden_states, hidden_states_out), new_states

    def _output(self, hidden_states: torch.Tensor, hidden_states_out: list[torch.Tensor] | None) -> torch.Tensor:
        """The stack's output: the last block's, after norm_f when there is one; recorded last in hidden_states_out."""
        output = hidden_states if self.norm_f is None else self.norm_f(hidden_states)
        if hidden_states_out is not None:
            hidden_states_out.append(output)
        return output

