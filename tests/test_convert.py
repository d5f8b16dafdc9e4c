"""convert.py: a pretrained Mamba / Mamba2 (transformers or mamba_ssm layout) as a HierMambaForCausalLM.

The converted model with one H/L cycle must be the source model: same logits (fp32, 1e-5), same greedy generation.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import (AutoTokenizer, Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM,
                          PreTrainedTokenizerFast, Trainer, TrainingArguments)

from hier_mamba import HierMambaConfig, HierMambaForCausalLM
from hier_mamba.convert import convert_mamba, convert_mamba_checkpoint, hier_config_for

VOCAB = 48


def source_model(kind: str, seed: int = 0, eps: float = 1e-6, dt_limit=(0.0, 0.5)):
    """A tiny random transformers Mamba ("mamba": tied, biases on, conv width 3, norm eps ``eps``) or Mamba2
    ("mamba2": untied, 2 groups, ``dt_limit``) with every weight perturbed, so that a wrong wiring cannot hide."""
    torch.manual_seed(seed)
    if kind == "mamba":
        config = MambaConfig(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
                             conv_kernel=3, use_bias=True, layer_norm_epsilon=eps, eos_token_id=None)
        model = MambaForCausalLM(config)
    else:
        config = Mamba2Config(vocab_size=VOCAB, hidden_size=32, state_size=8, num_hidden_layers=3, expand=2,
                              head_dim=16, num_heads=4, n_groups=2, chunk_size=8, time_step_limit=dt_limit,
                              eos_token_id=None)
        model = Mamba2ForCausalLM(config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            noise = torch.randn(parameter.shape, generator=generator) * 0.3
            kept = name.endswith(("A_log", "dt_bias", "dt_proj.bias", "norm.weight", "norm_f.weight"))
            parameter.copy_(parameter + noise if kept else noise)
    return model.eval()


def ids(batch=2, length=19, seed=1):
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("kind", ["mamba", "mamba2"])
def test_converted_checkpoint_gives_the_same_logits_and_generation(kind, tmp_path):
    source = source_model(kind, dt_limit=(0.0, float("inf")))  # a dt limit: see the next test
    source.save_pretrained(tmp_path / "source")
    convert_mamba_checkpoint(tmp_path / "source", tmp_path / "hier", L_layers=1)
    model = HierMambaForCausalLM.from_pretrained(tmp_path / "hier").eval()
    assert (model.config.L_layers, model.config.H_layers) == (1, 2)
    assert model.config.mixer == {"mamba": "mamba1", "mamba2": "mamba2"}[kind]
    assert model.config.tie_word_embeddings == (kind == "mamba")
    assert "model.reasoner.L_init" not in model.state_dict() and model.model.reasoner.L.norm_f is None
    tokens = ids()
    with torch.no_grad():
        expected, actual = source(tokens).logits, model(tokens).logits
    assert (actual - expected).abs().max().item() <= 1e-5
    prompt = tokens[:, :6]
    generated = model.generate(prompt, max_new_tokens=8, do_sample=False)
    reference = source.generate(prompt, max_new_tokens=8, do_sample=False)
    assert generated.shape == (2, 14) and torch.equal(generated, reference)


def test_mamba2_dt_limit_holds_when_decoding():
    """transformers' Mamba2 (and mamba_ssm's Mamba2.step) skip time_step_limit in the one-token step, so their
    greedy decoding departs from their own forward; the converted model applies it in both: its decoding is the
    source forward's greedy continuation."""
    source = source_model("mamba2")
    model = convert_mamba(source, L_layers=1)
    generated = model.generate(ids(batch=4)[:, :6], max_new_tokens=10, do_sample=False)  # (4, 16)
    with torch.no_grad():
        greedy = source(generated).logits[:, 5:-1].argmax(-1)  # the source's choice after each prefix
    assert torch.equal(generated[:, 6:], greedy)


@pytest.mark.parametrize("L_layers", [1, 2])
def test_split_point_does_not_change_the_function(L_layers):
    source = source_model("mamba2", seed=3)
    model = convert_mamba(source, L_layers=L_layers)
    assert len(model.model.reasoner.L.layers) == L_layers and len(model.model.reasoner.H.layers) == 3 - L_layers
    tokens = ids(seed=4)
    with torch.no_grad():
        assert (model(tokens).logits - source(tokens).logits).abs().max().item() <= 1e-5


def mamba_ssm_checkpoint(source, layer: str, directory) -> None:
    """Write ``source`` (a transformers Mamba/Mamba2) in mamba_ssm's MambaLMHeadModel layout: config.json with its
    field names (vocabulary given unpadded), pytorch_model.bin with ``backbone.embedding`` (mamba_ssm cannot be
    imported without its CUDA extension, so its save_pretrained cannot run here)."""
    c = source.config
    ssm_cfg = {"layer": layer, "d_state": c.state_size, "d_conv": c.conv_kernel, "expand": c.expand,
               "bias": c.use_bias, "conv_bias": c.use_conv_bias, "dt_min": c.time_step_min, "dt_max": c.time_step_max}
    if layer == "Mamba2":
        ssm_cfg.update(headdim=c.head_dim, ngroups=c.n_groups, chunk_size=c.chunk_size,
                       dt_limit=list(c.time_step_limit), rmsnorm=True, norm_before_gate=False)
    config = {"d_model": c.hidden_size, "d_intermediate": 0, "n_layer": c.num_hidden_layers, "vocab_size": VOCAB - 5,
              "ssm_cfg": ssm_cfg, "attn_layer_idx": [], "attn_cfg": {}, "rms_norm": True, "residual_in_fp32": True,
              "fused_add_norm": True, "pad_vocab_size_multiple": 16, "tie_embeddings": c.tie_word_embeddings}
    directory.mkdir()
    (directory / "config.json").write_text(json.dumps(config))
    weights = {k.replace("backbone.embeddings.", "backbone.embedding."): v for k, v in source.state_dict().items()}
    torch.save(weights, directory / "pytorch_model.bin")


@pytest.mark.parametrize("kind,layer", [("mamba", "Mamba1"), ("mamba2", "Mamba2")])
def test_mamba_ssm_layout_converts_to_the_same_logits(kind, layer, tmp_path):
    source = source_model(kind, seed=5, eps=1e-5)  # mamba_ssm's norms all use eps 1e-5
    assert source.config.layer_norm_epsilon == 1e-5
    mamba_ssm_checkpoint(source, layer, tmp_path / "ssm")
    convert_mamba_checkpoint(tmp_path / "ssm", tmp_path / "hier", L_layers=2)
    model = HierMambaForCausalLM.from_pretrained(tmp_path / "hier").eval()
    assert model.config.vocab_size == VOCAB and model.config.rms_norm_eps == 1e-5  # 43 padded to a multiple of 16
    tokens = ids(seed=6)
    with torch.no_grad():
        assert (model(tokens).logits - source(tokens).logits).abs().max().item() <= 1e-5


MAMBA_SSM_CONFIG = {"d_model": 32, "n_layer": 3, "vocab_size": 40, "ssm_cfg": {"layer": "Mamba2", "headdim": 16}}


@pytest.mark.parametrize("change,named", [
    ({"attn_layer_idx": [1]}, "attn_layer_idx"),
    ({"d_intermediate": 64}, "d_intermediate"),
    ({"rms_norm": False}, "rms_norm"),
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 16, "norm_before_gate": True}}, "ssm_cfg.norm_before_gate"),
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 16, "D_has_hdim": True}}, "ssm_cfg.D_has_hdim"),
    ({"ssm_cfg": {"layer": "Mamba2", "headdim": 16, "d_ssm": 32}}, "ssm_cfg.d_ssm"),
    ({"ssm_cfg": {"layer": "Mamba3"}}, "ssm_cfg.layer"),
    ({"ssm_cfg": {"layer": "Mamba1", "d_conv": 6}}, "conv_kernel"),
    ({"ssm_cfg": {"layer": "Mamba1", "new_knob": 1}}, "new_knob"),
    ({"norm_epsilon": 1e-6}, "norm_epsilon"),
])
def test_unsupported_mamba_ssm_settings_raise_naming_them(change, named):
    with pytest.raises(ValueError, match=named):
        hier_config_for({**MAMBA_SSM_CONFIG, **change}, L_layers=1)


def test_config_forms_all_map_alike():
    source = source_model("mamba2")
    as_object = hier_config_for(source.config, L_layers=1).to_dict()
    assert hier_config_for(source.config.to_dict(), L_layers=1).to_dict() == as_object
    ssm = hier_config_for(MAMBA_SSM_CONFIG, L_layers=2).to_dict()  # keys PretrainedConfig writes are not settings
    generic = {"architectures": ["MambaLMHeadModel"], "transformers_version": "4.40.0", "_name_or_path": "x"}
    assert hier_config_for({**MAMBA_SSM_CONFIG, **generic}, L_layers=2).to_dict() == ssm
    with pytest.raises(ValueError, match="model_type=.llama."):
        hier_config_for({"model_type": "llama"}, L_layers=1)


def test_unsupported_transformers_settings_and_bad_splits_raise_naming_them():
    with pytest.raises(ValueError, match="hidden_act='gelu'"):
        hier_config_for(MambaConfig(hidden_size=32, num_hidden_layers=3, hidden_act="gelu"), L_layers=1)
    inconsistent = Mamba2Config(hidden_size=32, num_hidden_layers=3, num_heads=4, head_dim=16)
    inconsistent.num_heads = 3  # transformers validates at construction only
    with pytest.raises(ValueError, match="num_heads=3"):
        hier_config_for(inconsistent, L_layers=1)
    for bad in (3, 4, 0, 1.5):
        with pytest.raises(ValueError, match=rf"L_layers={bad}.*n_layer=3"):
            hier_config_for(MambaConfig(hidden_size=32, num_hidden_layers=3), L_layers=bad)
    with pytest.raises(ValueError, match="source_config"):
        convert_mamba(source_model("mamba").state_dict(), L_layers=1)


def test_switch_defaults_keep_old_configs_and_validate():
    old = HierMambaConfig.from_dict({"hidden_size": 32, "head_dim": 16, "state_size": 8})  # a config.json before
    assert (old.initial_states, old.L_final_norm, old.residual_in_fp32) == ("fixed", True, False)
    for bad, named in (({"initial_states": "learned"}, "initial_states"), ({"L_final_norm": 0}, "L_final_norm"),
                       ({"residual_in_fp32": "yes"}, "residual_in_fp32"),
                       ({"L_final_norm": False, "architecture": "looped"}, "L_final_norm")):
        with pytest.raises(ValueError, match=named):
            HierMambaConfig(hidden_size=32, head_dim=16, **bad)


def test_bf16_converted_model_follows_the_fp32_one():
    source = source_model("mamba2", seed=7)
    model = convert_mamba(source, L_layers=1)
    tokens = ids(seed=8)
    with torch.no_grad():
        reference = model(tokens).logits
        half = model.to(torch.bfloat16)
        logits = half(tokens).logits
        layer = half.model.reasoner.L.layers[0]
        streamed, _ = layer(torch.randn(1, 5, 32, dtype=torch.bfloat16))
    assert streamed.dtype == torch.float32  # residual_in_fp32 from the source: the stream stays fp32
    assert (logits - reference).abs().max() < 0.05 * reference.abs().max()


def test_raised_cycles_fine_tune_with_trainer(tmp_path):
    source_model("mamba", seed=9).save_pretrained(tmp_path / "source")
    convert_mamba_checkpoint(tmp_path / "source", tmp_path / "hier", L_layers=1)
    model = HierMambaForCausalLM.from_pretrained(tmp_path / "hier", H_cycles=2, L_cycles=2)
    assert model.config.num_invocations == 6
    pattern = torch.arange(8).repeat(5)[None, :32]  # a tiny repetitive corpus: 0 1 ... 7 0 1 ...
    rows = [{"input_ids": pattern[0].roll(-shift), "labels": pattern[0].roll(-shift)} for shift in range(16)]

    def loss():
        model.eval()
        with torch.no_grad():
            batch = torch.stack([row["input_ids"] for row in rows])
            return model(batch, labels=batch).loss.item()

    before = loss()
    args = TrainingArguments(output_dir=str(tmp_path / "run"), max_steps=15, per_device_train_batch_size=8,
                             learning_rate=3e-3, report_to=[], save_strategy="no", logging_steps=5,
                             use_cpu=True, disable_tqdm=True)
    Trainer(model=model, args=args, train_dataset=rows).train()
    after = loss()
    assert after < 0.5 * before, (before, after)


def test_command_line_converts_with_settings(tmp_path):
    source = source_model("mamba2", seed=11)
    source.save_pretrained(tmp_path / "source")
    script = Path(__file__).resolve().parents[1] / "scripts" / "convert_mamba.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "source"), str(tmp_path / "hier"), "--L-layers", "2",
                    "--set", "chunk_size=4", "--set", "bptt_steps=null"], check=True, capture_output=True)
    model = HierMambaForCausalLM.from_pretrained(tmp_path / "hier").eval()
    assert (model.config.L_layers, model.config.chunk_size, model.config.bptt_steps) == (2, 4, None)
    tokens = ids(seed=12)
    with torch.no_grad():
        assert (model(tokens).logits - source(tokens).logits).abs().max().item() <= 1e-5


def test_source_tokenizer_travels_with_the_converted_model(tmp_path):
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="w0")))
    tokenizer.backend_tokenizer.pre_tokenizer = WhitespaceSplit()
    source = source_model("mamba", seed=13)
    source.save_pretrained(tmp_path / "source")
    tokenizer.save_pretrained(tmp_path / "source")
    convert_mamba_checkpoint(tmp_path / "source", tmp_path / "hier", L_layers=1)
    loaded = AutoTokenizer.from_pretrained(tmp_path / "hier")
    assert loaded("w3 w17 w5")["input_ids"] == [3, 17, 5]
