"""The CUDA C++ entry points' contracts, checked on CPU: hier_mamba's adapters call the real Python
wrappers of causal-conv1d (``causal_conv1d_fn``, ``causal_conv1d_update``) and mamba-ssm
(``selective_scan_fn``), which call stand-ins for the compiled functions.

Each stand-in takes the compiled function's exact positional arguments (as the installed wrappers
pass them), enforces the C++ input checks transcribed below (dtypes, shapes, layouts), and computes
its outputs with hier_mamba's torch ops in the layout the wrapper unpacks. So a test here fails when
an adapter passes a wrong name, dtype or layout, when a wrapper's signature changes, or when a
release calls its compiled function differently. Transcribed from causal-conv1d 1.7.0
(csrc/causal_conv1d.cpp) and mamba-ssm 2.3.2.post1 (csrc/selective_scan/selective_scan.cpp);
re-read those files when the pinned versions move (the report names the installed ones). ``is_cuda``
becomes "on the input's device". Backward passes are not covered (they need the kernels).

Run in a child process (this file is its own worker: ``python tests/test_kernel_signatures.py``)
so that the stand-ins never reach the test session. Marker: ``kernel_signatures``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import traceback
import types
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from helpers import KERNEL_PACKAGES_MISSING

FLOATS = (torch.float32, torch.float16, torch.bfloat16)
CHECKS = ["conv", "conv_fallback", "conv_step", "selective_scan", "selective_scan_initial_state",
          "mamba1_mixer", "mamba2_mixer"]
missing = KERNEL_PACKAGES_MISSING  # tests/helpers.py
pytestmark = [
    pytest.mark.kernel_signatures,
    pytest.mark.skipif(bool(missing), reason=f"needs {', '.join(missing)} (pure-Python install: docs/gpu.md)"),
]


# the tests (parent process) ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def report() -> dict:
    process = subprocess.run([sys.executable, __file__], capture_output=True, text=True, timeout=600)
    assert process.returncode == 0, process.stderr[-5000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", CHECKS)
def test_adapter_call_satisfies_the_compiled_function(report, name):
    result = report["checks"][name]
    assert "error" not in result, result.get("error")
    assert result["err"] < 1e-5, result  # fp32: the same torch ops on both sides, up to the layout
    assert result.get("err_bf16", 0.0) < 2e-2, result  # bf16: the stand-in computes in fp32, torch in bf16
    assert result["calls"] == result["expected_calls"], result  # the stand-ins ran (or were bypassed) as meant


def test_stand_ins_stay_in_the_child(report):
    assert report["fake_modules"] == ["causal_conv1d_cuda", "selective_scan_cuda"]
    for name in ("selective_scan_cuda", "causal_conv1d_cuda"):
        module = sys.modules.get(name)
        assert module is None or not isinstance(module, FakeExtension)


# the worker (child process) ---------------------------------------------------------------------
def check(condition: bool, message: str) -> None:
    if not condition:
        raise RuntimeError(f"TORCH_CHECK failed: {message}")


class FakeExtension(types.ModuleType):
    """A compiled extension's stand-in that counts its calls."""

    def __init__(self, name: str):
        super().__init__(name)
        self.calls: dict[str, int] = {}

    def count(self, entry: str) -> None:
        self.calls[entry] = self.calls.get(entry, 0) + 1


class FakeCausalConv1dCuda(FakeExtension):
    def causal_conv1d_fwd(self, x, weight, bias, seq_idx, initial_states, out, final_states_out, silu_activation):
        self.count("causal_conv1d_fwd")
        check(x.dtype in FLOATS and weight.dtype in FLOATS, "x, weight: fp32/fp16/bf16")
        batch, dim, seqlen = x.shape
        width = weight.shape[-1]
        check(tuple(weight.shape) == (dim, width), "weight must have shape (dim, width)")
        check(x.stride(2) == 1 or x.stride(1) == 1, "x.stride(2) == 1 || x.stride(1) == 1")
        channel_last = x.stride(1) == 1 and x.stride(2) > 1
        if channel_last:
            check(dim % 8 == 0, "causal_conv1d only supports channel dimension divisible by 8 for now")
            check(x.stride(2) % 8 == 0 and x.stride(0) % 8 == 0, "channel last: x.stride(0), x.stride(2) % 8 == 0")
        check(2 <= width <= 4, "causal_conv1d only supports width between 2 and 4")
        if bias is not None:
            check(bias.dtype == weight.dtype and bias.stride(-1) == 1 and tuple(bias.shape) == (dim,), "bias")
        check(seq_idx is None or (channel_last and seq_idx.dtype == torch.int32), "seq_idx")
        for name, states in (("initial_states", initial_states), ("final_states", final_states_out)):
            if states is not None:
                check(channel_last, f"{name} is only supported for channel last layout")
                check(states.dtype == x.dtype and tuple(states.shape) == (batch, dim, width - 1)
                      and states.stride(1) == 1, f"{name}: x's dtype, shape (batch, dim, width - 1), stride(1) == 1")
        from hier_mamba.ops import causal_conv1d
        y, final = causal_conv1d(x.float(), weight.float(), None if bias is None else bias.float(),
                                 None if initial_states is None else initial_states.float(),
                                 "silu" if silu_activation else None)
        out.copy_(y)
        if final_states_out is not None:
            final_states_out.copy_(final)

    def causal_conv1d_bwd(self, x, weight, bias, dout, seq_idx, initial_states, dfinal_states, dx, dweight, dbias,
                          dinitial_states, silu_activation):
        """Gradients of causal_conv1d_fwd in fp32, written into the outputs (by hand: a custom op runs below
        autograd). pre_t = sum_k w_k x_{t + k - (w - 1)} + bias; y = silu(pre)."""
        self.count("causal_conv1d_bwd")
        check(dout.dtype == x.dtype and tuple(dout.shape) == tuple(x.shape), "dout: x's dtype and shape")
        check(dweight.dtype == torch.float32 and (dbias is None or dbias.dtype == torch.float32), "dweight, dbias fp32")
        check(seq_idx is None and initial_states is None and dfinal_states is None, "stand-in: no states, no seq_idx")
        width, length = weight.shape[-1], x.shape[-1]
        padded, w = F.pad(x.float(), (width - 1, 0)), weight.float()  # (b, d, w - 1 + l)
        pre = sum(w[:, k, None] * padded[:, :, k:k + length] for k in range(width))
        if bias is not None:
            pre = pre + bias.float()[:, None]
        g = dout.float()
        if silu_activation:
            sigmoid = torch.sigmoid(pre)
            g = g * sigmoid * (1 + pre * (1 - sigmoid))
        grad_padded = torch.zeros_like(padded)
        for k in range(width):
            grad_padded[:, :, k:k + length] += g * w[:, k, None]
            dweight[:, k] = (g * padded[:, :, k:k + length]).sum((0, 2))
        dx.copy_(grad_padded[:, :, width - 1:])
        if dbias is not None:
            dbias.copy_(g.sum((0, 2)))

    def causal_conv1d_update(self, x, conv_state, weight, bias, out, silu_activation, cache_seqlens,
                             conv_state_indices):
        self.count("causal_conv1d_update")
        check(x.dtype in FLOATS and weight.dtype in FLOATS, "x, weight: fp32/fp16/bf16")
        check(conv_state.dtype == x.dtype, "conv_state.scalar_type() == input_type")
        batch, dim, seqlen = x.shape
        width, state_len = weight.shape[-1], conv_state.shape[2]
        check(state_len >= width - 1, "conv_state_len >= width - 1")
        check(tuple(weight.shape) == (dim, width) and 2 <= width <= 4, "weight (dim, width), width in [2, 4]")
        if bias is not None:
            check(bias.dtype == weight.dtype and bias.stride(-1) == 1 and tuple(bias.shape) == (dim,), "bias")
        check(cache_seqlens is None and conv_state_indices is None, "stand-in: no circular buffer / indices")
        check(tuple(conv_state.shape) == (batch, dim, state_len), "conv_state (batch, dim, state_len)")
        window = torch.cat([conv_state, x], dim=-1).float()  # (b, d, state_len + seqlen)
        conv_state.copy_(window[:, :, -state_len:])
        y = F.conv1d(window, weight.float().unsqueeze(1), None if bias is None else bias.float(), groups=dim)
        out.copy_((F.silu(y) if silu_activation else y)[:, :, -seqlen:])


class FakeSelectiveScanCuda(FakeExtension):
    def fwd(self, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
        self.count("fwd")
        check(u.dtype in FLOATS and A.dtype in (torch.float32, torch.complex64), "u: fp32/fp16/bf16; A: fp32/complex64")
        variable_B, variable_C = B.dim() >= 3, C.dim() >= 3
        check(delta.dtype == u.dtype, "delta.scalar_type() == input_type")
        check(B.dtype == (u.dtype if variable_B else A.dtype) and C.dtype == (u.dtype if variable_C else A.dtype),
              "B, C: input type when variable, else weight type")
        check(u.stride(-1) == 1 and delta.stride(-1) == 1, "u, delta: stride(-1) == 1")
        batch, dim, seqlen = u.shape
        dstate = A.shape[1]
        groups = B.shape[1] if variable_B else 1
        check(dstate <= 256, "selective_scan only supports state dimension <= 256")
        check(tuple(delta.shape) == (batch, dim, seqlen) and tuple(A.shape) == (dim, dstate), "delta, A shapes")
        check(variable_B and variable_C, "stand-in: variable B and C only")
        for name, t in (("B", B), ("C", C)):
            check(tuple(t.shape) == (batch, groups, dstate, seqlen) and t.stride(-1) == 1,
                  f"{name} must have shape (batch, n_groups, dstate, seqlen), stride(-1) == 1")
        for name, t in (("D", D), ("delta_bias", delta_bias)):
            if t is not None:
                check(t.dtype == torch.float32 and t.stride(-1) == 1 and tuple(t.shape) == (dim,),
                      f"{name}: fp32, shape (dim,)")
        if z is not None:
            check(z.dtype == u.dtype and z.stride(-1) == 1 and tuple(z.shape) == (batch, dim, seqlen), "z")
        check(groups == 1, "stand-in: n_groups == 1")
        from hier_mamba.ops import selective_scan
        y, state = selective_scan(u, delta, A, B[:, 0], C[:, 0], D, None, delta_bias, delta_softplus)
        x = torch.zeros(batch, dim, -(-seqlen // 2048), 2 * dstate, dtype=A.dtype)  # the wrapper reads x[:, :, -1, 1::2]
        x[:, :, -1, 1::2] = state
        out = y.to(delta.dtype)
        if z is None:
            return [out, x]
        return [out, x, (y.float() * F.silu(z.float())).to(z.dtype)]


def compare(adapter_out, reference_out) -> float:
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12)).item()
               for a, b in zip(adapter_out, reference_out))


def adapter_ops():
    """The cuda Ops bundle with the Triton ops swapped for torch (no interpreter in this process)."""
    from hier_mamba.ops import TORCH_OPS, Ops, cuda_kernels

    return Ops("adapters", cuda_kernels.conv, cuda_kernels.conv_step, cuda_kernels.selective_scan,
               TORCH_OPS.selective_state_update, TORCH_OPS.ssd, TORCH_OPS.ssd_state_update)


def run_checks(fakes: dict) -> dict:
    from hier_mamba import HierMambaConfig, mixers
    from hier_mamba.ops import causal_conv1d, causal_conv1d_step, cuda_kernels, selective_scan

    torch.manual_seed(0)
    b, d, l, n = 2, 16, 9, 4
    weight, bias = torch.randn(d, 4), torch.randn(d)
    x = torch.randn(b, l, d).transpose(1, 2)  # (b, d, l) channel-last view, as the mixers pass it
    state = torch.randn(b, d, 3)
    u, delta, z = (torch.randn(b, l, d).transpose(1, 2) for _ in range(3))
    A, B, C = -torch.rand(d, n) - 0.5, torch.randn(b, n, l), torch.randn(b, n, l)
    D, delta_bias = torch.randn(d), torch.randn(d)

    def conv_check():
        out = []
        for dtype in (torch.float32, torch.bfloat16):
            xs = x.to(dtype)
            for initial in (None, state):  # fp32 state with a bf16 input: the adapter converts
                out.append(compare(cuda_kernels.conv(xs, weight.to(dtype), bias.to(dtype), initial),
                                   causal_conv1d(xs, weight.to(dtype), bias.to(dtype), initial)))
        return dict(err=max(out[:2]), err_bf16=max(out[2:]), calls=fakes["causal_conv1d_cuda"].calls.copy(),
                    expected_calls={"causal_conv1d_fwd": 4})

    def conv_fallback_check():
        x12 = torch.randn(b, 12, l)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            err = compare(cuda_kernels.conv(x12, weight[:12], bias[:12], state[:, :12]),
                          causal_conv1d(x12, weight[:12], bias[:12], state[:, :12]))
        warned = any("divisible by 8" in str(w.message) for w in caught)
        return dict(err=err if warned else float("inf"), warned=warned,
                    calls=fakes["causal_conv1d_cuda"].calls.copy(), expected_calls={})

    def conv_step_check():
        step_in = torch.randn(b, d)
        return dict(err=compare(cuda_kernels.conv_step(step_in, state, weight, bias),
                                causal_conv1d_step(step_in, state, weight, bias)),
                    calls=fakes["causal_conv1d_cuda"].calls.copy(), expected_calls={"causal_conv1d_update": 1})

    def scan_check():
        errs = [compare(cuda_kernels.selective_scan(u, delta, A, B, C, D, z, delta_bias),
                        selective_scan(u, delta, A, B, C, D, z, delta_bias)),
                compare(cuda_kernels.selective_scan(u, delta, A, B, C), selective_scan(u, delta, A, B, C))]
        return dict(err=max(errs), calls=fakes["selective_scan_cuda"].calls.copy(), expected_calls={"fwd": 2})

    def scan_initial_state_check():  # the kernel starts from zeros: it runs, the initial state's part is added in torch
        initial = torch.randn(b, d, n)
        errs = [compare(cuda_kernels.selective_scan(u, delta, A, B, C, D, gate, delta_bias, initial_state=initial),
                        selective_scan(u, delta, A, B, C, D, gate, delta_bias, initial_state=initial))
                for gate in (z, None)]
        return dict(err=max(errs), calls=fakes["selective_scan_cuda"].calls.copy(), expected_calls={"fwd": 2})

    def mixer_check(kind: str, expected: dict):
        config = dict(hidden_size=32, mixer=kind, state_size=8, head_dim=16, chunk_size=8)
        ref = mixers.MIXER_CLASSES[kind](HierMambaConfig(ssm_backend="torch", **config))
        hidden, token = torch.randn(2, 11, 32), torch.randn(2, 32)
        original = mixers.get_ops
        mixers.get_ops = lambda requested, device: adapter_ops()
        try:
            with torch.no_grad():
                y, s = ref(hidden)
                step, _ = ref.step(token, s)
        finally:
            mixers.get_ops = original
        with torch.no_grad():
            y_ref, s_ref = ref(hidden)
            step_ref, _ = ref.step(token, s_ref)
        calls = {name: dict(fake.calls) for name, fake in fakes.items() if fake.calls}
        return dict(err=compare([y, s.ssm, s.conv, step], [y_ref, s_ref.ssm, s_ref.conv, step_ref]), calls=calls,
                    expected_calls=expected)

    checks = {
        "conv": conv_check, "conv_fallback": conv_fallback_check, "conv_step": conv_step_check,
        "selective_scan": scan_check, "selective_scan_initial_state": scan_initial_state_check,
        "mamba1_mixer": lambda: mixer_check("mamba1", {"causal_conv1d_cuda": {"causal_conv1d_fwd": 1, "causal_conv1d_update": 1},
                                                       "selective_scan_cuda": {"fwd": 1}}),
        "mamba2_mixer": lambda: mixer_check("mamba2", {"causal_conv1d_cuda": {"causal_conv1d_fwd": 1, "causal_conv1d_update": 1}}),
    }
    results = {}
    for name, fn in checks.items():
        for fake in fakes.values():
            fake.calls.clear()
        try:
            results[name] = fn()
        except Exception:
            results[name] = dict(error=traceback.format_exc(limit=-4))
    return results


def worker() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    fakes = {"causal_conv1d_cuda": FakeCausalConv1dCuda("causal_conv1d_cuda"),
             "selective_scan_cuda": FakeSelectiveScanCuda("selective_scan_cuda")}
    sys.modules.update(fakes)
    import causal_conv1d
    import mamba_ssm

    report = dict(causal_conv1d=causal_conv1d.__version__, mamba_ssm=mamba_ssm.__version__,
                  fake_modules=sorted(fakes), checks=run_checks(fakes))
    print(json.dumps(report))


if __name__ == "__main__":
    worker()
