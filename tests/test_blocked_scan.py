"""ops/blocked_scan.py: the time-blocked selective scan equals the materialized reference, forward and backward."""

import pytest
import torch

from hier_mamba.ops import selective_scan, selective_scan_reference
from hier_mamba.ops.blocked_scan import blocked_selective_scan
from helpers import projected_grads  # tests/helpers.py


def _inputs(b=2, d=5, n=4, length=33, seed=0):
    generator = torch.Generator().manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=generator).requires_grad_()

    return dict(u=randn(b, d, length), delta=randn(b, d, length), A=(-torch.rand(d, n, generator=generator) - 0.1)
                .requires_grad_(), B=randn(b, n, length), C=randn(b, n, length), D=randn(d), z=randn(b, d, length),
                delta_bias=randn(d), initial_state=randn(b, d, n))


@pytest.mark.parametrize("block", [1, 5, 33, 64])
@pytest.mark.parametrize("with_state", [False, True])
def test_blocked_scan_equals_reference_forward_and_gradients(block, with_state):
    inputs = _inputs()
    if not with_state:
        inputs["initial_state"] = None
    leaves = [v for v in inputs.values() if v is not None]
    y_ref, s_ref = selective_scan_reference(**inputs)
    delta = torch.nn.functional.softplus(inputs["delta"] + inputs["delta_bias"][:, None])
    h0 = inputs["initial_state"] if with_state else torch.zeros(2, 5, 4)
    y_blk, s_blk = blocked_selective_scan(inputs["u"], delta, inputs["A"], inputs["B"], inputs["C"], h0, block=block)
    y_blk = (y_blk + inputs["u"] * inputs["D"][:, None]) * torch.nn.functional.silu(inputs["z"])
    torch.testing.assert_close(y_blk, y_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_blk, s_ref, rtol=1e-5, atol=1e-5)
    for name, g_blk, g_ref in zip([k for k, v in inputs.items() if v is not None],
                                  projected_grads([y_blk, s_blk], leaves), projected_grads([y_ref, s_ref], leaves)):
        torch.testing.assert_close(g_blk, g_ref, rtol=1e-4, atol=1e-4, msg=lambda m: f"d/d{name}: {m}")


def test_selective_scan_is_the_blocked_scan_and_keeps_dtype():
    """The public op (the CPU path) equals the reference, also for a bf16 input returned in bf16."""
    inputs = _inputs(seed=1)
    torch.testing.assert_close(selective_scan(**inputs), selective_scan_reference(**inputs))
    u16 = inputs["u"].detach().bfloat16()
    y16, state = selective_scan(**{**inputs, "u": u16})
    assert y16.dtype == torch.bfloat16 and state.dtype == torch.float32
    torch.testing.assert_close(y16, selective_scan_reference(**{**inputs, "u": u16})[0])


def test_blocked_scan_gradcheck_double():
    """Analytic backward against finite differences (float64, blocks that do not divide the length)."""
    generator = torch.Generator().manual_seed(2)

    def leaf(*shape, positive=False):
        t = torch.rand(*shape, generator=generator, dtype=torch.float64)
        return (t if positive else t * 2 - 1).requires_grad_()

    u, delta, B, C = leaf(1, 3, 9), leaf(1, 3, 9, positive=True), leaf(1, 2, 9), leaf(1, 2, 9)
    A, h0 = (-leaf(3, 2, positive=True)).detach().requires_grad_(), leaf(1, 3, 2)
    assert torch.autograd.gradcheck(lambda *a: blocked_selective_scan(*a, block=4), (u, delta, A, B, C, h0))


def test_blocked_scan_rejects_a_bad_block():
    inputs = _inputs()
    with pytest.raises(ValueError, match="block must be a positive number of steps, got 0"):
        blocked_selective_scan(inputs["u"], inputs["delta"], inputs["A"], inputs["B"], inputs["C"],
                               torch.zeros(2, 5, 4), block=0)


def test_compile_path_custom_op_passes_opcheck_and_equals_the_autograd_node():
    """Under torch.compile the scan is the custom op hier_mamba::blocked_selective_scan (its time loops stay out of
    the graph): torch.library.opcheck (schema, fake tensors, autograd registration) and equal to the eager node."""
    from hier_mamba.ops.blocked_scan import _scan_op, blocked_selective_scan

    torch.manual_seed(3)
    b, d, n, l = 2, 6, 4, 37
    args = [torch.randn(b, d, l), torch.rand(b, d, l), -torch.rand(d, n), torch.randn(b, n, l), torch.randn(b, n, l),
            torch.randn(b, d, n)]
    args = [t.requires_grad_() for t in args]
    torch.library.opcheck(_scan_op, (*args, 16))
    y, final = blocked_selective_scan(*args, block=16)
    y_op, final_op, *_ = _scan_op(*args, 16)
    torch.testing.assert_close(y_op, y, rtol=0, atol=0)
    torch.testing.assert_close(final_op, final, rtol=0, atol=0)
    weights = [torch.randn_like(y), torch.randn_like(final)]
    grads = torch.autograd.grad((y * weights[0]).sum() + (final * weights[1]).sum(), args)
    grads_op = torch.autograd.grad((y_op * weights[0]).sum() + (final_op * weights[1]).sum(), args)
    for g_op, g in zip(grads_op, grads):
        torch.testing.assert_close(g_op, g, rtol=0, atol=0)
