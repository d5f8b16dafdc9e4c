"""The credit-assignment options: looped baseline, H memory, synthetic-gradient boundary."""

import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForCausalLM
from hier_mamba.reasoning import invocation_schedule
from hier_mamba.synthetic_gradients import SyntheticGradientModel, synthetic_boundary


def tiny(**overrides) -> HierMambaConfig:
    values = dict(vocab_size=40, hidden_size=32, H_layers=1, L_layers=1, H_cycles=3, L_cycles=1, state_size=8,
                  head_dim=16, chunk_size=8)
    values.update(overrides)
    return HierMambaConfig(**values)


def build(config, seed=0):
    torch.manual_seed(seed)
    return HierMambaForCausalLM(config).eval()


def test_looped_and_flat_schedules():
    assert invocation_schedule(tiny(architecture="looped", H_cycles=2, L_cycles=3)) == ["L"] * 8
    flat = tiny(architecture="looped", H_cycles=1, L_cycles=0)
    assert flat.num_invocations == 1
    model = build(flat)
    assert model.model.reasoner.H is None
    with pytest.raises(ValueError, match="L_cycles"):
        tiny(L_cycles=0)


@pytest.mark.parametrize("overrides", [dict(architecture="looped"), dict(h_memory_size=2)])
def test_prefill_plus_steps_equals_full_forward(overrides):
    model = build(tiny(**overrides))
    if model.model.reasoner.memory is not None:
        torch.nn.init.normal_(model.model.reasoner.memory.out_proj.weight, std=0.2)  # make the memory matter
    ids = torch.randint(0, 40, (2, 17))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        prefill = model(ids[:, :9], use_cache=True)
        steps = [model(ids[:, t:t + 1], cache=prefill.cache).logits for t in range(9, 17)]
    torch.testing.assert_close(torch.cat([prefill.logits, *steps], 1), full, rtol=1e-4, atol=1e-4)


def test_fresh_h_memory_changes_nothing_then_matters_and_is_causal():
    plain = build(tiny(bptt_steps=None))
    with_memory = build(tiny(bptt_steps=None, h_memory_size=2))
    missing = with_memory.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(key.startswith("model.reasoner.memory.") for key in missing)
    ids = torch.randint(0, 40, (1, 12))
    with torch.no_grad():
        torch.testing.assert_close(with_memory(ids).logits, plain(ids).logits)
        torch.nn.init.normal_(with_memory.model.reasoner.memory.out_proj.weight, std=0.2)
        assert not torch.allclose(with_memory(ids).logits, plain(ids).logits)
        changed = ids.clone()
        changed[0, 7] = (changed[0, 7] + 1) % 40
        torch.testing.assert_close(with_memory(ids).logits[:, :7], with_memory(changed).logits[:, :7])
    with_memory.train()
    with_memory(ids, labels=ids).loss.backward()
    assert with_memory.model.reasoner.memory.kv_proj.weight.grad.abs().sum() > 0


def test_memory_keeps_the_most_recent_h_states():
    model = build(tiny(h_memory_size=2, H_cycles=4))
    with torch.no_grad():
        carry, _ = model.model.reasoner(torch.randn(1, 5, 32))
    assert len(carry.memory) == 2
    torch.testing.assert_close(carry.memory[-1], carry.z_H)


def test_synthetic_boundary_is_identity_forward_and_injects_and_regresses_in_backward():
    carry = torch.randn(3, 4, requires_grad=True)
    predicted = torch.randn(3, 4, requires_grad=True)
    unit = torch.zeros(())
    out = synthetic_boundary(carry, predicted, unit, scale=0.5)
    torch.testing.assert_close(out, carry.detach())
    true_grad = torch.randn(3, 4)
    out.backward(true_grad)
    sigma = true_grad.pow(2).mean().sqrt()  # the first measurement sets the unit
    torch.testing.assert_close(unit, sigma)
    torch.testing.assert_close(carry.grad, predicted.detach() * sigma)
    torch.testing.assert_close(predicted.grad, 0.5 * (predicted.detach() - true_grad / sigma) / 12)  # mean of 12
    second = torch.randn(3, 4) * 3
    synthetic_boundary(carry, predicted, unit, scale=0.5).backward(second)  # later ones: running average
    torch.testing.assert_close(unit, 0.9 * sigma + 0.1 * second.pow(2).mean().sqrt())


def test_synthetic_regression_is_invariant_to_the_gradient_scale():
    """Adam steps by ~lr whatever the gradient scale, so the predictor must regress an O(1) target:
    scaling the future loss by 1e-5 (a mean over many tokens) must not change what the predictor sees."""
    predicted = torch.randn(3, 4, requires_grad=True)
    true_grad = torch.randn(3, 4)
    grads = []
    for factor in (1.0, 1e-5):
        predicted.grad = None
        synthetic_boundary(torch.randn(3, 4, requires_grad=True), predicted, torch.zeros(())).backward(true_grad * factor)
        grads.append(predicted.grad.clone())
    torch.testing.assert_close(grads[1], grads[0])


def test_synthetic_boundary_with_zero_true_gradient_regresses_to_zero():
    predicted = torch.randn(2, 3, requires_grad=True)
    carry = torch.randn(2, 3, requires_grad=True)
    unit = torch.zeros(())
    synthetic_boundary(carry, predicted, unit).backward(torch.zeros(2, 3))
    assert unit == 0 and torch.equal(carry.grad, torch.zeros(2, 3))  # nothing injected, no NaN
    torch.testing.assert_close(predicted.grad, predicted.detach() / 6)  # pulled towards 0


def test_synthetic_gradient_model_starts_at_zero():
    sg = SyntheticGradientModel(16, 1e-5)
    g_H, g_L = sg(torch.randn(2, 3, 16), torch.randn(2, 3, 16))
    assert torch.count_nonzero(g_H) == 0 and torch.count_nonzero(g_L) == 0


@pytest.mark.parametrize("field,value", [("architecture", "tree"), ("h_memory_size", -1), ("h_memory_heads", 5),
                                         ("synthetic_gradient_scale", 0.0)])
def test_validation(field, value):
    extra = {"h_memory_size": 2} if field == "h_memory_heads" else {}
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value, **extra})
