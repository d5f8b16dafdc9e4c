"""Hugging Face glue: HierMambaPreTrainedModel, HierMambaModel, HierMambaForCausalLM.

No math lives here: the cycle loop is in reasoning.py, the mixers in mixers.py. This file turns
token ids into embeddings, routes prefill / step / continued prefill, owns the cache object, and
computes logits and the loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from .cache import HierMambaCache
from .configuration import HierMambaConfig
from .mixers import Mamba1Mixer, Mamba2Mixer, inverse_softplus_dt
from .reasoning import H_INIT_SEED, L_INIT_SEED, Carry, HierarchicalReasoner, fixed_initial_state


@dataclass
class HierMambaOutput(ModelOutput):
    """last_hidden_state: z_H (b, l, d); carry: final (z_H, z_L); cache: states to continue with."""

    last_hidden_state: torch.Tensor | None = None
    carry: Carry | None = None
    cache: HierMambaCache | None = None


@dataclass
class HierMambaCausalLMOutput(ModelOutput):
    """loss: mean next-token cross-entropy; logits: (b, l, vocab); cache as in HierMambaOutput."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: HierMambaCache | None = None
    last_hidden_state: torch.Tensor | None = None


def check_token_ids(name: str, ids: torch.Tensor, vocab_size: int, ignore_index: int | None = None) -> None:
    """Raise ValueError naming the first id outside [0, vocab_size) (``ignore_index`` allowed)."""
    if ids.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"{name} must be an integer tensor, got dtype {ids.dtype}")
    bad = (ids < 0) | (ids >= vocab_size)
    if ignore_index is not None:
        bad &= ids != ignore_index
    if bad.any():
        position = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name}{list(position)} = {int(ids[position])} is outside the vocabulary [0, {vocab_size})")


class HierMambaPreTrainedModel(PreTrainedModel):
    """Weight init and the flags transformers reads (checkpointing, stateful generation)."""

    config_class = HierMambaConfig
    config: HierMambaConfig
    base_model_prefix = "model"
    _input_embed_layer = "embeddings"  # transformers' get/set_input_embeddings find model.embeddings
    supports_gradient_checkpointing = True
    _no_split_modules = ["Block"]
    _is_stateful = True
    # from_pretrained(dtype=bf16 / fp16) loads these in fp32 (regexes over parameter names; mixers.FP32_PARAMETERS)
    _keep_in_fp32_modules_strict = [r"\.(A_log|D|dt_bias)$"]

    def _init_weights(self, module: nn.Module) -> None:
        """Linear normal(initializer_range); Embedding normal(config.embedding_init_std: HRM's 1/sqrt(d)
        by default, the forward multiplies by sqrt(d)); mixers as mamba_ssm's Mamba/Mamba2 (S4D-real A,
        D = 1, dt bias = inverse softplus of a log-uniform dt, conv/out_proj kaiming-uniform, out_proj rescaled
        by 1/sqrt(layers)). in_proj keeps normal(initializer_range): mamba_ssm's kaiming-uniform (std
        ~1/sqrt(3d)) learned the successor task of tests/test_input_scale.py slower (loss ratio 0.28-0.33
        against 0.19-0.23 over 3 seeds, docs/results.md)."""
        super()._init_weights(module)
        if isinstance(module, nn.Embedding):
            init.normal_(module.weight, std=self.config.embedding_init_std)
        elif isinstance(module, (Mamba1Mixer, Mamba2Mixer)):
            self._init_mixer(module)
        elif isinstance(module, HierarchicalReasoner):
            init.copy_(module.H_init, fixed_initial_state(module.H_init.shape[0], H_INIT_SEED))
            init.copy_(module.L_init, fixed_initial_state(module.L_init.shape[0], L_INIT_SEED))
            module.H_init.requires_grad_(False)  # frozen: HRM's initial states never train
            module.L_init.requires_grad_(False)
        elif getattr(module, "zero_init", False):  # output layers that must start silent (memory.py, synthetic_gradients.py)
            init.zeros_(module.weight)
            if module.bias is not None:
                init.zeros_(module.bias)

    def _init_mixer(self, mixer: nn.Module) -> None:
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
        if config.rescale_prenorm_residual:  # GPT-2 scheme: residual writes scaled by 1/sqrt(depth)
            with torch.no_grad():
                mixer.out_proj.weight /= math.sqrt(config.residual_layers)

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own HierMambaCache at prefill


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
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: HierMambaCache | None = None,
        use_cache: bool | None = None,
        carry: Carry | None = None,
        **kwargs,
    ) -> HierMambaOutput:
        """
        Args:
            input_ids: (b, l) token ids, or inputs_embeds (b, l, d).
            attention_mask: (b, l) 1 for tokens, 0 for (left) padding; ignored in single-token steps.
            cache: states from a previous call; the new tokens continue that sequence.
            use_cache: return a HierMambaCache (defaults to config.use_cache outside training).
            carry: (z_H, z_L) to start the cycles from (ACT segments); not combinable with a cache.
        Returns:
            HierMambaOutput with last_hidden_state z_H (b, l, d).
        """
        # 1. Embed and validate.
        x = self._scale_input(self._embed(input_ids, inputs_embeds))  # (b, l, d), unit RMS by default
        if attention_mask is not None and attention_mask.shape != x.shape[:2]:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, expected {tuple(x.shape[:2])}")
        use_cache = use_cache if use_cache is not None else (self.config.use_cache and not self.training)
        if (use_cache or cache is not None) and self.config.bidirectional:
            raise ValueError("bidirectional=True reads the future: it has no recurrent cache and cannot generate")
        if cache is not None and carry is not None:
            raise ValueError("pass either a cache (generation) or a carry (ACT segments), not both")
        # 2. Continue a cached sequence token by token (O(1) state per token).
        if cache is not None:
            outputs = []
            for token in x.unbind(1):
                z_H, states = self.reasoner.step(token, cache.states)
                cache.update(states, new_tokens=1)
                outputs.append(z_H)
            return HierMambaOutput(last_hidden_state=torch.stack(outputs, dim=1), cache=cache)
        # 3. Prefill / training: the parallel scan, collecting final states if a cache is wanted.
        carry, states = self.reasoner(x, carry, attention_mask=attention_mask, return_states=use_cache)
        new_cache = HierMambaCache(states, seen_tokens=x.shape[1]) if use_cache else None
        return HierMambaOutput(last_hidden_state=carry.z_H, carry=carry, cache=new_cache)

    def _embed(self, input_ids, inputs_embeds) -> torch.Tensor:
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids and inputs_embeds")
        if inputs_embeds is not None:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.config.hidden_size:
                raise ValueError(f"inputs_embeds must be (batch, length, {self.config.hidden_size}), "
                                 f"got {tuple(inputs_embeds.shape)}")
            return inputs_embeds
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
        check_token_ids("input_ids", input_ids, self.config.vocab_size)
        return self.embeddings(input_ids)

    def _scale_input(self, x: torch.Tensor) -> torch.Tensor:
        """x (b, l, d) times config.embedding_multiplier (sqrt(d) by default: HRM's unit-scale injection).

        Applied to ``inputs_embeds`` too (as Gemma does), so ``get_input_embeddings()(ids)`` passed as
        inputs_embeds gives the same result as the ids.
        """
        multiplier = self.config.embedding_multiplier
        return x if multiplier == 1.0 else x * multiplier


class HierMambaForCausalLM(HierMambaPreTrainedModel, GenerationMixin):
    """HierMambaModel + a (tied) LM head over z_H; next-token loss with -100 ignored; generate()."""

    _tied_weights_keys = {"lm_head.weight": "model.embeddings.weight"}

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
        inputs_embeds: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        cache: HierMambaCache | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> HierMambaCausalLMOutput:
        """
        Args:
            input_ids, inputs_embeds, attention_mask, cache, use_cache: as in HierMambaModel.forward.
            labels: (b, l) targets, shifted inside (position t predicts labels[t + 1]); -100 is ignored.
            logits_to_keep: if > 0, only the last that many positions get logits.
        Returns:
            HierMambaCausalLMOutput with logits (b, l or logits_to_keep, vocab) in fp32.
        """
        # 1. Backbone.
        outputs = self.model(input_ids, inputs_embeds, attention_mask, cache=cache, use_cache=use_cache)
        hidden = outputs.last_hidden_state
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        # 2. Head.
        logits = self.lm_head(hidden.to(self.lm_head.weight.dtype)).float()  # (b, l, vocab)
        # 3. Loss.
        loss = None
        if labels is not None:
            if labels.shape != logits.shape[:2]:
                raise ValueError(f"labels has shape {tuple(labels.shape)}, expected {tuple(logits.shape[:2])}")
            check_token_ids("labels", labels, self.config.vocab_size, ignore_index=-100)
            loss = self.loss_function(logits=logits, labels=labels, vocab_size=self.config.vocab_size, **kwargs)
        return HierMambaCausalLMOutput(loss=loss, logits=logits, cache=outputs.cache, last_hidden_state=hidden)

    def prepare_inputs_for_generation(
        self,
        input_ids: torch.LongTensor,
        cache: HierMambaCache | None = None,
        attention_mask: torch.Tensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        is_first_iteration: bool | None = False,
        **kwargs,
    ) -> dict:
        """Prefill the whole prompt once; afterwards feed only the tokens the cache has not seen."""
        if cache is not None:
            unseen = input_ids.shape[1] - cache.get_seq_length()
            return {"input_ids": input_ids[:, -max(unseen, 1):], "cache": cache, "use_cache": True}
        if inputs_embeds is not None and is_first_iteration:
            return {"inputs_embeds": inputs_embeds, "attention_mask": attention_mask, "use_cache": use_cache}
        return {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": use_cache}
