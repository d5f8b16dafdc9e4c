"""norms.py: the one-node fp32 training path of RMSNorm equals its composite form (the specification)."""

import pytest
import torch

import hier_mamba.norms as norms
from hier_mamba.norms import GatedRMSNormFunction, RMSNorm
from helpers import projected_grads  # tests/helpers.py


def _composite(monkeypatch, norm, x, gate):
    with monkeypatch.context() as patch:
        patch.setattr(norms, "_one_node", lambda *args: False)
        return norm(x, gate)


@pytest.mark.parametrize("group_size,gated", [(None, False), (None, True), (4, True), (8, False)])
def test_one_node_equals_composite_forward_and_gradients(monkeypatch, group_size, gated):
    torch.manual_seed(0)
    norm = RMSNorm(16, eps=1e-5, group_size=group_size)
    with torch.no_grad():
        norm.weight.normal_()
    x = torch.randn(2, 7, 16, requires_grad=True)
    gate = torch.randn(2, 7, 16, requires_grad=True) if gated else None
    leaves = [x, norm.weight] + ([gate] if gated else [])
    ours = norm(x, gate)
    assert ours.grad_fn.name() == "GatedRMSNormFunctionBackward"
    expected = _composite(monkeypatch, norm, x, gate)
    assert expected.grad_fn.name() != "GatedRMSNormFunctionBackward"
    torch.testing.assert_close(ours, expected)
    for g1, g2 in zip(projected_grads([ours], leaves), projected_grads([expected], leaves)):
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("gated", [False, True])
def test_one_node_gradcheck_double(gated):
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(3, 12, generator=generator, dtype=torch.float64, requires_grad=True)
    gate = torch.randn(3, 12, generator=generator, dtype=torch.float64, requires_grad=True) if gated else None
    weight = torch.randn(12, generator=generator, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, gate, weight: GatedRMSNormFunction.apply(x, gate, weight, 4, 1e-5),
                                    (x, gate, weight))


def test_other_dtypes_and_inference_take_the_composite(monkeypatch):
    """bf16 keeps the composite's rounding (weight applied after the cast); without a gradient nothing changes."""
    torch.manual_seed(2)
    norm = RMSNorm(8, group_size=4)
    x, gate = torch.randn(2, 8), torch.randn(2, 8)
    with torch.no_grad():
        assert norm(x, gate).grad_fn is None
        torch.testing.assert_close(norm(x, gate), _composite(monkeypatch, norm, x, gate), rtol=0, atol=0)
    norm_bf16 = RMSNorm(8, group_size=4).to(torch.bfloat16)
    x16 = x.to(torch.bfloat16).requires_grad_()
    out = norm_bf16(x16, gate.to(torch.bfloat16))
    assert out.grad_fn.name() != "GatedRMSNormFunctionBackward" and out.dtype == torch.bfloat16
