"""What transformers reads from a model: frozen deterministic initial states, num_hidden_layers,
hidden states, return_dict, forward signatures, generation kwargs, the Cache protocol."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from hier_mamba import HierMambaConfig, HierMambaForCausalLM, HierMambaModel
from hier_mamba.reasoning import invocation_schedule


def tiny(**overrides) -> HierMambaConfig:
    values = dict(vocab_size=50, hidden_size=32, H_layers=1, L_layers=2, H_cycles=2, L_cycles=2,
                  state_size=8, head_dim=16, chunk_size=8)
    values.update(overrides)
    return HierMambaConfig(**values)


def model_for(config, seed=0) -> HierMambaForCausalLM:
    torch.manual_seed(seed)
    return HierMambaForCausalLM(config).eval()


def test_initial_states_are_frozen_and_the_same_on_every_construction(tmp_path):
    a, b = model_for(tiny(), seed=0), model_for(tiny(), seed=1)
    for name in ("H_init", "L_init"):
        first, second = getattr(a.model.reasoner, name), getattr(b.model.reasoner, name)
        assert isinstance(first, torch.nn.Parameter) and not first.requires_grad
        assert torch.equal(first, second)
    assert not torch.equal(a.model.reasoner.H_init, a.model.reasoner.L_init)
    # A checkpoint without them (as if saved before they existed) gets the same values on the meta-device path.
    a.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert "model.reasoner.H_init" in weights and "model.reasoner.L_init" in weights
    save_file({k: v for k, v in weights.items() if not k.endswith("_init")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    loaded = HierMambaForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.reasoner.H_init, a.model.reasoner.H_init)
    assert torch.equal(loaded.model.reasoner.L_init, a.model.reasoner.L_init)


def test_initial_states_do_not_train():
    model = model_for(tiny()).train()
    before = model.model.reasoner.H_init.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.randint(0, 50, (2, 8))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    assert model.model.reasoner.H_init.grad is None and torch.equal(model.model.reasoner.H_init, before)


@pytest.mark.parametrize("overrides,expected", [
    (dict(), 2 * (2 * 2 + 1)), (dict(H_cycles=3, L_cycles=1, H_layers=2, L_layers=1), 3 * (1 + 2)),
    (dict(architecture="looped", H_cycles=2, L_cycles=2), 6 * 2)])
def test_num_hidden_layers_counts_every_block_application(overrides, expected):
    config = tiny(**overrides)
    assert config.num_hidden_layers == expected
    model = model_for(config)
    with torch.no_grad():
        cache = model(torch.randint(0, 50, (1, 5)), use_cache=True).cache
    assert sum(len(states) for states in cache.states) == expected
