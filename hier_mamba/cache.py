"""HierMambaCache: the recurrent state of generation, O(1) in sequence length, as a ``transformers.Cache``.

One (conv, ssm) :class:`MixerState` per (stack invocation, layer): each of the
``H_cycles * (L_cycles + 1)`` invocations is its own scan over the sequence, so each keeps its own
states (transformers' ``HrmText`` likewise keeps one cache slot per stack invocation). Prefill
fills it from the parallel scan; every later token updates it with the step form.

Each slot is a :class:`MixerStateLayer`, a transformers linear-attention cache layer, so
transformers' own code paths work on it: ``generate(..., cache=...)`` continuation (``is_linear``),
beam reordering (``reorder_cache``), ``batch_repeat_interleave`` / ``batch_select_indices``,
``reset``, offloading. Slots are flattened in invocation-major order: ``layers[k]`` is layer j of
invocation i, k = sum of the layer counts of invocations < i, plus j (``config.num_hidden_layers`` slots).
"""

from __future__ import annotations

import torch
from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin

from .mixers import MixerState


def row_major(t: torch.Tensor) -> torch.Tensor:
    """t with row-major strides, size-1 dims included (a copy only when they differ). A prefill's final states can
    carry any stride on a size-1 batch dim; the steps' states are row-major, and a compiled step
    (``compile_decoding``) specializes on strides: one layout means one compilation, not two."""
    strides, running = [], 1
    for size in reversed(t.shape):
        strides.append(running)
        running *= size
    return t if t.stride() == tuple(reversed(strides)) else t.clone(memory_format=torch.contiguous_format)


class MixerStateLayer(LinearAttentionCacheLayerMixin):
    """One cache slot: ``conv_states[0]`` (b, channels, conv_kernel - 1), ``recurrent_states[0]`` (the fp32 ssm state).

    The states are replaced (not copied into) on every update: the mixers are functional (state in, state out).
    Not croppable: a recurrent state cannot give back tokens it absorbed, and no history of past states is kept
    (transformers' linear-attention layers declare themselves croppable when they record that history).
    """

    is_croppable = False

    def __init__(self, state: MixerState | None = None):
        """``state`` None: an empty slot that the first write fills (``has_previous_state[0]`` False until then)."""
        super().__init__(number_of_states=1)
        if state is not None:
            self.set_state(MixerState(*(row_major(t) for t in state)))

    def set_state(self, state: MixerState) -> None:
        """Hold ``state`` (its tensors, not copies) and mark the slot as holding one."""
        self.lazy_initialization(state.conv, state.ssm)

    @property
    def state(self) -> MixerState:
        return MixerState(self.conv_states[0], self.recurrent_states[0])

    def lazy_initialization(self, conv_states=None, recurrent_states=None, state_idx: int = 0, **kwargs) -> None:
        """Take the given tensors as the slot's states (transformers' layers allocate zeros here; ours are given)."""
        if conv_states is not None:
            self.conv_states[state_idx] = conv_states
            self.conv_kernel_size[state_idx] = conv_states.shape[-1]
            self.is_conv_states_initialized[state_idx] = self.has_previous_state[state_idx] = True
            self.device, self.dtype = conv_states.device, conv_states.dtype
        if recurrent_states is not None:
            self.recurrent_states[state_idx] = recurrent_states
            self.is_recurrent_states_initialized[state_idx] = True

    def update_conv_state(self, conv_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        self.lazy_initialization(conv_states=conv_states, state_idx=state_idx)
        return conv_states

    def update_recurrent_state(self, recurrent_states: torch.Tensor, state_idx: int = 0, **kwargs) -> torch.Tensor:
        self.lazy_initialization(recurrent_states=recurrent_states, state_idx=state_idx)
        return recurrent_states

    def batch_repeat_interleave(self, repeats: int) -> None:
        if self.has_previous_state[0]:  # an empty slot has nothing to repeat
            self.set_state(MixerState(*(t.repeat_interleave(repeats, dim=0) for t in self.state)))

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.has_previous_state[0]:
            self.set_state(MixerState(*(t[indices] for t in self.state)))

    @property
    def is_compileable(self) -> bool:
        return False  # states are replaced, not updated in place: no static addresses for cudagraphs

    def crop(self, tokens_to_remove: int) -> None:
        """Not supported (``is_croppable`` is False): no history of past states is kept."""
        raise NotImplementedError("a recurrent state cannot drop tokens it has absorbed "
                                  "(HierMambaCache is not croppable)")


class HierMambaCache(Cache):
    """States of all invocations and layers, and how many tokens they have absorbed.

    generate's default cache (transformers' Mamba2 gets a DynamicCache of linear-attention layers in that role; this
    one is a plain ``Cache`` of :class:`MixerStateLayer` slots, nothing of DynamicCache's attention key/value
    machinery applies). Its states are replaced, not copied into, so it is not compileable; for a compiled
    decoding, ``generate(..., cache_implementation="static")`` (cache_access.py).

    ``states[i][j]`` is layer j of invocation i. Shapes are fixed by the config and the batch size:
    conv (b, channels, conv_kernel - 1), ssm (b, d_inner, n) or (b, heads, head_dim, n).
    """

    def __init__(self, states: list[list[MixerState]] | None = None, seen_tokens: int = 0, *,
                 layers_per_invocation: list[int] | None = None):
        """
        Args:
            states: the states after ``seen_tokens`` tokens, per invocation (a prefill's final states).
            seen_tokens: tokens those states have absorbed.
            layers_per_invocation: without ``states``, the slot count of each invocation
                (cache_access.layers_per_invocation(config)): an empty cache that the next forward fills, as
                generate's chunked prefill needs one before its first chunk.
        """
        if (states is None) == (layers_per_invocation is None):
            raise ValueError("pass either states or layers_per_invocation (an empty cache)")
        if states is None:
            layers = [MixerStateLayer() for _ in range(sum(layers_per_invocation))]
            if seen_tokens:
                raise ValueError(f"an empty cache has absorbed no tokens, got seen_tokens={seen_tokens}")
        else:
            layers = [MixerStateLayer(state) for invocation in states for state in invocation]
            layers_per_invocation = [len(invocation) for invocation in states]
        super().__init__(layers=layers)
        self.layers_per_invocation = list(layers_per_invocation)
        self.seen_tokens = seen_tokens

    @property
    def states(self) -> list[list[MixerState]]:
        """The slots regrouped per invocation: ``states[i][j]`` is layer j of invocation i."""
        grouped, start = [], 0
        for count in self.layers_per_invocation:
            grouped.append([layer.state for layer in self.layers[start:start + count]])
            start += count
        return grouped

    def __iter__(self):
        """The MixerState of each slot, in slot order."""
        return (layer.state for layer in self.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens absorbed so far (prompt + generated); the cache size does not grow with it."""
        return self.seen_tokens

    def update(self, *args, **kwargs):
        """Attention key/value updates do not apply to recurrent states: :meth:`store` writes them."""
        raise NotImplementedError("HierMambaCache holds recurrent states, not attention keys/values: "
                                  "write them with store(states, new_tokens)")

    def store(self, states: list[list[MixerState]], new_tokens: int) -> None:
        """Replace the states after a step or a (continued) prefill of ``new_tokens`` tokens."""
        flat = [state for invocation in states for state in invocation]
        if len(flat) != len(self.layers):
            raise ValueError(f"expected states for {len(self.layers)} slots, got {len(flat)}")
        for layer, state in zip(self.layers, flat):
            if new_tokens == 1 and layer.has_previous_state[0]:  # a step: same shapes, dtype and device
                layer.conv_states[0], layer.recurrent_states[0] = state
            else:  # a prefill: its states laid out as the constructor keeps them
                layer.set_state(MixerState(*(row_major(t) for t in state)))
        self.seen_tokens += new_tokens

    def reset(self) -> None:
        """Zero every state and forget the absorbed tokens (a new sequence)."""
        super().reset()
        self.seen_tokens = 0

    @property
    def is_compileable(self) -> bool:
        return False

    def nbytes(self) -> int:
        """Bytes of the storages the state tensors keep alive (a view counts its whole storage, once)."""
        storages = {}
        for layer in self.layers:
            for tensor in (t for t in layer.state if t is not None):
                storage = tensor.untyped_storage()
                storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def __repr__(self) -> str:
        return (f"HierMambaCache(invocations={len(self.layers_per_invocation)}, slots={len(self.layers)}, "
                f"seen_tokens={self.seen_tokens}, bytes={self.nbytes()})")
