"""Hugging Face glue: HierMambaPreTrainedModel, HierMambaModel, HierMambaForCausalLM.

No math lives here: the cycle loop is in reasoning.py, the mixers in mixers.py. This file turns
token ids into embeddings, routes prefill / step / continued prefill, owns the cache object, and
computes logits and the loss; generate()'s cache handling is generation.py.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from .cache import HierMambaCache
from .cache_access import cached_states, store_states
from .configuration import HierMambaConfig
from .generation import HierMambaGenerationMixin
from .mixers import FP32_PARAMETERS, Mamba1Mixer, Mamba2Mixer, inverse_softplus_dt
from .reasoning import H_INIT_SEED, L_INIT_SEED, Carry, HierarchicalReasoner, fixed_initial_state


@dataclass
class HierMambaOutput(ModelOutput):
    """last_hidden_state: z_H (b, l, d); carry: final (z_H, z_L); cache: states to continue with;
    hidden_states (with output_hidden_states): the scaled input embedding, then every block output of every
    stack invocation in schedule order (each invocation's last block after its stack's final norm):
    1 + config.num_hidden_layers tensors (b, l, d)."""

    last_hidden_state: torch.Tensor | None = None
    carry: Carry | None = None
    cache: HierMambaCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


@dataclass
class HierMambaCausalLMOutput(ModelOutput):
    """loss: mean next-token cross-entropy; logits: (b, l, vocab); cache, hidden_states as in HierMambaOutput."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: HierMambaCache | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None


# Keyword arguments transformers' generation or Trainer may pass that mean nothing to a recurrent model without
# attention or positions (transformers' Mamba2 swallows them too); any other unknown keyword raises a TypeError.
IGNORED_FORWARD_KWARGS = frozenset({"position_ids", "cache_position", "output_attentions"})


LOSS_KWARGS = frozenset({"num_items_in_batch", "shift_labels", "ignore_index"})  # ForCausalLMLoss's keywords


def check_forward_kwargs(owner: str, kwargs: dict, accepted: frozenset = frozenset()) -> None:
    """Raise TypeError naming the first keyword that is neither ignored (see above) nor ``accepted``."""
    for name in kwargs:
        if name not in IGNORED_FORWARD_KWARGS and name not in accepted:
            raise TypeError(f"{owner}.forward() got an unexpected keyword argument {name!r}")


def check_attention_mask(mask: torch.Tensor | None, shape: torch.Size, cached: bool) -> torch.Tensor | None:
    """Validate a (b, l) 0/1 attention mask (with a cache also (b, seen + l)) and return its last l columns."""
    if mask is None:
        return None
    batch, length = shape
    width_ok = mask.dim() == 2 and (mask.shape[1] == length or (cached and mask.shape[1] > length))
    if not width_ok or mask.shape[0] != batch:
        raise ValueError(f"attention_mask has shape {tuple(mask.shape)}, expected {(batch, length)}"
                         + (" or (batch, cached + new tokens)" if cached else ""))
    mask = mask[:, mask.shape[1] - length:]
    if not torch.compiler.is_compiling() and bool(((mask != 0) & (mask != 1)).any()):
        raise ValueError("attention_mask must hold only 0 (padding) and 1 (token) values")
    return mask


def check_token_ids(name: str, ids: torch.Tensor, vocab_size: int, ignore_index: int | None = None,
                    blocking: bool = True) -> None:
    """Raise ValueError naming the first id outside [0, vocab_size) (``ignore_index`` allowed).

    ``blocking=False`` (decoded tokens) and under torch.compile: ``torch._assert_async`` instead, which does not
    wait for the device (no host sync per token, no graph break); it raises a RuntimeError without the position.
    """
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if not blocking or torch.compiler.is_compiling():
        torch._assert_async(~bad.any(), f"{name} holds ids outside the vocabulary [0, {vocab_size})")
        return
    if bad.any():
        position = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(position)} = {int(ids[position])} is outside the vocabulary [0, {vocab_size})")


# The parameters from_pretrained(dtype=bf16 / fp16) keeps in fp32: the mixers' fp32 names (mixers.FP32_PARAMETERS)
# and Mamba1's dt bias (dt_proj.bias, which mamba_ssm's kernels read in fp32 like Mamba2's dt_bias). transformers
# searches these regexes in full parameter names, so each is anchored to whole trailing name components: a bare
# "D" would also match any other name with a D in it.
FP32_PARAMETER_PATTERNS = tuple(rf"(?<=\.){re.escape(name)}$" for name in (*FP32_PARAMETERS, "dt_proj.bias"))


class HierMambaPreTrainedModel(PreTrainedModel):
    """Weight init and the flags transformers reads (checkpointing, stateful generation)."""

    config_class = HierMambaConfig
    config: HierMambaConfig
    base_model_prefix = "model"
    _input_embed_layer = "embeddings"  # transformers' get/set_input_embeddings find model.embeddings
    supports_gradient_checkpointing = True
    _no_split_modules = ["HierMambaBlock"]
    _is_stateful = True
    # from_pretrained(dtype=bf16 / fp16) loads the parameters these regexes find in fp32 (FP32_PARAMETER_PATTERNS)
    _keep_in_fp32_modules_strict = list(FP32_PARAMETER_PATTERNS)

    def __init__(self, config: HierMambaConfig, *args, **kwargs):
        config.validate_fields()  # again: a field set after the config was built (e.g. head_dim) fails here, named
        super().__init__(config, *args, **kwargs)

    def post_init(self) -> None:
        """Mamba1's dt bias made fp32 whatever the default dtype it was built under (nn.Linear makes its bias in
        that dtype; transformers expects every fp32-kept parameter to be created fp32, so that a model built under
        a low default dtype, as from_pretrained(dtype=...) builds it, keeps it), transformers' post_init, then only
        the fp32 patterns that find a parameter here (mamba1 has no dt_bias, mamba2 no dt_proj)."""
        for module in self.modules():
            if isinstance(module, Mamba1Mixer) and module.dt_proj.bias.dtype != torch.float32:
                module.dt_proj.bias = nn.Parameter(module.dt_proj.bias.detach().float())  # (d_inner,)
        super().post_init()
        names = [name for name, _ in self.named_parameters()]
        self._keep_in_fp32_modules_strict = {pattern for pattern in self._keep_in_fp32_modules_strict
                                             if any(re.search(pattern, name) for name in names)}

    def _init_weights(self, module: nn.Module) -> None:
        """Linear normal(initializer_range); Embedding normal(config.embedding_init_std: HRM's 1/sqrt(d)
        by default, the forward multiplies by sqrt(d)); an untied lm_head LeCun normal (std 1/sqrt(d), HRM's);
        mixers as mamba_ssm's Mamba/Mamba2 (S4D-real A,
        D = 1, dt bias = inverse softplus of a log-uniform dt, conv/out_proj kaiming-uniform, out_proj rescaled
        by 1/sqrt(layers)). in_proj keeps normal(initializer_range): mamba_ssm's kaiming-uniform (std
        ~1/sqrt(3d)) learned the successor task of tests/test_input_scale.py slower (loss ratio 0.28-0.33
        against 0.19-0.23 over 3 seeds, docs/results.md)."""
        super()._init_weights(module)
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.embedding_init_std)
        elif isinstance(module, (Mamba1Mixer, Mamba2Mixer)):
            self._init_mixer(module)
        elif isinstance(module, HierarchicalReasoner) and module.H_init is not None:  # initial_states="fixed"
            init.copy_(module.H_init, fixed_initial_state(module.H_init.shape[0], H_INIT_SEED))
            init.copy_(module.L_init, fixed_initial_state(module.L_init.shape[0], L_INIT_SEED))
            module.H_init.requires_grad_(False)  # frozen: HRM's initial states never train
            module.L_init.requires_grad_(False)
        elif module is getattr(self, "lm_head", None) and not self.config.tie_word_embeddings:
            init.normal_(module.weight, std=self.config.hidden_size ** -0.5)  # HRM's head: LeCun normal
        elif getattr(module, "zero_init", False):  # output layers that must start silent (memory.py, synthetic_gradients.py)
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    def _init_mixer(self, mixer: nn.Module) -> None:
        """mamba_ssm's init of one Mamba1/Mamba2 mixer (see _init_weights); weights from a checkpoint are kept."""
        config = self.config
        if isinstance(mixer, Mamba2Mixer):
            init.copy_(mixer.A_log, torch.log(torch.arange(1, mixer.heads + 1, dtype=torch.float32)))
            init.copy_(mixer.dt_bias, inverse_softplus_dt(mixer.heads, config))
        else:
            A = torch.arange(1, mixer.state_size + 1, dtype=torch.float32).expand(mixer.d_inner, -1)
            init.copy_(mixer.A_log, torch.log(A))
            dt_std = config.time_step_rank ** -0.5
            init.uniform_(mixer.dt_proj.weight, -dt_std, dt_std)
            init.copy_(mixer.dt_proj.bias, inverse_softplus_dt(mixer.d_inner, config))
        init.ones_(mixer.D)
        init.kaiming_uniform_(mixer.conv1d.weight, a=math.sqrt(5))
        if mixer.conv1d.bias is not None:
            init.zeros_(mixer.conv1d.bias)
        init.kaiming_uniform_(mixer.out_proj.weight, a=math.sqrt(5))
        # GPT-2 scheme: residual writes scaled by 1/sqrt(depth). Only a weight drawn just now: from_pretrained marks
        # loaded ones _is_hf_initialized (the init functions above skip them; this division must too).
        if config.rescale_prenorm_residual and not getattr(mixer.out_proj.weight, "_is_hf_initialized", False):
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(config.residual_layers)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return True  # transformers' caches of linear-attention layers work (cache_access.py); see below for the default


class HierMambaModel(HierMambaPreTrainedModel):
    """Embeddings + the H/L reasoner. Returns z_H, the high-level state, as last_hidden_state."""

    def __init__(self, config: HierMambaConfig):
        super().__init__(config)
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.reasoner = HierarchicalReasoner(config)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: HierMambaCache | None = None,
        use_cache: bool | None = None,
        carry: Carry | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> HierMambaOutput | tuple:
        """
        Args:
            input_ids: (b, l) token ids, or inputs_embeds (b, l, d).
            attention_mask: (b, l) of 0/1: 1 for tokens, 0 for (left) padding. With a cache it may also cover the
                cached tokens (b, seen + l), as generate passes it; its last l columns are used.
            cache: states from a previous call; the new tokens continue that sequence (one token: the O(1) step;
                several: the parallel scans started from the cached states). A HierMambaCache, or a transformers
                StaticCache / DynamicCache built from this config (empty until this call writes it; updated in
                place, see cache_access.py).
            use_cache: return a HierMambaCache (defaults to config.use_cache outside training).
            carry: (z_H, z_L) to start the cycles from (ACT segments); not combinable with a cache.
            output_hidden_states: also return hidden_states (see HierMambaOutput).
            return_dict: False returns a tuple (defaults to config.return_dict).
            kwargs: only position_ids / cache_position / output_attentions, which are ignored.
        Returns:
            HierMambaOutput with last_hidden_state z_H (b, l, d), or its tuple.
        """
        check_forward_kwargs(type(self).__name__, kwargs)
        if output_hidden_states is None:
            output_hidden_states = self.config.output_hidden_states
        return_dict = self.config.return_dict if return_dict is None else return_dict
        # 1. Embed and validate.
        x = self._scale_input(self._embed(input_ids, inputs_embeds))  # (b, l, d), unit RMS by default
        attention_mask = check_attention_mask(attention_mask, x.shape[:2], cache is not None)
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if (use_cache or cache is not None) and self.config.bidirectional:
            raise ValueError("bidirectional=True reads the future: it has no recurrent cache and cannot generate")
        if cache is not None and carry is not None:
            raise ValueError("pass either a cache (generation) or a carry (ACT segments), not both")
        hidden_states = [x] if output_hidden_states else None
        cached = None if cache is None else cached_states(cache, self.config)  # None: nothing absorbed yet
        # 2. One new token of a cached sequence: the O(1) step.
        if cached is not None and x.shape[1] == 1 and attention_mask is None:
            z_H, states = self.reasoner.step(x[:, 0], cached, hidden_states)  # (b, d)
            store_states(cache, states, new_tokens=1)
            carry, z_H, new_cache = None, z_H[:, None], cache
            if hidden_states is not None:
                hidden_states = [h if h.dim() == 3 else h[:, None] for h in hidden_states]
        # 3. Prefill / training / several new tokens of a cached sequence: the parallel scans (from the cached
        #    states when continuing), collecting final states if a cache is wanted.
        else:
            carry, states = self.reasoner(x, carry, attention_mask=attention_mask,
                                          return_states=use_cache or cache is not None,
                                          initial_states=cached,
                                          hidden_states_out=hidden_states)
            z_H = carry.z_H
            if cache is not None:
                store_states(cache, states, new_tokens=x.shape[1])
            new_cache = cache
            if cache is None and use_cache:
                new_cache = HierMambaCache(states, seen_tokens=x.shape[1])
        output = HierMambaOutput(last_hidden_state=z_H, carry=carry, cache=new_cache,
                                 hidden_states=None if hidden_states is None else tuple(hidden_states))
        return output if return_dict else output.to_tuple()

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        """The input embedding (b, l, d) of exactly one of input_ids (b, l) and inputs_embeds, validated."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds must be (batch, length, {self.config.hidden_size}), "
                                 f"got {tuple(inputs_embeds.shape)}")
            if inputs_embeds.shape[1] == 0:
                raise ValueError(f"inputs_embeds is empty (shape {tuple(inputs_embeds.shape)}): "
                                 "give at least one position")
            return inputs_embeds
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        if input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token "
                             "(generate needs a non-empty prompt, e.g. a BOS token)")
        # one token per call is decoding: checked without a host sync
        check_token_ids("input_ids", input_ids, self.config.vocab_size, blocking=input_ids.shape[1] > 1)
        return self.embeddings(input_ids)

    def _scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, l, d) times config.embedding_multiplier (sqrt(d) by default: HRM's unit-scale injection).

        Applied to ``inputs_embeds`` too (as Gemma does), so ``get_input_embeddings()(ids)`` passed as
        inputs_embeds gives the same result as the ids.
        """
        multiplier = self.config.embedding_multiplier
        return x if multiplier == 1.0 else x * multiplier


class HierMambaForCausalLM(HierMambaPreTrainedModel, HierMambaGenerationMixin):
    """HierMambaModel + an LM head over z_H (tied to the embeddings with tie_word_embeddings); next-token loss
    with -100 ignored; generate()."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}
    # A decoding step with a transformers StaticCache has static shapes and writes the states in place:
    # torch.compile(fullgraph=True) of the forward compiles it once (generate's cache_implementation="static").
    _can_compile_fullgraph = True

    def __init__(self, config: HierMambaConfig):
        super().__init__(config)
        if config.bidirectional:
            raise ValueError("bidirectional=True is for non-generative heads; HierMambaForCausalLM needs False")
        if config.position_embeddings:
            raise ValueError(f"position_embeddings={config.position_embeddings} is for the puzzle head "
                             "(HierMambaForTokenClassification); HierMambaForCausalLM needs 0")
        self.model = HierMambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        cache: HierMambaCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> HierMambaCausalLMOutput | tuple:
        """
        Args:
            input_ids, attention_mask, inputs_embeds, cache, use_cache, output_hidden_states, return_dict: as in
                HierMambaModel.forward.
            labels: (b, l) targets, shifted inside (position t predicts labels[t + 1]); -100 is ignored.
            logits_to_keep: if an int > 0, only the last that many positions get logits; a 1-D tensor: those positions.
            kwargs: LOSS_KWARGS for transformers' loss (num_items_in_batch: Trainer's normalisation; shift_labels:
                targets already aligned by sequence-parallel training); position_ids / cache_position /
                output_attentions are ignored; anything else raises TypeError.
        Returns:
            HierMambaCausalLMOutput with logits (b, l or logits_to_keep, vocab) in fp32, or its tuple.
        """
        check_forward_kwargs(type(self).__name__, kwargs, accepted=LOSS_KWARGS)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        # 1. Backbone.
        outputs = self.model(input_ids, attention_mask, inputs_embeds, cache=cache, use_cache=use_cache,
                             output_hidden_states=output_hidden_states, return_dict=True)
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if isinstance(logits_to_keep, int) else logits_to_keep
        # 2. Head.
        logits = self.lm_head(hidden[:, keep].to(self.lm_head.weight.dtype)).float()  # (b, l, vocab)
        # 3. Loss.
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}")
            check_token_ids("labels", labels, self.config.vocab_size, ignore_index=-100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        output = HierMambaCausalLMOutput(loss=loss, logits=logits, cache=outputs.cache, last_hidden_state=hidden,
                                         hidden_states=outputs.hidden_states)
        return output if return_dict else output.to_tuple()

    def compile_decoding(self, enabled: bool = True, **options) -> "HierMambaForCausalLM":
        """Run every one-token cached step (generate's decoding) through ``torch.compile`` (``options`` go to it;
        ``enabled=False`` returns to eager). See HierarchicalReasoner.compile_step. Returns self."""
        self.model.reasoner.compile_step(enabled, **options)
        return self
