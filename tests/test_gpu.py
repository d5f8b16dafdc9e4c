"""CUDA kernels (mamba_ssm, causal_conv1d) vs the torch ops: forward, backward and step, fp32 and bf16.

Skipped unless a CUDA device and the compiled kernels are present. Tolerances: in fp32 the Triton
SSD kernels multiply in TF32 (tl.dot's default; 10 mantissa bits): on an H200 the chunk scan and a
Mamba2 mixer differed from the torch ops by up to 2e-3 of the largest output (tests/triton_checks.py
--device cuda, docs/gpu.md) -> 1e-2; bf16 inputs carry 8 mantissa bits and the error compounds over
the chunked scan (measured: up to 7e-3) -> 5e-2.
"""

import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForCausalLM
from hier_mamba.mixers import Mamba1Mixer, Mamba2Mixer
from hier_mamba.ops import cuda_kernels_error

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available() or cuda_kernels_error() is not None,
                       reason="needs a CUDA device and the mamba-ssm / causal-conv1d kernels"),
]

TOLERANCE = {torch.float32: dict(rtol=1e-2, atol=1e-2), torch.bfloat16: dict(rtol=5e-2, atol=5e-2)}


def pair(mixer_class, mixer: str, dtype):
    """The same mixer weights on the torch and the cuda backend."""
    config = dict(vocab_size=64, hidden_size=128, mixer=mixer, state_size=16, head_dim=32, chunk_size=64)
    torch.manual_seed(0)
    ref = mixer_class(HierMambaConfig(ssm_backend="torch", **config)).cuda()
    fast = mixer_class(HierMambaConfig(ssm_backend="cuda", **config)).cuda()
    fast.load_state_dict(ref.state_dict())
    return ref.to(dtype), fast.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("mixer_class,mixer", [(Mamba1Mixer, "mamba1"), (Mamba2Mixer, "mamba2")])
def test_kernels_match_torch_forward_backward_step(mixer_class, mixer, dtype):
    ref, fast = pair(mixer_class, mixer, dtype)
    x = torch.randn(2, 200, 128, device="cuda", dtype=dtype, requires_grad=True)
    y_ref, state_ref = ref(x)
    y_fast, state_fast = fast(x)
    torch.testing.assert_close(y_fast.float(), y_ref.float(), **TOLERANCE[dtype])
    torch.testing.assert_close(state_fast.ssm, state_ref.ssm, **TOLERANCE[dtype])
    grad = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad(y_ref, [x, *ref.parameters()], grad)
    g_fast = torch.autograd.grad(y_fast, [x, *fast.parameters()], grad)
    for a, b in zip(g_fast, g_ref):
        torch.testing.assert_close(a.float(), b.float(), **TOLERANCE[dtype])
    with torch.no_grad():
        token = torch.randn(2, 128, device="cuda", dtype=dtype)
        step_ref, _ = ref.step(token, state_ref)
        step_fast, _ = fast.step(token, state_fast)
        # continuing from an initial state (prefill after a cache)
        cont_ref, _ = ref(x[:, :50].detach(), state_ref)
        cont_fast, _ = fast(x[:, :50].detach(), state_fast)
    torch.testing.assert_close(step_fast.float(), step_ref.float(), **TOLERANCE[dtype])
    torch.testing.assert_close(cont_fast.float(), cont_ref.float(), **TOLERANCE[dtype])


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_whole_model_kernels_match_torch_and_generate_equal(mixer):
    config = dict(vocab_size=64, hidden_size=128, mixer=mixer, state_size=16, head_dim=32, H_layers=2, L_layers=2)
    torch.manual_seed(0)
    ref = HierMambaForCausalLM(HierMambaConfig(ssm_backend="torch", **config)).cuda().eval()
    fast = HierMambaForCausalLM(HierMambaConfig(ssm_backend="cuda", **config)).cuda().eval()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 64, (2, 100), device="cuda")
    with torch.no_grad():
        torch.testing.assert_close(fast(ids).logits, ref(ids).logits, **TOLERANCE[torch.float32])
    a = ref.generate(ids[:, :20], max_new_tokens=30, do_sample=False, pad_token_id=0)
    b = fast.generate(ids[:, :20], max_new_tokens=30, do_sample=False, pad_token_id=0)
    assert torch.equal(a, b)


def _counting(monkeypatch, name: str) -> list:
    """Count calls of cuda_kernels.<name> (the kernels' Ops bundle is resolved again, so it binds the counter)."""
    from hier_mamba.ops import backend, cuda_kernels

    calls, original = [], getattr(cuda_kernels, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(cuda_kernels, name, counted)
    backend.clear_resolutions()
    return calls


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba2_trains_through_the_fused_op_and_norms_on_triton_in_bf16(monkeypatch, dtype):
    fused, norms = _counting(monkeypatch, "mamba2_split_conv_scan"), _counting(monkeypatch, "gated_rmsnorm")
    ref, fast = pair(Mamba2Mixer, "mamba2", dtype)
    x = torch.randn(2, 200, 128, device="cuda", dtype=dtype, requires_grad=True)
    y_fast, state_fast = fast(x)
    assert len(fused) == 1  # from zero states, no mask: the whole mixer in one op
    y_ref, state_ref = ref(x)
    torch.testing.assert_close(state_fast.conv, state_ref.conv, **TOLERANCE[dtype])
    with torch.no_grad():
        fast.step(torch.randn(2, 128, device="cuda", dtype=dtype), state_fast)
    assert len(norms) == (1 if dtype == torch.bfloat16 else 0)  # the Triton norm for bf16 / fp16 only
    monkeypatch.undo()
    from hier_mamba.ops import backend

    backend.clear_resolutions()


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_autocast_training_on_the_kernels_is_finite_and_close_to_fp32(mixer, dtype):
    config = dict(vocab_size=256, hidden_size=128, mixer=mixer, head_dim=32, H_layers=1, L_layers=1)
    torch.manual_seed(2)
    model = HierMambaForCausalLM(HierMambaConfig(ssm_backend="cuda", **config)).cuda()
    ids = torch.randint(0, 256, (2, 256), device="cuda")
    loss32 = model(ids, labels=ids).loss
    grads32 = torch.autograd.grad(loss32, list(model.parameters()), allow_unused=True)
    with torch.autocast("cuda", dtype=dtype):
        loss = model(ids, labels=ids).loss
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    assert torch.isfinite(loss) and abs(loss.item() - loss32.item()) < 1e-2 * loss32.item()
    flat = torch.cat([g.float().flatten() for g in grads if g is not None])
    flat32 = torch.cat([g.float().flatten() for g in grads32 if g is not None])
    assert torch.isfinite(flat).all() and (flat - flat32).norm() < 0.1 * flat32.norm()
