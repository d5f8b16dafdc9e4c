"""ops/split_conv.py: the fused projection split + causal conv equals split -> reference conv -> split, and the
Mamba2 mixer gives the same outputs and gradients through it as through the unfused path."""

import dataclasses

import pytest
import torch

from hier_mamba.mixers import Mamba2Mixer
from hier_mamba.ops import backend, causal_conv1d_reference, split_causal_conv1d
from helpers import projected_grads, tiny  # tests/helpers.py

HEAD, SIZES, TAIL = 5, [4, 3, 3], 2


def _fused(projected, weight, bias, state):
    head, parts, tail, final_state = split_causal_conv1d(projected, HEAD, SIZES, weight, bias, state)
    return (head, *parts, tail, final_state)


def _unfused(projected, weight, bias, state):
    head, conv_inputs, tail = projected.split([HEAD, sum(SIZES), TAIL], dim=-1)
    y, final_state = causal_conv1d_reference(conv_inputs.transpose(1, 2), weight, bias, state)  # (b, c, l)
    return (head, *y.transpose(1, 2).split(SIZES, dim=-1), tail, final_state)


def _inputs(length, with_state, with_bias, dtype=torch.float32):
    generator = torch.Generator().manual_seed(length)
    channels, width = sum(SIZES), 4

    def randn(*shape):
        return torch.randn(*shape, generator=generator, dtype=dtype).requires_grad_()

    return (randn(2, length, HEAD + channels + TAIL), randn(channels, width),
            randn(channels) if with_bias else None, randn(2, channels, width - 1) if with_state else None)


@pytest.mark.parametrize("length", [1, 2, 3, 5, 40])  # shorter than, equal to and longer than the w - 1 = 3 state
@pytest.mark.parametrize("with_state,with_bias", [(False, True), (True, False), (True, True)])
def test_fused_split_conv_equals_split_then_conv(length, with_state, with_bias):
    inputs = _inputs(length, with_state, with_bias)
    differentiable = [t for t in inputs if t is not None]
    fused, unfused = _fused(*inputs), _unfused(*inputs)
    for ours, expected in zip(fused, unfused):
        torch.testing.assert_close(ours, expected)
    for g1, g2 in zip(projected_grads(fused, differentiable), projected_grads(unfused, differentiable)):
        torch.testing.assert_close(g1, g2)


def test_fused_split_conv_gradcheck_double():
    inputs = _inputs(6, with_state=True, with_bias=True, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda *args: _fused(*args), inputs)


def test_fused_split_conv_gradient_with_only_some_outputs_used():
    """Outputs that get no gradient (z unused, B unused) contribute zeros, not garbage from an empty buffer."""
    inputs = _inputs(7, with_state=True, with_bias=True)
    differentiable = [t for t in inputs if t is not None]
    picks = [1, 3, 4]  # x, C, dt
    fused = [_fused(*inputs)[i] for i in picks]
    unfused = [_unfused(*inputs)[i] for i in picks]
    for g1, g2 in zip(projected_grads(fused, differentiable), projected_grads(unfused, differentiable)):
        torch.testing.assert_close(g1, g2)


def test_fused_split_conv_rejects_sizes_that_do_not_fit():
    projected, weight, bias, _ = _inputs(4, with_state=False, with_bias=True)
    with pytest.raises(ValueError, match=r"weight \(10, 4\) and conv_sizes \[4, 3, 4\]"):
        split_causal_conv1d(projected, HEAD, [4, 3, 4], weight, bias)


@pytest.mark.parametrize("with_state", [False, True])
def test_mamba2_mixer_fused_path_equals_unfused_path(monkeypatch, with_state):
    """The mixer through ops.split_conv and through split -> ops.conv -> split (what the kernels' bundle and a
    masked or hooked call take): same output, final states and gradients of input, weights and initial state."""
    torch.manual_seed(0)
    mixer = Mamba2Mixer(tiny("mamba2", use_conv_bias=True, ssm_backend="torch"))
    hidden = torch.randn(2, 11, mixer.config.hidden_size, requires_grad=True)
    state = None
    if with_state:
        _, state = mixer(torch.randn(2, 5, mixer.config.hidden_size))
        state = type(state)(*(t.detach().requires_grad_() for t in state))
    leaves = [hidden, *mixer.parameters()] + (list(state) if with_state else [])
    results = []
    for split_conv in (backend.TORCH_OPS.split_conv, None):
        monkeypatch.setitem(backend._RESOLVED, ("torch", "cpu"),
                            dataclasses.replace(backend.TORCH_OPS, split_conv=split_conv))
        out, new_state = mixer(hidden, state)
        results.append(([out, *new_state], projected_grads([out, *new_state], leaves)))
    (outputs, grads), (expected_outputs, expected_grads) = results
    for ours, expected in zip(outputs + list(grads), expected_outputs + list(expected_grads)):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
