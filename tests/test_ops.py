"""The torch ops: chunked / parallel forms equal their step-by-step references, forward and backward."""

import pytest
import torch

from hier_mamba.ops import (
    causal_conv1d,
    causal_conv1d_reference,
    causal_conv1d_step,
    get_ops,
    linear_recurrence,
    selective_scan,
    selective_scan_sequential,
    ssd_chunked,
    ssd_sequential,
)
from hier_mamba.ops.backend import TORCH_OPS, cuda_kernels_error
from helpers import projected_grads  # tests/helpers.py


def test_linear_recurrence_matches_loop_forward_and_backward():
    torch.manual_seed(0)
    a = torch.rand(37, 2, 3, requires_grad=True)
    b = torch.randn(37, 2, 3, requires_grad=True)
    h0 = torch.randn(2, 3, requires_grad=True)
    ours = linear_recurrence(a, b, h0)
    h, states = h0, []
    for t in range(37):
        h = a[t] * h + b[t]
        states.append(h)
    reference = torch.stack(states)
    torch.testing.assert_close(ours, reference)
    for g1, g2 in zip(projected_grads([ours], [a, b, h0]), projected_grads([reference], [a, b, h0])):
        torch.testing.assert_close(g1, g2)


@pytest.mark.parametrize("length", [1, 7, 64])
def test_causal_conv_sequence_equals_steps_and_continues_from_state(length):
    torch.manual_seed(1)
    x = torch.randn(2, 6, length)
    weight, bias = torch.randn(6, 4), torch.randn(6)
    state0 = torch.randn(2, 6, 3)
    y, final = causal_conv1d(x, weight, bias, state0)
    state, steps = state0, []
    for t in range(length):
        y_t, state = causal_conv1d_step(x[:, :, t], state, weight, bias)
        steps.append(y_t)
    torch.testing.assert_close(y, torch.stack(steps, -1))
    torch.testing.assert_close(final, state)
    # Splitting the sequence in two and carrying the state gives the same output.
    if length > 2:
        y1, s1 = causal_conv1d(x[:, :, :2], weight, bias, state0)
        y2, _ = causal_conv1d(x[:, :, 2:], weight, bias, s1)
        torch.testing.assert_close(torch.cat([y1, y2], -1), y)


@pytest.mark.parametrize("time_major", [False, True])
@pytest.mark.parametrize("with_state,with_bias,activation", [(False, True, "silu"), (True, False, None),
                                                             (True, True, "swish")])
def test_causal_conv_fast_path_equals_reference(time_major, with_state, with_bias, activation):
    """The one-node time-major conv (forward, final state, every gradient) equals the readable shifted multiply-adds,
    for a contiguous (b, d, l) input and for a transposed view of (b, l, d) memory (what the mixers pass)."""
    generator = torch.Generator().manual_seed(4)
    x = torch.randn(2, 9, 6, generator=generator).transpose(1, 2) if time_major else torch.randn(
        2, 6, 9, generator=generator)
    x.requires_grad_()
    weight = torch.randn(6, 4, generator=generator, requires_grad=True)
    bias = torch.randn(6, generator=generator, requires_grad=True) if with_bias else None
    state0 = torch.randn(2, 6, 3, generator=generator, requires_grad=True) if with_state else None
    inputs = [t for t in (x, weight, bias, state0) if t is not None]
    fast = causal_conv1d(x, weight, bias, state0, activation)
    reference = causal_conv1d_reference(x, weight, bias, state0, activation)
    for ours, expected in zip(fast, reference):
        torch.testing.assert_close(ours, expected)
    for g1, g2 in zip(projected_grads(fast, inputs), projected_grads(reference, inputs)):
        torch.testing.assert_close(g1, g2)


def test_causal_conv_rejects_an_unknown_activation():
    with pytest.raises(ValueError, match="activation must be None, 'silu' or 'swish', got 'relu'"):
        causal_conv1d(torch.randn(1, 2, 3), torch.randn(2, 4), activation="relu")


def test_causal_conv_is_causal():
    x = torch.randn(1, 4, 20)
    weight = torch.randn(4, 4)
    y, _ = causal_conv1d(x, weight)
    x2 = x.clone()
    x2[:, :, 12] += 5.0
    y2, _ = causal_conv1d(x2, weight)
    torch.testing.assert_close(y[:, :, :12], y2[:, :, :12])
    assert not torch.allclose(y[:, :, 12:], y2[:, :, 12:])


@pytest.mark.parametrize("with_state", [False, True])
def test_selective_scan_equals_sequential(with_state):
    torch.manual_seed(2)
    b, d, n, l = 2, 5, 4, 33
    u = torch.randn(b, d, l, requires_grad=True)
    delta = torch.randn(b, d, l, requires_grad=True)
    A = -torch.rand(d, n).add(0.1).requires_grad_()
    B = torch.randn(b, n, l, requires_grad=True)
    C = torch.randn(b, n, l, requires_grad=True)
    D = torch.randn(d, requires_grad=True)
    z = torch.randn(b, d, l, requires_grad=True)
    bias = torch.randn(d, requires_grad=True)
    h0 = torch.randn(b, d, n, requires_grad=True) if with_state else None
    inputs = [u, delta, A, B, C, D, z, bias] + ([h0] if with_state else [])
    y1, s1 = selective_scan(u, delta, A, B, C, D, z, bias, True, h0)
    y2, s2 = selective_scan_sequential(u, delta, A, B, C, D, z, bias, True, h0)
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-5)
    for g1, g2 in zip(projected_grads([y1, s1], inputs), projected_grads([y2, s2], inputs)):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4)


@pytest.fixture(params=["factorized", "segments"])
def ssd_form(request, monkeypatch):
    """Which intra-chunk form ssd_chunked takes: the factorized decays wherever they fit (checked through a spy),
    or the per-head segment decays (forced)."""
    from hier_mamba.ops import ssd

    taken = []
    decide = ssd._factorizable if request.param == "factorized" else (lambda cum: False)
    monkeypatch.setattr(ssd, "_factorizable", lambda cum: taken.append(decide(cum)) or taken[-1])
    yield request.param
    assert taken and all(taken) == (request.param == "factorized"), taken


@pytest.mark.parametrize("length,chunk,groups", [(50, 16, 1), (64, 16, 2), (5, 64, 1), (1, 8, 2)])
@pytest.mark.parametrize("with_state", [False, True])
def test_ssd_chunked_equals_sequential(length, chunk, groups, with_state, ssd_form):
    torch.manual_seed(3)
    b, h, p, n = 2, 4, 3, 5
    x = torch.randn(b, length, h, p, requires_grad=True)
    dt = torch.randn(b, length, h, requires_grad=True)
    A = -torch.rand(h).add(0.1).requires_grad_()
    B = torch.randn(b, length, groups, n, requires_grad=True)
    C = torch.randn(b, length, groups, n, requires_grad=True)
    D = torch.randn(h, requires_grad=True)
    bias = torch.randn(h, requires_grad=True)
    h0 = torch.randn(b, h, p, n, requires_grad=True) if with_state else None
    inputs = [x, dt, A, B, C, D, bias] + ([h0] if with_state else [])
    y1, s1 = ssd_chunked(x, dt, A, B, C, chunk, D, bias, initial_state=h0)
    y2, s2 = ssd_sequential(x, dt, A, B, C, D, bias, initial_state=h0)
    torch.testing.assert_close(y1, y2, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(s1, s2, rtol=1e-4, atol=1e-4)
    for g1, g2 in zip(projected_grads([y1, s1], inputs), projected_grads([y2, s2], inputs)):
        torch.testing.assert_close(g1, g2, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("A_max,form", [(24.0, "segments"), (8.0, "factorized")])
def test_ssd_chunked_is_as_precise_as_the_recurrence_for_large_decays(A_max, form):
    """fp32 error against a float64 recurrence, A from -1 to -24 (transformers' Mamba2 init range), 4 chunks of
    64: the chunked scan's cumulated log-decays must not cost digits (fp32 cumulative sums gave 17x the error).
    Up to -8 the chunks' log-decay ranges reach ~100 and the factorized form runs: its factors must not either."""
    from hier_mamba.ops import ssd

    torch.manual_seed(6)
    b, length, h, p, n = 2, 256, 8, 16, 16
    x, B, C = torch.randn(b, length, h, p), torch.randn(b, length, 1, n), torch.randn(b, length, 1, n)
    A = -torch.exp(torch.linspace(0.0, float(torch.log(torch.tensor(A_max))), h))
    dt = torch.nn.functional.softplus(torch.randn(b, length, h) - 2)
    state, expected = torch.zeros(b, h, p, n, dtype=torch.float64), []
    for t in range(length):  # (b, h, p, n): H_t = exp(dt A) H_{t-1} + dt x_t B_t^T; y_t = H_t C_t
        state = (state * torch.exp(dt[:, t].double() * A.double())[..., None, None]
                 + (x[:, t].double() * dt[:, t, :, None].double())[..., None] * B[:, t, :, None].double())
        expected.append((state * C[:, t, :, None].double()).sum(-1))
    expected = torch.stack(expected, dim=1)  # (b, l, h, p)
    cum = torch.cumsum((dt * A).view(b, length // 64, 64, h), dim=2)
    assert ssd._factorizable(cum.double().movedim(2, -1)) == (form == "factorized")
    assert cum.min() < -90, cum.min()  # decays that reach far down the factors' range
    chunked_error = (ssd_chunked(x, dt, A, B, C, 64, dt_softplus=False)[0].double() - expected).abs().max()
    step_error = (ssd_sequential(x, dt, A, B, C, dt_softplus=False)[0].double() - expected).abs().max()
    assert chunked_error <= 2 * step_error, (chunked_error.item(), step_error.item())


def test_ssd_groups_use_repeat_interleave_layout():
    """Head i must read group i // (heads / groups): changing group 1's B only changes heads 2, 3."""
    torch.manual_seed(4)
    x, dt = torch.randn(1, 6, 4, 2), torch.randn(1, 6, 4)
    A, B, C = -torch.rand(4), torch.randn(1, 6, 2, 3), torch.randn(1, 6, 2, 3)
    y, _ = ssd_chunked(x, dt, A, B, C, 4)
    B2 = B.clone()
    B2[:, :, 1] += 1.0
    y2, _ = ssd_chunked(x, dt, A, B2, C, 4)
    torch.testing.assert_close(y[:, :, :2], y2[:, :, :2])
    assert not torch.allclose(y[:, :, 2:], y2[:, :, 2:])


def test_ssd_dt_limit_clamps():
    x, dt = torch.randn(1, 8, 2, 2), torch.full((1, 8, 2), 10.0)
    A, B, C = -torch.ones(2), torch.randn(1, 8, 1, 3), torch.randn(1, 8, 1, 3)
    clamped, _ = ssd_chunked(x, dt, A, B, C, 4, dt_limit=(0.0, 0.5))
    reference, _ = ssd_chunked(x, torch.full_like(dt, 0.5), A, B, C, 4, dt_softplus=False)
    torch.testing.assert_close(clamped, reference)


def test_backend_resolution():
    assert get_ops("torch", torch.device("cpu")) is TORCH_OPS
    assert get_ops("auto", torch.device("cpu")) is TORCH_OPS
    with pytest.raises(ValueError, match="ssm_backend"):
        get_ops("triton", torch.device("cpu"))
    if cuda_kernels_error() is not None:
        with pytest.raises(ImportError, match="no-build-isolation"):
            get_ops("cuda", torch.device("cpu"))
    else:
        with pytest.raises(ValueError, match="CUDA device"):
            get_ops("cuda", torch.device("cpu"))


def test_closed_form_chunk_state_passing_equals_the_loop():
    """The shape-generic inter-chunk recurrence used under torch.compile (ssd._pass_states) equals the loop."""
    from hier_mamba.ops.ssd import _pass_states

    torch.manual_seed(0)
    b, c, g, r, p, n = 2, 5, 2, 3, 4, 6
    start, chunk_states = torch.randn(b, g, n, r * p), torch.randn(b, c, g, n, r * p)
    log_decay = -torch.rand(b, c, g, r)
    entering, final = _pass_states(start, chunk_states, log_decay, head_dim=p)
    state, expected = start, []
    for k in range(c):
        expected.append(state)
        decay = torch.exp(log_decay[:, k]).repeat_interleave(p, dim=-1)  # (b, g, r p): one decay per head
        state = state * decay[:, :, None, :] + chunk_states[:, k]
    torch.testing.assert_close(entering, torch.stack(expected, dim=1))
    torch.testing.assert_close(final, state)


def test_decayed_scores_node_equals_autograd_of_its_expression():
    """ssd.DecayedScores (one autograd node) against CB * segment decay through autograd, and finite differences."""
    from hier_mamba.ops.ssd import DecayedScores, _segment_decay

    generator = torch.Generator().manual_seed(5)
    CB = torch.randn(2, 3, 2, 5, 5, generator=generator, dtype=torch.float64, requires_grad=True)
    cum = (-torch.rand(2, 3, 2, 4, 5, generator=generator, dtype=torch.float64)).cumsum(-1).requires_grad_()
    ours = DecayedScores.apply(CB, cum)
    expected = CB.unsqueeze(3) * _segment_decay(cum)
    torch.testing.assert_close(ours, expected)
    for g1, g2 in zip(projected_grads([ours], [CB, cum]), projected_grads([expected], [CB, cum])):
        torch.testing.assert_close(g1, g2)
    assert torch.autograd.gradcheck(DecayedScores.apply, (CB, cum))


def test_segment_decay_floor_keeps_the_causal_mask_exact():
    """Log-decays far below LOG_DECAY_FLOOR (exp's slow underflow path) become exp(floor), huge positive differences
    above the diagonal become exact zeros (no inf * 0), and the in-place form equals the differentiable one."""
    from hier_mamba.ops.decay import LOG_DECAY_FLOOR
    from hier_mamba.ops.ssd import _segment_decay

    cum = torch.tensor([0.0, -50.0, -500.0, -5000.0], dtype=torch.float64)
    decay = _segment_decay(cum, torch.float32, inplace=True)
    torch.testing.assert_close(decay, _segment_decay(cum, torch.float32))
    floor = torch.exp(torch.tensor(LOG_DECAY_FLOOR))
    expected = torch.tensor([[1.0, 0, 0, 0], [float(torch.exp(torch.tensor(-50.0))), 1.0, 0, 0],
                             [floor, floor, 1.0, 0], [floor, floor, floor, 1.0]])
    torch.testing.assert_close(decay, expected, rtol=1e-6, atol=0.0)
    assert (decay.triu(1) == 0).all()


def test_scans_with_decays_beyond_the_floor_equal_their_references():
    """Delta |A| up to ~1000 per step: the SSD and Mamba1 scans, whose decays are floored at exp(-87), equal the
    step-by-step references (whose exp underflows to 0) to fp32 precision, forward and backward."""
    torch.manual_seed(7)
    b, length, h, p, n = 1, 24, 2, 4, 3
    x, B, C = torch.randn(b, length, h, p), torch.randn(b, length, 1, n), torch.randn(b, length, 1, n)
    dt = torch.rand(b, length, h) * 10
    A = torch.tensor([-1.0, -100.0])
    inputs = [x.requires_grad_(), dt.requires_grad_(), B.requires_grad_(), C.requires_grad_()]
    chunked = ssd_chunked(x, dt, A, B, C, 8, dt_softplus=False)
    sequential = ssd_sequential(x, dt, A, B, C, dt_softplus=False)
    for ours, expected in zip(chunked, sequential):
        torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(projected_grads(chunked, inputs), projected_grads(sequential, inputs)):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4)

    d = 3
    u, delta = torch.randn(b, d, length, requires_grad=True), (torch.rand(b, d, length) * 10).requires_grad_()
    A1 = torch.tensor([[-1.0, -30.0, -100.0]] * d)
    B1, C1 = torch.randn(b, n, length), torch.randn(b, n, length)
    ours = selective_scan(u, delta, A1, B1, C1, delta_softplus=False)
    expected = selective_scan_sequential(u, delta, A1, B1, C1, delta_softplus=False)
    for o, e in zip(ours, expected):
        torch.testing.assert_close(o, e, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(projected_grads(ours, [u, delta]), projected_grads(expected, [u, delta])):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("gated", [False, True])
def test_zero_state_scan_plus_initial_state_contribution_equals_the_scan_from_that_state(gated):
    """What the CUDA adapter does for Mamba1 with an initial state (selective_scan_fn starts from zeros): the zero-state
    scan plus the initial state's decayed read-out (gated like the rest) and decayed final state, values and
    gradients, equal the scan from that state. Blocks of 7 steps over 20 so the contribution's blocking is covered."""
    from hier_mamba.ops.selective_scan import initial_state_contribution

    torch.manual_seed(11)
    b, d, n, l = 2, 5, 4, 20
    u, delta, z = (torch.randn(b, d, l, requires_grad=True) for _ in range(3))
    A = (-torch.rand(d, n) * 3 - 0.1).requires_grad_()
    B, C = (torch.randn(b, n, l, requires_grad=True) for _ in range(2))
    D, bias = torch.randn(d, requires_grad=True), torch.randn(d, requires_grad=True)
    h0 = torch.randn(b, d, n, requires_grad=True)
    gate = z if gated else None
    y, final = selective_scan(u, delta, A, B, C, D, gate, bias, True)
    carried, decayed = initial_state_contribution(delta, A, C, bias, True, h0, block=7)
    ours = (y + carried * (torch.nn.functional.silu(z) if gated else 1), final + decayed)
    reference = selective_scan(u, delta, A, B, C, D, gate, bias, True, initial_state=h0)
    leaves = [u, delta, A, B, C, D, bias, h0] + ([z] if gated else [])
    for a, r in zip(ours, reference):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-5)
    for g1, g2 in zip(projected_grads(list(ours), leaves), projected_grads(list(reference), leaves)):
        torch.testing.assert_close(g1, g2, rtol=1e-4, atol=1e-5)
