"""generate() glue of the causal LM: which cache it gets, how a prefill is fed, what each call feeds the model.

A recurrent model feeds each token once: the prefill (whole, or in chunks of ``prefill_chunk_size``) runs the
parallel scans into a cache, and every decoding step feeds the one new token. The cache says how many tokens it
has absorbed (HierMambaCache always; transformers' caches where their linear-attention layers keep a counter,
cache_access.py), so a generation continues from a used cache without feeding a token twice.
"""

from __future__ import annotations

import torch
from transformers import GenerationMixin

from .cache import HierMambaCache
from .cache_access import absorbed_tokens, layers_per_invocation


class HierMambaGenerationMixin(GenerationMixin):
    """transformers' GenerationMixin with the cache handling of a recurrent model (module docstring)."""

    def _prepare_cache_for_generation(self, generation_config, model_kwargs: dict, *args, **kwargs) -> None:
        """A transformers cache when ``cache_implementation`` names one ("static", "dynamic", ...). By default none:
        the prefill builds a HierMambaCache, which counts the absorbed tokens so a generation can continue from it;
        a chunked prefill (``prefill_chunk_size``) starts from an empty HierMambaCache that its first chunk fills."""
        if generation_config.cache_implementation is None and model_kwargs.get("cache") is None:
            if generation_config.prefill_chunk_size is not None and generation_config.use_cache is not False:
                model_kwargs["cache"] = HierMambaCache(layers_per_invocation=layers_per_invocation(self.config))
            return
        super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)

    def _get_static_cache_init_shape(self) -> None:
        """None: nothing to allocate early (transformers sizes attention heads here; a StaticCache of this model holds
        linear-attention layers, which its first write allocates)."""
        return None

    def _prefill(self, input_ids: torch.LongTensor, generation_config, model_kwargs: dict, *args, **kwargs):
        """The prefill of token ids into a cache: the tokens it has not absorbed, in one forward or, with
        ``prefill_chunk_size``, that many at a time, each chunk continuing the states of the last. Without a cache
        (a first generation) and from embeddings: transformers' prefill.

        What is new is the sequence length (the attention mask's width, which covers the absorbed tokens too, or
        ``input_ids``' length) minus the tokens the cache absorbed, so the input may be the whole sequence or only
        its new tokens, as transformers' generate allows. (transformers' own prefill gives a cache of
        linear-attention layers no count of what is new, and its chunk loop does not say a chunk is one.)
        Returns the last forward's output, whose logits pick the first new token.
        """
        cache = model_kwargs.get("cache")
        if cache is None or model_kwargs.get("inputs_embeds") is not None:
            return super()._prefill(input_ids, generation_config, model_kwargs, *args, **kwargs)
        mask = model_kwargs.get("attention_mask")  # (b, seen + new) or None (generate drops an all-ones mask)
        full = mask.shape[1] if mask is not None else getattr(generation_config, "_mask_length", -1)
        full = full if full > 0 else input_ids.shape[1]  # the sequence length after the prefill
        seen = self._tokens_absorbed(cache, None, from_embeds=False)
        new = min(max(full - seen, 1), input_ids.shape[1])
        chunk_size = generation_config.prefill_chunk_size or new
        others = {key: value for key, value in model_kwargs.items() if key not in ("cache", "attention_mask")}
        outputs = None
        for start in range(0, new, chunk_size):
            chunk = input_ids[:, input_ids.shape[1] - new + start:][:, :chunk_size]  # (b, <= chunk_size)
            end = full - new + start + chunk.shape[1]  # tokens absorbed once this chunk is fed
            inputs = self.prepare_inputs_for_generation(
                chunk, next_sequence_length=chunk.shape[1], cache=cache,
                attention_mask=None if mask is None else mask[:, :end], is_first_iteration=True, **others)
            outputs = self(**inputs, return_dict=True)
            cache = outputs.cache
        return outputs

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        next_sequence_length: int | None = None,
        cache: HierMambaCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """Prefill the whole prompt once; afterwards feed only the tokens (or embeddings) the cache has not seen.

        Single decoded tokens go without the attention mask (the O(1) step; transformers' Mamba2 drops it too);
        every other keyword (logits_to_keep, output_hidden_states, ...) is forwarded unchanged.
        """
        model_inputs = {key: value for key, value in kwargs.items() if key not in ("labels", "cache_position")}
        model_inputs["use_cache"] = use_cache
        if cache is not None:
            model_inputs["cache"] = cache
            seen = self._tokens_absorbed(cache, next_sequence_length, inputs_embeds is not None and is_first_iteration)
            if inputs_embeds is not None and is_first_iteration:  # continuing from embeddings: the full sequence
                unseen = inputs_embeds[:, seen:] if inputs_embeds.shape[1] > seen else inputs_embeds[:, -1:]
                model_inputs["inputs_embeds"] = unseen
                new = model_inputs["inputs_embeds"].shape[1]
            else:
                # generate's count may be a 0-d tensor (a transformers cache's counter); prefill only, not per step
                new = max(input_ids.shape[1] - seen, 1) if next_sequence_length is None else int(next_sequence_length)
                new = min(new, input_ids.shape[1])
                # contiguous: one stride for every step's (b, 1) ids, so a compiled forward compiles once
                model_inputs["input_ids"] = input_ids[:, -new:].clone(memory_format=torch.contiguous_format)
            if attention_mask is not None and new > 1:
                model_inputs["attention_mask"] = attention_mask
        elif inputs_embeds is not None and is_first_iteration:
            model_inputs.update(inputs_embeds=inputs_embeds, attention_mask=attention_mask)
        else:
            model_inputs.update(input_ids=input_ids, attention_mask=attention_mask)
        return model_inputs

    @staticmethod
    def _tokens_absorbed(cache, next_sequence_length: int | None, from_embeds: bool) -> int | None:
        """Tokens the cache has absorbed (None: generate's ``next_sequence_length`` says what is new, as on every
        decoding step: no host sync for the count).

        A HierMambaCache counts them; a transformers cache holds none before its first write and counts them after
        it (cache_access.store_states), except on transformers releases whose linear-attention layers have no counter.
        """
        if next_sequence_length is not None and not from_embeds and not isinstance(cache, HierMambaCache):
            return None
        seen = absorbed_tokens(cache)
        if seen is None:
            raise ValueError(f"this {type(cache).__name__} already holds states but this transformers release's "
                             "linear-attention layers do not count the tokens they absorbed, so the new part of the "
                             "input is unknown: continue from the HierMambaCache that generate returns by default")
        return seen
