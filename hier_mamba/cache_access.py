"""Reading and writing the model's recurrent states in a cache: its own HierMambaCache, or a transformers Cache.

``generate(..., cache_implementation="static")`` (and ``"dynamic"``) hands the model a transformers
``StaticCache`` / ``DynamicCache`` built from ``config.layer_types``: one ``LinearAttentionLayer`` per
(invocation, layer) slot, in the order of :class:`~hier_mamba.cache.HierMambaCache` (invocation-major). Such a
cache holds nothing until the prefill writes it; after that its tensors keep their shapes and addresses: every
later write copies into them in place (as transformers' Mamba2 updates its states), so a compiled decoding step
(``torch.compile(fullgraph=True)``) sees the same static inputs every token and does no Python-side bookkeeping
(checked on CPU; the cudagraphs of generate's default compile mode on a GPU are not tested here). Every write
advances each layer's token counter (``cumulative_length_linear``, a static-address tensor, advanced in place) by
the tokens it absorbed, so ``get_seq_length()`` is the absorbed length and a generation can continue from the cache.
transformers releases whose linear-attention layers have no such counter cannot say what a used cache absorbed:
:func:`absorbed_tokens` returns None there.
"""

from __future__ import annotations

from transformers.cache_utils import Cache, LinearAttentionCacheLayerMixin

from .cache import HierMambaCache
from .configuration import HierMambaConfig
from .mixers import MixerState
from .reasoning import invocation_schedule


def layers_per_invocation(config: HierMambaConfig) -> list[int]:
    """Cache slots of each stack invocation in schedule order (they sum to ``config.num_hidden_layers``)."""
    return [config.H_layers if kind == "H" else config.L_layers for kind in invocation_schedule(config)]


def check_cache(cache: Cache, config: HierMambaConfig) -> None:
    """Raise ValueError unless ``cache`` is a HierMambaCache or a transformers Cache of
    ``config.num_hidden_layers`` linear-attention layers (what StaticCache / DynamicCache build from this config)."""
    if isinstance(cache, HierMambaCache):
        return
    if not isinstance(cache, Cache):
        raise ValueError(f"cache must be a HierMambaCache or a transformers Cache, got {type(cache).__name__}")
    if len(cache.layers) != config.num_hidden_layers:
        raise ValueError(f"cache has {len(cache.layers)} layers, this model needs {config.num_hidden_layers} "
                         "(one per invocation and block: build it from the model's config)")
    for index, layer in enumerate(cache.layers):
        if not isinstance(layer, LinearAttentionCacheLayerMixin):
            raise ValueError(f"cache layer {index} is a {type(layer).__name__}: this recurrent model needs "
                             "linear-attention cache layers (config.layer_types)")


def holds_states(cache: Cache) -> bool:
    """Whether the cache holds states to continue from (a transformers cache holds none before its first write)."""
    return all(layer.has_previous_state[0] for layer in cache.layers)


def cached_states(cache: Cache, config: HierMambaConfig) -> list[list[MixerState]] | None:
    """The states per invocation (``states[i][j]``: layer j of invocation i), or None if the cache holds none."""
    check_cache(cache, config)
    if not holds_states(cache):
        return None
    if isinstance(cache, HierMambaCache):
        return cache.states
    grouped, start = [], 0
    for count in layers_per_invocation(config):
        grouped.append([MixerState(layer.conv_states[0], layer.recurrent_states[0])
                        for layer in cache.layers[start:start + count]])
        start += count
    return grouped


def absorbed_tokens(cache: Cache) -> int | None:
    """Tokens the cache has absorbed, or None where a transformers cache's layers do not count them."""
    if isinstance(cache, HierMambaCache):
        return cache.get_seq_length()
    if not holds_states(cache):
        return 0
    counter = getattr(cache.layers[0], "cumulative_length_linear", None)
    return None if counter is None else int(counter)


def store_states(cache: Cache, states: list[list[MixerState]], new_tokens: int) -> None:
    """Write the states after ``new_tokens`` tokens (a step: 1; a prefill or continued prefill: its length).

    A HierMambaCache replaces its tensors and counts the tokens. A transformers cache copies into its tensors in
    place (its layer's own ``lazy_initialization`` allocates them on the first write: zeros, marked as static
    addresses) and advances each layer's token counter in place by ``new_tokens``.
    """
    if isinstance(cache, HierMambaCache):
        cache.store(states, new_tokens=new_tokens)
        return
    flat = [state for invocation in states for state in invocation]
    for layer, state in zip(cache.layers, flat):
        if not layer.has_previous_state[0]:  # conv (b, channels, w - 1): conv_kernel_size = its width
            layer.lazy_initialization(conv_states=state.conv, recurrent_states=state.ssm)
            layer.has_previous_state[0] = True
        layer.conv_states[0].copy_(state.conv.detach())  # same shapes: the tensors keep their addresses
        layer.recurrent_states[0].copy_(state.ssm.detach())
        counter = getattr(layer, "cumulative_length_linear", None)
        if counter is not None:
            counter.add_(new_tokens)
