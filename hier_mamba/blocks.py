"""Pre-norm residual Mamba blocks and the stacks (H and L modules) built from them.

A :class:`Block` is a ``GradientCheckpointingLayer``: ``model.gradient_checkpointing_enable()`` or
``TrainingArguments(gradient_checkpointing=True)`` recomputes each block in backward (depth-wise
checkpointing), independent of the cycle-wise setting ``checkpoint_cycles``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.modeling_layers import GradientCheckpointingLayer

from .configuration import HierMambaConfig
from .mixers import MIXER_CLASSES, MixerState
from .norms import RMSNorm


class Block(GradientCheckpointingLayer):
    """x + mixer(norm(x)); with ``bidirectional`` also + reverse_mixer over the time-reversed sequence.

    forward: (b, l, d) -> (b, l, d) and the mixer's final state; step: (b, d) -> (b, d) and new state.
    """

    def __init__(self, config: HierMambaConfig):
        super().__init__()
        mixer_class = MIXER_CLASSES[config.mixer]
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.mixer = mixer_class(config)
        # The reverse scan sees the future: only for non-generative (puzzle) heads.
        self.reverse_mixer = mixer_class(config) if config.bidirectional else None

    def forward(
        self,
        hidden_states: torch.Tensor,
        state: MixerState | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, MixerState]:
        """hidden_states: (b, l, d); state: the forward mixer's initial state or None. Returns (b, l, d), final state."""
        normed = self.norm(hidden_states)
        out, final_state = self.mixer(normed, state, attention_mask)
        if self.reverse_mixer is not None:
            if state is not None:
                raise ValueError("a bidirectional block cannot continue from a recurrent state (no cache, no generation)")
            mask = None if attention_mask is None else attention_mask.flip(1)
            reverse_out, _ = self.reverse_mixer(normed.flip(1), None, mask)  # (b, l, d), time reversed
            out = out + reverse_out.flip(1)
        return hidden_states + out, final_state

    def step(self, hidden_states: torch.Tensor, state: MixerState) -> tuple[torch.Tensor, MixerState]:
        """One token: hidden_states (b, d). Returns (b, d) and the new state."""
        if self.reverse_mixer is not None:
            raise ValueError("a bidirectional block has no single-token step (it reads the future)")
        out, new_state = self.mixer.step(self.norm(hidden_states), state)
        return hidden_states + out, new_state


class Stack(nn.Module):
    """``num_layers`` blocks and a final RMSNorm: one H or L module of HRM.

    The final norm keeps the H/L states at unit scale however many cycles add into them (HRM's
    post-norm plays that role). forward: (b, l, d) -> (b, l, d) and one state per layer.
    """

    def __init__(self, config: HierMambaConfig, num_layers: int):
        super().__init__()
        self.layers = nn.ModuleList([Block(config) for _ in range(num_layers)])
        self.norm_f = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(
        self,
        hidden_states: torch.Tensor,
        states: list[MixerState] | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, list[MixerState]]:
        """hidden_states: (b, l, d); states: one initial state per layer, or None. Returns (b, l, d), final states."""
        final_states = []
        for index, layer in enumerate(self.layers):
            hidden_states, state = layer(hidden_states, None if states is None else states[index],
                                         attention_mask=attention_mask)
            final_states.append(state)
        return self.norm_f(hidden_states), final_states

    def step(self, hidden_states: torch.Tensor, states: list[MixerState]) -> tuple[torch.Tensor, list[MixerState]]:
        """One token: hidden_states (b, d); states: one per layer. Returns (b, d) and the new states."""
        new_states = []
        for layer, state in zip(self.layers, states):
            hidden_states, state = layer.step(hidden_states, state)
            new_states.append(state)
        return self.norm_f(hidden_states), new_states
