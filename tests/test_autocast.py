"""Mixed precision: every op computes in fp32 inside an autocast region and returns the caller's dtype.

Model level: a HierMambaForCausalLM (width 128, 1 + 1 blocks, head_dim 32, batch (2, 256)) under fp16 and bf16
autocast on CPU, and the same model cast with ``.to(torch.bfloat16)``: loss and gradients finite and close to
fp32. Under fp16 autocast SSD's matmuls used to run in fp16, where its decay factors (up to exp(60)) overflow: the
loss was NaN at initialisation for the seed below. Tolerances (measured on 4 seeds, both mixers): fp16 autocast
loss within 5e-6 relative of fp32, gradients 9e-4 (relative norm of the whole gradient); bf16 autocast 5e-5 and
5.5e-3; a bf16 model 1e-4 and 8e-3. The tests allow about 5x.

Op level: under autocast an op on fp16 / bf16 inputs equals the op on those inputs taken to fp32 (the same
arithmetic), returned in the inputs' dtype, with steep decays (|dt A| up to ~1000) and chunks as long as the
sequence.
"""

import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForCausalLM
from hier_mamba.norms import RMSNorm
from hier_mamba.ops import (
    causal_conv1d,
    causal_conv1d_reference,
    causal_conv1d_step,
    selective_scan,
    selective_scan_reference,
    selective_state_update,
    split_causal_conv1d,
    ssd_chunked,
    ssd_sequential,
    ssd_state_update,
)

LOW = [torch.float16, torch.bfloat16]
# (loss relative, gradient relative norm) allowed against fp32
MODEL_TOLERANCE = {"fp16 autocast": (3e-5, 5e-3), "bf16 autocast": (3e-4, 3e-2), "bf16 model": (5e-4, 4e-2)}


def _loss_and_grads(mixer: str, seed: int, setting: str | None):
    torch.manual_seed(seed)
    config = HierMambaConfig(vocab_size=256, hidden_size=128, H_layers=1, L_layers=1, head_dim=32, mixer=mixer)
    model = HierMambaForCausalLM(config)
    ids = torch.randint(0, 256, (2, 256))
    if setting == "bf16 model":
        model = model.to(torch.bfloat16)
    if setting is not None and setting.endswith("autocast"):
        with torch.autocast("cpu", dtype=torch.float16 if setting.startswith("fp16") else torch.bfloat16):
            loss = model(input_ids=ids, labels=ids).loss
    else:
        loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    grads = torch.cat([p.grad.float().flatten() for p in model.parameters() if p.grad is not None])
    return loss.float(), grads


@pytest.mark.parametrize("mixer", ["mamba2", "mamba1"])
@pytest.mark.parametrize("setting", list(MODEL_TOLERANCE))
def test_model_loss_and_grads_finite_and_close_to_fp32(one_thread, mixer, setting):
    seed = 2  # fp16 autocast gave a NaN loss for this seed's model and batch when SSD's matmuls ran in fp16
    loss32, grads32 = _loss_and_grads(mixer, seed, None)
    loss, grads = _loss_and_grads(mixer, seed, setting)
    loss_tol, grad_tol = MODEL_TOLERANCE[setting]
    assert torch.isfinite(loss) and torch.isfinite(grads).all()
    assert abs(loss - loss32) / loss32 < loss_tol
    assert (grads - grads32).norm() / grads32.norm() < grad_tol


# --- ops ------------------------------------------------------------------------------------------------------------
def _low(t: torch.Tensor, dtype) -> torch.Tensor:
    return t.to(dtype).requires_grad_()


def _check(op, low_args: dict, dtype, out_dtypes, grad_tol: float = 0.0):
    """op under autocast on ``low_args`` == op outside autocast on the same values in fp32 (forward and gradients,
    gradients within ``grad_tol``); outputs in ``out_dtypes`` (the caller's dtype for outputs, fp32 for SSM
    states)."""
    with torch.autocast("cpu", dtype=dtype):
        ours = op(**low_args)
    fp32_args = {k: (v.detach().float().requires_grad_(v.requires_grad) if isinstance(v, torch.Tensor) else v)
                 for k, v in low_args.items()}
    reference = op(**fp32_args)
    tensors = [v for v in low_args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    tensors32 = [v for v in fp32_args.values() if isinstance(v, torch.Tensor) and v.requires_grad]
    for out, ref, expected in zip(ours, reference, out_dtypes):
        assert out.dtype == expected
        assert torch.isfinite(out).all()
        torch.testing.assert_close(out.float(), ref.to(expected).float(), rtol=0, atol=0)
    generator = torch.Generator().manual_seed(0)
    weights = [torch.randn(o.shape, generator=generator) for o in ours]
    grads = torch.autograd.grad(sum((o.float() * w).sum() for o, w in zip(ours, weights)), tensors)
    grads32 = torch.autograd.grad(sum((o.to(e).float() * w).sum() for o, w, e in zip(reference, weights, out_dtypes)),
                                  tensors32)
    for g, g32 in zip(grads, grads32):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.float(), g32.to(g.dtype).float(), rtol=grad_tol, atol=grad_tol)


def _ssd_inputs(dtype, length=96, steep=False):
    torch.manual_seed(3)
    b, h, p, g, n = 2, 4, 8, 2, 8
    shift = 4 if steep else 0
    return dict(x=_low(torch.randn(b, length, h, p), dtype), dt=_low(torch.randn(b, length, h) + shift, dtype),
                A=-torch.rand(h) * (20 if steep else 1) - 0.5, B=_low(torch.randn(b, length, g, n), dtype),
                C=_low(torch.randn(b, length, g, n), dtype), D=torch.randn(h), dt_bias=torch.randn(h),
                initial_state=torch.randn(b, h, p, n))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("chunk_size,steep", [(16, False), (16, True), (96, False), (96, True)])
def test_ssd_computes_in_fp32_under_autocast(one_thread, dtype, chunk_size, steep):
    inputs = _ssd_inputs(dtype, steep=steep)
    if steep:  # |dt A| reaches the hundreds: decays below exp(-87) within a step
        assert (torch.nn.functional.softplus(inputs["dt"].float() + inputs["dt_bias"]) * inputs["A"].abs()).max() > 100
    _check(lambda **kw: ssd_chunked(chunk_size=chunk_size, **kw), inputs, dtype, (dtype, torch.float32))


@pytest.mark.parametrize("dtype", LOW)
def test_ssd_reference_and_step_compute_in_fp32_under_autocast(one_thread, dtype):
    inputs = _ssd_inputs(dtype, length=5, steep=True)
    _check(ssd_sequential, inputs, dtype, (dtype, torch.float32))
    step = {k: (v[:, 0].detach().requires_grad_() if k in ("x", "dt", "B", "C") else v) for k, v in inputs.items()}
    step["state"] = step.pop("initial_state")
    _check(ssd_state_update, step, dtype, (dtype, torch.float32))


def _scan_inputs(dtype, length=80, steep=False):
    torch.manual_seed(4)
    b, d, n = 2, 6, 4
    shift = 4 if steep else 0
    return dict(u=_low(torch.randn(b, d, length), dtype), delta=_low(torch.randn(b, d, length) + shift, dtype),
                A=-torch.rand(d, n) * (50 if steep else 1) - 0.5, B=_low(torch.randn(b, n, length), dtype),
                C=_low(torch.randn(b, n, length), dtype), D=torch.randn(d), z=_low(torch.randn(b, d, length), dtype),
                delta_bias=torch.randn(d), initial_state=torch.randn(b, d, n))


@pytest.mark.parametrize("dtype", LOW)
@pytest.mark.parametrize("steep", [False, True])
@pytest.mark.parametrize("scan", [selective_scan, selective_scan_reference], ids=["blocked", "reference"])
def test_selective_scan_computes_in_fp32_under_autocast(one_thread, dtype, steep, scan):
    _check(scan, _scan_inputs(dtype, steep=steep), dtype, (dtype, torch.float32))


@pytest.mark.parametrize("dtype", LOW)
def test_selective_state_update_computes_in_fp32_under_autocast(one_thread, dtype):
    inputs = {k: (v[..., 0].detach().requires_grad_() if k in ("u", "delta", "B", "C", "z") else v)
              for k, v in _scan_inputs(dtype, length=1, steep=True).items()}
    inputs["state"] = inputs.pop("initial_state")
    _check(selective_state_update, inputs, dtype, (dtype, torch.float32))


@pytest.mark.parametrize("dtype", LOW)
def test_convs_compute_in_fp32_and_return_the_callers_dtype(one_thread, dtype):
    torch.manual_seed(5)
    x, state = _low(torch.randn(2, 16, 40), dtype), _low(torch.randn(2, 16, 3), dtype)
    weight, bias = torch.randn(16, 4).requires_grad_(), torch.randn(16).requires_grad_()  # fp32 parameters
    for conv in (causal_conv1d, causal_conv1d_reference):
        _check(conv, dict(x=x, weight=weight, bias=bias, initial_state=state), dtype, (dtype, dtype))
    _check(causal_conv1d_step, dict(x=_low(torch.randn(2, 16), dtype), state=state, weight=weight, bias=bias),
           dtype, (dtype, dtype))


@pytest.mark.parametrize("dtype", LOW)
def test_split_conv_computes_in_fp32_and_returns_the_callers_dtype(one_thread, dtype):
    torch.manual_seed(6)
    projected = _low(torch.randn(2, 40, 8 + 16 + 4), dtype)
    weight, bias = torch.randn(16, 4).requires_grad_(), torch.randn(16).requires_grad_()

    def op(projected, weight, bias):
        head, parts, tail, state = split_causal_conv1d(projected, 8, [8, 4, 4], weight, bias)
        return (head, *parts, tail, state)

    # fp32 projections take the fused node, fp16 / bf16 ones split + conv: the weight gradient sums in another order
    _check(op, dict(projected=projected, weight=weight, bias=bias), dtype, (dtype,) * 6, grad_tol=1e-5)


@pytest.mark.parametrize("dtype", LOW)
def test_gated_rmsnorm_computes_in_fp32_and_returns_the_callers_dtype(one_thread, dtype):
    torch.manual_seed(7)
    norm = RMSNorm(32, group_size=16)
    with torch.no_grad():
        norm.weight.normal_()
    _check(lambda x, gate: (norm(x, gate),), dict(x=_low(torch.randn(2, 5, 32) * 300, dtype),
                                                  gate=_low(torch.randn(2, 5, 32), dtype)), dtype, (dtype,))
