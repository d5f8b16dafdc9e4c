"""HierMambaCache: the recurrent state of generation, O(1) in sequence length.

One (conv, ssm) :class:`MixerState` per (stack invocation, layer): each of the
``H_cycles * (L_cycles + 1)`` invocations is its own scan over the sequence, so each keeps its own
states (transformers' ``HrmText`` likewise keeps one cache slot per stack invocation). Prefill
fills it from the parallel scan; every later token updates it with the step form.
"""

from __future__ import annotations

import torch

from .mixers import MixerState


class HierMambaCache:
    """States of all invocations and layers, and how many tokens they have absorbed.

    ``states[i][j]`` is layer j of invocation i. Shapes are fixed by the config and the batch size:
    conv (b, channels, conv_kernel - 1), ssm (b, d_inner, n) or (b, heads, head_dim, n).
    """

    is_compileable = False

    def __init__(self, states: list[list[MixerState]], seen_tokens: int):
        self.states = states
        self.seen_tokens = seen_tokens

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens absorbed so far (prompt + generated); the cache size does not grow with it."""
        return self.seen_tokens

    def update(self, states: list[list[MixerState]], new_tokens: int) -> None:
        """Replace the states after a step or a continued prefill of ``new_tokens`` tokens."""
        self.states = states
        self.seen_tokens += new_tokens

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search): every state tensor is indexed on dim 0 with beam_idx."""
        self.states = [
            [MixerState(s.conv.index_select(0, beam_idx.to(s.conv.device)),
                        s.ssm.index_select(0, beam_idx.to(s.ssm.device))) for s in invocation]
            for invocation in self.states
        ]

    def nbytes(self) -> int:
        """Bytes of the storages the state tensors keep alive (a view counts its whole storage, once)."""
        storages = {}
        for invocation in self.states:
            for state in invocation:
                for tensor in state:
                    storage = tensor.untyped_storage()
                    storages[storage.data_ptr()] = storage.nbytes()
        return sum(storages.values())

    def __len__(self) -> int:
        return len(self.states)

    def __repr__(self) -> str:
        layers = len(self.states[0]) if self.states else 0
        return (f"HierMambaCache(invocations={len(self.states)}, layers_per_invocation~{layers}, "
                f"seen_tokens={self.seen_tokens}, bytes={self.nbytes()})")
