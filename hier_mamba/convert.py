"""Warm start: a pretrained Mamba or Mamba2 as a HierMambaForCausalLM.

With ``H_cycles = L_cycles = 1``, zero initial states (``initial_states="zeros"``), no final norm in the L stack
(``L_final_norm=False``) and unscaled embeddings (``scale_embeddings=False``), one forward computes

    z_L = L(0 + 0 + x),  z_H = H(0 + z_L)

which is a plain Mamba whose first ``L_layers`` blocks form L and the others H; H's final norm is the source's
``norm_f``. Raising ``H_cycles`` / ``L_cycles`` afterwards (the weights are shared across cycles) turns it into the
hierarchical model, to be fine-tuned.

Sources: transformers' ``MambaForCausalLM`` / ``Mamba2ForCausalLM`` (model type "mamba" / "mamba2") and mamba_ssm's
``MambaLMHeadModel`` (its ``config.json``: d_model, n_layer, vocab_size, ssm_cfg, ... and ``pytorch_model.bin``).
Parameter names map as (block i < L_layers goes to L as block i, the others to H as block i - L_layers):

    backbone.embeddings.weight (transformers) | backbone.embedding.weight (mamba_ssm)  -> model.embeddings.weight
    backbone.layers.{i}.norm.weight                                  -> model.reasoner.{L|H}.layers.{j}.norm.weight
    backbone.layers.{i}.mixer.{in_proj, conv1d, x_proj, dt_proj, dt_bias, A_log, D, norm, out_proj}.*
                                                                     -> model.reasoner.{L|H}.layers.{j}.mixer.*
    backbone.norm_f.weight                                           -> model.reasoner.H.norm_f.weight
    lm_head.weight                                                   -> lm_head.weight

A source setting this model cannot compute (another activation, LayerNorm, attention or MLP layers, a norm before
the gate, ...) raises ``ValueError`` naming it; settings that only shape the initialisation are carried over where
the config has them (time_step_min/max/floor, initializer_range) and otherwise ignored.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping

import torch
from torch import nn
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PretrainedConfig
from transformers.utils import cached_file

from .configuration import HierMambaConfig
from .modeling import HierMambaForCausalLM

logger = logging.getLogger(__name__)

WARM_START_SETTINGS = dict(H_cycles=1, L_cycles=1, initial_states="zeros", L_final_norm=False, scale_embeddings=False)
"""The HierMambaConfig fields under which the converted model computes exactly the source Mamba."""

# mamba_ssm's MambaConfig fields and the ssm_cfg keys of its Mamba (mamba_simple.py) and Mamba2 (mamba2.py) modules.
MAMBA_SSM_FIELDS = frozenset({"d_model", "d_intermediate", "n_layer", "vocab_size", "ssm_cfg", "attn_layer_idx",
                              "attn_cfg", "rms_norm", "residual_in_fp32", "fused_add_norm", "pad_vocab_size_multiple",
                              "tie_embeddings"})
# keys that only choose a kernel or shape the initialisation: they do not change what the weights compute
MAMBA_SSM_INERT_KEYS = frozenset({"layer", "dt_init", "dt_scale", "use_fast_path", "conv_init", "A_init_range",
                                  "use_mem_eff_path", "process_group", "sequence_parallel", "layer_idx"})
MAMBA1_KEYS = frozenset({"d_state", "d_conv", "expand", "dt_rank", "dt_min", "dt_max", "dt_init_floor", "conv_bias",
                         "bias"})
MAMBA2_KEYS = frozenset({"d_state", "d_conv", "expand", "headdim", "d_ssm", "ngroups", "D_has_hdim", "rmsnorm",
                         "norm_before_gate", "dt_min", "dt_max", "dt_init_floor", "dt_limit", "bias", "conv_bias",
                         "chunk_size"})
MAMBA_SSM_NORM_EPS = 1e-5  # MambaLMHeadModel passes no norm_epsilon (MixerModel's default); Mamba2's gated norm: 1e-5


# configs -------------------------------------------------------------------------------------------------------
def _unsupported(source: str, name: str, value, supported) -> ValueError:
    return ValueError(f"{source} setting {name}={value!r} cannot be represented by HierMambaConfig "
                      f"(supported: {supported})")


def hier_kwargs_from_transformers(config: PretrainedConfig) -> dict:
    """HierMambaConfig keyword arguments equal to a transformers MambaConfig / Mamba2Config (no L/H split yet)."""
    model_type = getattr(config, "model_type", None)
    if model_type not in ("mamba", "mamba2"):
        raise ValueError(f"expected a transformers Mamba or Mamba2 config (model_type 'mamba' / 'mamba2') or a "
                         f"mamba_ssm one (d_model, n_layer, ...), got model_type={model_type!r}")
    if config.hidden_act != "silu":
        raise _unsupported(model_type, "hidden_act", config.hidden_act, "'silu'")
    if getattr(config, "rms_norm", True) is not True:  # older Mamba2Config field
        raise _unsupported(model_type, "rms_norm", config.rms_norm, "True")
    _check_whole_expand(model_type, config.expand, config.hidden_size)
    kwargs = dict(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, state_size=config.state_size,
        expand=int(config.expand), conv_kernel=config.conv_kernel, use_bias=config.use_bias,
        use_conv_bias=config.use_conv_bias, rms_norm_eps=config.layer_norm_epsilon,
        residual_in_fp32=config.residual_in_fp32, tie_word_embeddings=config.tie_word_embeddings,
        time_step_min=config.time_step_min, time_step_max=config.time_step_max,
        time_step_floor=config.time_step_floor, initializer_range=config.initializer_range,
        rescale_prenorm_residual=config.rescale_prenorm_residual, use_cache=config.use_cache,
        pad_token_id=config.pad_token_id, bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
    )
    if model_type == "mamba":
        rank = config.time_step_rank
        kwargs.update(mixer="mamba1", time_step_rank=math.ceil(config.hidden_size / 16) if rank == "auto" else rank)
        return kwargs
    d_inner = int(config.expand * config.hidden_size)
    if config.num_heads * config.head_dim != d_inner:
        raise _unsupported(model_type, "num_heads", config.num_heads,
                           f"num_heads * head_dim = expand * hidden_size = {d_inner}")
    kwargs.update(mixer="mamba2", head_dim=config.head_dim, n_groups=config.n_groups, chunk_size=config.chunk_size,
                  time_step_limit=tuple(config.time_step_limit))
    return kwargs


def hier_kwargs_from_mamba_ssm(config: Mapping) -> dict:
    """HierMambaConfig keyword arguments equal to a mamba_ssm MambaConfig (a dict, as in its config.json)."""
    generic = set(vars(PretrainedConfig())) | set(PretrainedConfig().to_dict())  # older MambaConfigs subclass it
    unknown = sorted(name for name in set(config) - MAMBA_SSM_FIELDS - generic if not name.startswith("_"))
    if unknown:
        raise ValueError(f"mamba_ssm config has fields this converter does not know: {unknown} "
                         f"(known: {sorted(MAMBA_SSM_FIELDS)})")
    for name, required in (("d_intermediate", 0), ("attn_layer_idx", []), ("rms_norm", True)):
        value = config.get(name, required)
        if (list(value) if isinstance(value, (list, tuple)) else value) != required:
            raise _unsupported("mamba_ssm", name, value, repr(required) + " (Mamba blocks only, RMSNorm)")
    ssm_cfg = dict(config.get("ssm_cfg") or {})
    layer = ssm_cfg.get("layer", "Mamba1")
    if layer not in ("Mamba1", "Mamba2"):
        raise _unsupported("mamba_ssm", "ssm_cfg.layer", layer, "'Mamba1' or 'Mamba2'")
    known = MAMBA1_KEYS if layer == "Mamba1" else MAMBA2_KEYS
    unknown = sorted(set(ssm_cfg) - known - MAMBA_SSM_INERT_KEYS)
    if unknown:
        raise ValueError(f"mamba_ssm ssm_cfg has keys this converter does not know for layer={layer!r}: {unknown}")
    d_model = config["d_model"]
    expand = ssm_cfg.get("expand", 2)
    _check_whole_expand("mamba_ssm", expand, d_model)
    multiple = config.get("pad_vocab_size_multiple", 8)
    kwargs = dict(
        vocab_size=math.ceil(config["vocab_size"] / multiple) * multiple,  # MambaLMHeadModel pads the vocabulary
        hidden_size=d_model, expand=int(expand), conv_kernel=ssm_cfg.get("d_conv", 4),
        use_bias=ssm_cfg.get("bias", False), use_conv_bias=ssm_cfg.get("conv_bias", True),
        rms_norm_eps=MAMBA_SSM_NORM_EPS, residual_in_fp32=config.get("residual_in_fp32", True),
        tie_word_embeddings=config.get("tie_embeddings", True),
        time_step_min=ssm_cfg.get("dt_min", 0.001), time_step_max=ssm_cfg.get("dt_max", 0.1),
        time_step_floor=ssm_cfg.get("dt_init_floor", 1e-4),
    )
    if layer == "Mamba1":
        rank = ssm_cfg.get("dt_rank", "auto")
        kwargs.update(mixer="mamba1", state_size=ssm_cfg.get("d_state", 16),
                      time_step_rank=math.ceil(d_model / 16) if rank == "auto" else rank)
        return kwargs
    d_inner = int(expand * d_model)
    for name, required in (("d_ssm", None), ("D_has_hdim", False), ("rmsnorm", True), ("norm_before_gate", False)):
        value = ssm_cfg.get(name, required)
        if value != required and not (name == "d_ssm" and value == d_inner):
            raise _unsupported("mamba_ssm", f"ssm_cfg.{name}", value, repr(required))
    kwargs.update(mixer="mamba2", state_size=ssm_cfg.get("d_state", 128), head_dim=ssm_cfg.get("headdim", 64),
                  n_groups=ssm_cfg.get("ngroups", 1), chunk_size=ssm_cfg.get("chunk_size", 256),
                  time_step_limit=tuple(ssm_cfg.get("dt_limit", (0.0, float("inf")))))
    return kwargs


def _check_whole_expand(source: str, expand, hidden_size: int) -> None:
    if not float(expand).is_integer():
        raise _unsupported(source, "expand", expand, f"a whole number (d_inner = expand * {hidden_size})")


def hier_config_for(source_config: PretrainedConfig | Mapping, L_layers: int, **overrides) -> HierMambaConfig:
    """The HierMambaConfig of a source config split after block ``L_layers``, with WARM_START_SETTINGS.

    Args:
        source_config: a transformers MambaConfig / Mamba2Config (or its dict), or a mamba_ssm config (its
            dataclass or dict).
        L_layers: blocks 0 .. L_layers - 1 form L, the others H; 1 <= L_layers < the source's block count.
        overrides: further HierMambaConfig fields (e.g. H_cycles=2, chunk_size=64, bptt_steps=None); those of
            WARM_START_SETTINGS other than the cycles, and the sizes, change what the weights compute.
    """
    fields = source_config if isinstance(source_config, Mapping) else vars(source_config)
    if "d_model" in fields:  # mamba_ssm's MambaConfig: a dataclass (older versions: a PretrainedConfig) or its dict
        kwargs, num_layers = hier_kwargs_from_mamba_ssm(fields), fields["n_layer"]
    else:
        if isinstance(source_config, Mapping) and "model_type" in source_config:  # a transformers config.json's dict
            source_config = AutoConfig.for_model(**source_config)
        kwargs, num_layers = hier_kwargs_from_transformers(source_config), source_config.num_hidden_layers
    if not isinstance(L_layers, int) or isinstance(L_layers, bool) or not 1 <= L_layers < num_layers:
        raise ValueError(f"L_layers={L_layers!r} must be an int in [1, {num_layers - 1}]: the source has n_layer="
                         f"{num_layers} blocks, L takes the first L_layers and H (at least one block) the rest")
    kwargs.update(WARM_START_SETTINGS, L_layers=L_layers, H_layers=num_layers - L_layers)
    kwargs.update(overrides)
    try:
        return HierMambaConfig(**kwargs)
    except ValueError as error:
        raise ValueError(f"the source's settings give an invalid HierMambaConfig: {error} "
                         "(source -> HierMambaConfig names: hier_mamba/convert.py)") from error


# weights -------------------------------------------------------------------------------------------------------
def convert_state_dict(state_dict: Mapping[str, torch.Tensor], L_layers: int, num_layers: int,
                       tie_word_embeddings: bool) -> dict[str, torch.Tensor]:
    """Rename a transformers or mamba_ssm Mamba LM state dict to HierMambaForCausalLM's (see the module docstring).

    Raises ValueError naming any source key that has no place in the converted model, or a missing one.
    """
    converted, leftover = {}, []
    for key, tensor in state_dict.items():
        parts = key.split(".")
        in_block = len(parts) > 4 and parts[:2] == ["backbone", "layers"] and parts[2].isdigit() \
            and parts[3] in ("norm", "mixer")
        if key in ("backbone.embeddings.weight", "backbone.embedding.weight"):
            converted["model.embeddings.weight"] = tensor
        elif key == "backbone.norm_f.weight":
            converted["model.reasoner.H.norm_f.weight"] = tensor
        elif key == "lm_head.weight":
            converted["lm_head.weight"] = tensor
        elif in_block:
            index = int(parts[2])
            stack, local = ("L", index) if index < L_layers else ("H", index - L_layers)
            converted[".".join(["model.reasoner", stack, "layers", str(local)] + parts[3:])] = tensor
        else:
            leftover.append(key)
    if leftover:
        raise ValueError(f"source weights with no place in HierMambaForCausalLM: {leftover[:8]}")
    if "model.embeddings.weight" not in converted:
        raise ValueError("source weights lack backbone.embeddings.weight / backbone.embedding.weight")
    if tie_word_embeddings:
        converted["lm_head.weight"] = converted["model.embeddings.weight"]
    elif "lm_head.weight" not in converted:
        raise ValueError("source weights lack lm_head.weight and tie_word_embeddings is False (a bare MambaModel?)")
    blocks = {int(k.split(".")[2]) for k in state_dict if k.startswith("backbone.layers.")}
    if blocks != set(range(num_layers)):
        raise ValueError(f"source weights hold blocks {sorted(blocks)}, the config says n_layer={num_layers}")
    return converted


def convert_mamba(source: nn.Module | Mapping[str, torch.Tensor], L_layers: int,
                  source_config: PretrainedConfig | Mapping | None = None, **overrides) -> HierMambaForCausalLM:
    """An in-memory source Mamba as a HierMambaForCausalLM (fp32, eval mode) computing the same logits.

    Args:
        source: a transformers MambaForCausalLM / Mamba2ForCausalLM, a mamba_ssm MambaLMHeadModel, or the state dict
            of either (then ``source_config`` is required).
        L_layers, overrides: as in :func:`hier_config_for`.
        source_config: the source's config (transformers config object, or mamba_ssm's dataclass or dict); taken
            from ``source.config`` when omitted.
    """
    if source_config is None:
        if not isinstance(source, nn.Module):
            raise ValueError("a state dict source needs source_config (the transformers or mamba_ssm config)")
        source_config = source.config
    state_dict = source.state_dict() if isinstance(source, nn.Module) else source
    # 1. The config: the source's sizes and settings, the warm-start switches, the split.
    config = hier_config_for(source_config, L_layers, **overrides)
    # 2. The weights, renamed, loaded strictly (every parameter of ours comes from the source).
    weights = convert_state_dict(state_dict, L_layers, config.L_layers + config.H_layers, config.tie_word_embeddings)
    model = HierMambaForCausalLM(config)
    model.load_state_dict({k: v.float() for k, v in weights.items()}, strict=True)
    return model.eval()


# checkpoints ---------------------------------------------------------------------------------------------------
def load_mamba_checkpoint(src: str | os.PathLike) -> tuple[Mapping[str, torch.Tensor], PretrainedConfig | dict]:
    """The state dict and config of a checkpoint in either layout: a local directory, or a hub model name (its files
    are downloaded by transformers' ``cached_file``, which needs the network)."""
    config_path = cached_file(str(src), "config.json")
    with open(config_path) as handle:
        raw = json.load(handle)
    if "model_type" in raw:  # transformers: its own loader (safetensors or bin, sharded or not, tied weights)
        model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
        return model.state_dict(), model.config
    if "d_model" not in raw or "n_layer" not in raw:
        raise ValueError(f"{config_path} is neither a transformers config (model_type) nor mamba_ssm's "
                         f"(d_model, n_layer): keys {sorted(raw)}")
    for name, load in (("model.safetensors", load_file), ("pytorch_model.bin", _load_bin)):
        path = cached_file(str(src), name, _raise_exceptions_for_missing_entries=False)
        if path is not None:
            return load(path), raw
    raise FileNotFoundError(f"{src} holds a mamba_ssm config.json but neither pytorch_model.bin nor model.safetensors")


def convert_mamba_checkpoint(src: str | os.PathLike, dst: str | os.PathLike, L_layers: int,
                             **overrides) -> HierMambaForCausalLM:
    """Read a Mamba / Mamba2 checkpoint (transformers or mamba_ssm layout), write HierMambaForCausalLM to ``dst``.

    Args:
        src: a local checkpoint directory, or a hub model name (downloaded: needs the network).
        dst: output directory (save_pretrained, fp32 safetensors); the source's tokenizer is saved along if it has one.
        L_layers, overrides: as in :func:`hier_config_for`.
    Returns:
        the converted model (eval mode).
    """
    state_dict, source_config = load_mamba_checkpoint(src)
    model = convert_mamba(state_dict, L_layers, source_config, **overrides)
    model.save_pretrained(dst)
    if any(cached_file(str(src), name, _raise_exceptions_for_missing_entries=False) is not None
           for name in ("tokenizer.json", "tokenizer_config.json")):
        AutoTokenizer.from_pretrained(src).save_pretrained(dst)
    else:  # mamba_ssm checkpoints name none (state-spaces models use EleutherAI/gpt-neox-20b's)
        logger.info("%s has no tokenizer files; %s is saved without one", src, dst)
    logger.info("converted %s -> %s: L_layers=%d, H_layers=%d, mixer=%s", src, dst, model.config.L_layers,
                model.config.H_layers, model.config.mixer)
    return model


def _load_bin(path: str) -> dict[str, torch.Tensor]:
    return torch.load(path, map_location="cpu", weights_only=True)
