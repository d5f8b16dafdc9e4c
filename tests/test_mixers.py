"""Mixers: equal to transformers' MambaMixer / Mamba2Mixer with the same weights; step == forward."""

import pytest
import torch
from transformers import Mamba2Config, MambaConfig
from transformers.models.mamba.modeling_mamba import MambaMixer as HFMambaMixer
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

from hier_mamba import HierMambaConfig
from hier_mamba.blocks import HierMambaBlock
from hier_mamba.mixers import Mamba1Mixer, Mamba2Mixer


def tiny_config(mixer: str, **overrides) -> HierMambaConfig:
    values = dict(vocab_size=32, hidden_size=32, mixer=mixer, state_size=8, head_dim=16, n_groups=2,
                  chunk_size=8, expand=2, conv_kernel=4)
    values.update(overrides)
    return HierMambaConfig(**values)


def randomize_(module: torch.nn.Module, seed: int = 0) -> None:
    """Give every parameter non-trivial values so that a wrong wiring cannot hide."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            noise = torch.randn(param.shape, generator=generator) * 0.3
            keeps_init = name in ("A_log", "dt_bias", "dt_proj.bias") or name.endswith("norm.weight")
            param.copy_(param + noise if keeps_init else noise)


def test_mamba1_mixer_equals_transformers():
    config = tiny_config("mamba1")
    ours = Mamba1Mixer(config)
    randomize_(ours)
    hf_config = MambaConfig(hidden_size=32, state_size=8, expand=2, conv_kernel=4, time_step_rank=config.time_step_rank,
                            use_conv_bias=True, use_bias=False, num_hidden_layers=1)
    theirs = HFMambaMixer(hf_config, layer_idx=0)
    missing = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not missing.missing_keys and not missing.unexpected_keys
    x = torch.randn(2, 19, 32)
    with torch.no_grad():
        expected = theirs.eval()(x)
        actual, _ = ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


def test_mamba2_mixer_equals_transformers():
    config = tiny_config("mamba2")
    ours = Mamba2Mixer(config)
    randomize_(ours)
    hf_config = Mamba2Config(hidden_size=32, state_size=8, expand=2, conv_kernel=4, head_dim=16,
                             num_heads=config.num_heads, n_groups=2, chunk_size=8, use_conv_bias=True,
                             use_bias=False, num_hidden_layers=1, layer_norm_epsilon=config.rms_norm_eps)
    theirs = HFMamba2Mixer(hf_config, layer_idx=0)
    result = theirs.load_state_dict(ours.state_dict(), strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    x = torch.randn(2, 21, 32)
    with torch.no_grad():
        expected = theirs.eval()(x)
        actual, _ = ours(x)
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mixer_class,name", [(Mamba1Mixer, "mamba1"), (Mamba2Mixer, "mamba2")])
def test_step_and_state_continuation_equal_forward(mixer_class, name):
    torch.manual_seed(0)
    mixer = mixer_class(tiny_config(name))
    randomize_(mixer, seed=1)
    x = torch.randn(2, 13, 32)
    with torch.no_grad():
        full, _ = mixer(x)
        prefix, state = mixer(x[:, :5])
        steps = [prefix]
        for t in range(5, 9):
            y_t, state = mixer.step(x[:, t], state)
            steps.append(y_t.unsqueeze(1))
        tail, _ = mixer(x[:, 9:], state)  # continued prefill from a stepped state
    torch.testing.assert_close(torch.cat(steps + [tail], dim=1), full, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["mamba1", "mamba2"])
def test_left_padding_is_invisible(name):
    torch.manual_seed(0)
    mixer = (Mamba1Mixer if name == "mamba1" else Mamba2Mixer)(tiny_config(name))
    randomize_(mixer, seed=2)
    x = torch.randn(1, 7, 32)
    padded = torch.cat([torch.randn(1, 4, 32) * 10, x], dim=1)
    mask = torch.tensor([[0] * 4 + [1] * 7])
    with torch.no_grad():
        alone, state_alone = mixer(x)
        with_pad, state_pad = mixer(padded, attention_mask=mask)
    torch.testing.assert_close(with_pad[:, 4:], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(state_pad.ssm, state_alone.ssm, rtol=1e-4, atol=1e-5)


def test_bidirectional_block_sees_the_future_and_refuses_steps():
    config = tiny_config("mamba2", bidirectional=True)
    block = HierMambaBlock(config)
    randomize_(block, seed=3)
    x = torch.randn(1, 10, 32)
    x2 = x.clone()
    x2[:, 8] += 1.0
    with torch.no_grad():
        y, _ = block(x)
        y2, _ = block(x2)
    assert not torch.allclose(y[:, :8], y2[:, :8]), "the reverse scan must carry position 8 backwards"
    with pytest.raises(ValueError, match="bidirectional"):
        block.step(x[:, 0], None)
