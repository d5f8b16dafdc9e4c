"""Bad input gets a ValueError naming it; a NaN stays causal; config fields set late are validated."""

import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForCausalLM, HierMambaModel
from hier_mamba.ops.ssd import ssd_chunked, ssd_sequential


def tiny(mixer="mamba2", **overrides) -> HierMambaConfig:
    values = dict(vocab_size=50, hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=1, mixer=mixer,
                  state_size=8, head_dim=16, chunk_size=8)
    values.update(overrides)
    return HierMambaConfig(**values)


def test_empty_inputs_and_prompts_raise_naming_them():
    model = HierMambaForCausalLM(tiny()).eval()
    with pytest.raises(ValueError, match="input_ids is empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="inputs_embeds is empty"):
        model(inputs_embeds=torch.zeros(1, 0, 32))
    with pytest.raises(ValueError, match="input_ids is empty"):
        model.generate(torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2, pad_token_id=0)


@pytest.mark.parametrize("value", [2, -1, 0.5])
def test_attention_mask_values_other_than_0_and_1_raise(value):
    model = HierMambaForCausalLM(tiny()).eval()
    ids = torch.randint(1, 50, (1, 5))
    mask = torch.ones(1, 5)
    mask[0, 2] = value
    with pytest.raises(ValueError, match="only 0"):
        model(ids, attention_mask=mask)
    model(ids, attention_mask=torch.ones(1, 5, dtype=torch.bool))  # bool masks are fine


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_a_non_finite_input_does_not_reach_earlier_positions(mixer, bad):
    torch.manual_seed(0)
    model = HierMambaModel(tiny(mixer)).eval()
    x = torch.randn(2, 20, 32) / 32 ** 0.5
    poisoned = x.clone()
    poisoned[0, 13, 5] = bad  # chunk 8..15: positions 8..12 share its chunk
    with torch.no_grad():
        clean = model(inputs_embeds=x, use_cache=False).last_hidden_state
        out = model(inputs_embeds=poisoned, use_cache=False).last_hidden_state
    torch.testing.assert_close(out[0, :13], clean[0, :13])
    torch.testing.assert_close(out[1], clean[1])
    assert not torch.isfinite(out[0, 13]).all()


@pytest.mark.parametrize("where", ["x", "dt", "B", "C", "x inf", "initial"])
def test_ssd_chunked_is_non_finite_exactly_where_the_recurrence_is(where):
    """A NaN / inf input poisons what the recurrence poisons, no more: a bad x_t[p] its channel p from t on, a bad
    dt_t its head from t on, a bad B_t its group's heads from t on, a bad C_t position t alone; the final state as
    the recurrence's (rows, columns, heads). Elsewhere the chunked scan equals the recurrence."""
    torch.manual_seed(0)
    b, l, h, p, g, n = 1, 12, 4, 3, 2, 5
    x, dt = torch.randn(b, l, h, p), torch.randn(b, l, h)
    B, C = torch.randn(b, l, g, n), torch.randn(b, l, g, n)
    bad = float("inf") if where.endswith("inf") else float("nan")
    {"x": lambda: x.__setitem__((0, 6, 1, 0), bad), "x inf": lambda: x.__setitem__((0, 6, 1, 0), bad),
     "dt": lambda: dt.__setitem__((0, 5, 2), bad), "B": lambda: B.__setitem__((0, 9, 1, 3), bad),
     "C": lambda: C.__setitem__((0, 2, 0, 1), bad), "initial": lambda: None}[where]()
    if where == "initial":  # finite inputs whose scan overflows nowhere: the fast path, identical to before
        x[0, 6, 1, 0] = 1e3
    A, D = -torch.rand(h), torch.rand(h)
    y, state = ssd_chunked(x, dt, A, B, C, chunk_size=4, D=D)
    y_ref, state_ref = ssd_sequential(x, dt, A, B, C, D=D)
    assert torch.equal(~torch.isfinite(y), ~torch.isfinite(y_ref))
    assert torch.equal(~torch.isfinite(state), ~torch.isfinite(state_ref))
    finite = torch.isfinite(y_ref)
    assert where == "initial" or not finite.all()
    torch.testing.assert_close(y[finite], y_ref[finite])
    torch.testing.assert_close(state[torch.isfinite(state_ref)], state_ref[torch.isfinite(state_ref)])


def test_config_field_set_after_construction_is_validated_at_model_construction():
    config = tiny()
    config.head_dim = 48  # does not divide intermediate_size = 64
    with pytest.raises(ValueError, match="head_dim"):
        HierMambaForCausalLM(config)


def test_a_decoding_step_validates_without_reading_tensors_on_the_host(monkeypatch):
    """No Tensor -> Python bool/int conversion (a device sync on a GPU) in a one-token cached step."""
    model = HierMambaForCausalLM(tiny()).eval()
    with torch.no_grad():
        cache = model(torch.randint(1, 50, (2, 5)), use_cache=True).cache
        conversions = []
        for method in ("__bool__", "item", "tolist", "__int__"):
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method,
                                lambda self, *a, _original=original, _name=method: (conversions.append(_name),
                                                                                    _original(self, *a))[1])
        model(torch.tensor([[3], [4]]), cache=cache)
        monkeypatch.undo()
    assert conversions == []
    with torch.no_grad(), pytest.raises(RuntimeError, match="outside the vocabulary"):
        model(torch.tensor([[3], [50]]), cache=cache)
