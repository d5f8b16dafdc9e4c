"""mamba-ssm's Triton kernels, through hier_mamba's adapters, against hier_mamba's torch ops.

Runs in a process of its own, because its setup installs stand-ins that must not leak into a test
session (tests/test_triton_interpret.py starts it and asserts on what it prints):

    TRITON_INTERPRET=1 MAMBA_DETERMINISTIC=1 python tests/triton_checks.py --device cpu     # any machine
    python tests/triton_checks.py --device cuda --dtypes float32 bfloat16                  # on a GPU

Prints one JSON object: {"checks": {name: {"err": max relative error, ...} | {"error": traceback}}, ...}.
A relative error is max |kernel - torch| / max |torch| over a tensor, the worst over the tensors a
check compares (outputs, states, gradients); ``same_tokens`` says whether greedy generation agreed.

Setup (measured facts: ../shared/gpu-without-gpu.md, docs/gpu.md):
- the compiled extensions ``selective_scan_cuda`` / ``causal_conv1d_cuda`` are replaced by empty
  modules when they do not import, so that ``import mamba_ssm`` succeeds; only Triton kernels run;
- on CPU, Triton's interpreter (TRITON_INTERPRET=1, set by the caller before triton is imported)
  runs the kernels with numpy; ``torch.cuda.device`` and ``torch.cuda.get_device_properties`` get
  CPU stand-ins; MAMBA_DETERMINISTIC=1 keeps one autotune config. The interpreter gets bf16 wrong
  (it multiplies bf16 bit patterns as integers in tl.dot), so CPU runs check fp32 only.
- the mixer and model checks run the Triton kernels for the SSD scan and the state updates and the
  torch ops for the conv and the Mamba1 scan (CUDA C++ kernels, tests/test_kernel_signatures.py).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import json
import os
import sys
import traceback
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

COMPILED_EXTENSIONS = ("selective_scan_cuda", "causal_conv1d_cuda")


def setup(device: str) -> list[str]:
    """Stand-ins for what a CPU process lacks; returns the names of the stubbed compiled extensions. causal_conv1d's
    stand-in computes with the torch conv (tests/test_kernel_signatures.py), so mamba_ssm's fused Mamba2 op, whose
    conv is causal_conv1d's, runs its Triton parts here."""
    stubbed = [name for name in COMPILED_EXTENSIONS if importlib.util.find_spec(name) is None]
    for name in stubbed:
        sys.modules[name] = types.ModuleType(name)
    if "causal_conv1d_cuda" in stubbed:
        from test_kernel_signatures import FakeCausalConv1dCuda  # tests/, beside this file

        sys.modules["causal_conv1d_cuda"] = FakeCausalConv1dCuda("causal_conv1d_cuda")
    if device == "cpu":
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--device cpu needs TRITON_INTERPRET=1 in the environment before triton is imported")
        torch.cuda.device = lambda index=None: contextlib.nullcontext()  # CPU tensors have no device index
        torch.cuda.get_device_properties = lambda *_: types.SimpleNamespace(multi_processor_count=os.cpu_count())
    return stubbed


def rel_err(ours: torch.Tensor, reference: torch.Tensor) -> float:
    reference = reference.detach().float()
    return ((ours.detach().float() - reference).abs().max() / reference.abs().max().clamp_min(1e-12)).item()


def worst(pairs) -> float:
    return max(rel_err(a, b) for a, b in pairs)


def grads(outputs, inputs, seed: int = 0):
    """Gradients of a fixed random projection of the outputs (the same projection for both sides)."""
    generator = torch.Generator().manual_seed(seed)
    loss = sum((o.float() * torch.randn(o.shape, generator=generator).to(o.device)).sum() for o in outputs)
    return torch.autograd.grad(loss, inputs)


# the ops ---------------------------------------------------------------------------------------
def check_chunk_scan(device, dtype) -> dict:
    """SSD chunk scan: length 100 (not a multiple of the chunk), 4 heads in 2 groups, D, dt_bias,
    initial and final states, dt_limit; forward and backward against ops.ssd.ssd_chunked."""
    from hier_mamba.ops import cuda_kernels, ssd_chunked

    torch.manual_seed(0)
    b, l, h, p, g, n = 2, 100, 4, 16, 2, 16
    inputs = dict(x=torch.randn(b, l, h, p), dt=torch.randn(b, l, h), B=torch.randn(b, l, g, n),
                  C=torch.randn(b, l, g, n), D=torch.randn(h), dt_bias=torch.randn(h) - 2,
                  initial_state=torch.randn(b, h, p, n))
    inputs = {k: v.to(device, dtype if k in ("x", "dt", "B", "C") else torch.float32).requires_grad_()
              for k, v in inputs.items()}
    A = (-torch.rand(h) - 0.5).to(device).requires_grad_()
    result = {}
    for chunk, limit in [(32, (0.0, float("inf"))), (64, (0.01, 0.5))]:
        runs = [op(inputs["x"], inputs["dt"], A, inputs["B"], inputs["C"], chunk, D=inputs["D"],
                   dt_bias=inputs["dt_bias"], dt_softplus=True, dt_limit=limit,
                   initial_state=inputs["initial_state"]) for op in (cuda_kernels.ssd, ssd_chunked)]
        tensors = [*inputs.values(), A]
        (y, state), (y_ref, state_ref) = runs
        key = f"chunk{chunk}" + ("_limit" if limit[1] != float("inf") else "")
        result[key + "_fwd"] = worst([(y, y_ref), (state, state_ref)])
        result[key + "_bwd"] = worst(zip(grads([y, state], tensors), grads([y_ref, state_ref], tensors)))
    with torch.no_grad():  # no initial state, no D, no dt_bias
        y, state = cuda_kernels.ssd(inputs["x"], inputs["dt"], A, inputs["B"], inputs["C"], 32)
        y_ref, state_ref = ssd_chunked(inputs["x"], inputs["dt"], A, inputs["B"], inputs["C"], 32)
    result["bare_fwd"] = worst([(y, y_ref), (state, state_ref)])
    return dict(err=max(result.values()), **result)


def check_ssd_state_update(device, dtype) -> dict:
    """Mamba2 step (tied-head layout) against ops.ssd.ssd_state_update, with and without dt_limit, D, dt_bias."""
    from hier_mamba.ops import cuda_kernels, ssd_state_update

    torch.manual_seed(1)
    b, h, p, g, n = 3, 4, 16, 2, 16
    state, x = torch.randn(b, h, p, n, device=device), torch.randn(b, h, p, device=device, dtype=dtype)
    dt, A = torch.randn(b, h, device=device, dtype=dtype), -torch.rand(h, device=device) - 0.5
    B, C = (torch.randn(b, g, n, device=device, dtype=dtype) for _ in range(2))
    D, dt_bias = torch.randn(h, device=device), torch.randn(h, device=device) - 2
    result = {}
    for name, kwargs in [("full", dict(D=D, dt_bias=dt_bias)), ("limit", dict(D=D, dt_bias=dt_bias, dt_limit=(0.01, 0.2))),
                         ("no_D_no_bias", {}), ("no_D_no_bias_limit", dict(dt_limit=(0.01, 0.2)))]:
        y, new = cuda_kernels.ssd_state_update(state, x, dt, A, B, C, **kwargs)
        y_ref, new_ref = ssd_state_update(state, x, dt, A, B, C, **kwargs)
        result[name] = worst([(y, y_ref), (new, new_ref)])
    return dict(err=max(result.values()), **result)


def check_selective_state_update(device, dtype) -> dict:
    """Mamba1 step against ops.selective_scan.selective_state_update, with and without D, z, delta_bias."""
    from hier_mamba.ops import cuda_kernels, selective_state_update

    torch.manual_seed(2)
    b, d, n = 3, 24, 16
    state = torch.randn(b, d, n, device=device)
    u, delta, z = (torch.randn(b, d, device=device, dtype=dtype) for _ in range(3))
    A = -torch.rand(d, n, device=device) - 0.5
    B, C = (torch.randn(b, n, device=device, dtype=dtype) for _ in range(2))
    D, bias = torch.randn(d, device=device), torch.randn(d, device=device) - 2
    result = {}
    for name, kwargs in [("full", dict(D=D, z=z, delta_bias=bias)), ("bare", {})]:
        y, new = cuda_kernels.selective_state_update(state, u, delta, A, B, C, **kwargs)
        y_ref, new_ref = selective_state_update(state, u, delta, A, B, C, **kwargs)
        result[name] = worst([(y, y_ref), (new, new_ref)])
    return dict(err=max(result.values()), **result)


def check_gated_rmsnorm(device, dtype) -> dict:
    """mamba_ssm's rmsnorm_fn (grouped, gate before the norm) against hier_mamba.norms.RMSNorm, fwd and bwd."""
    from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn

    from hier_mamba.norms import RMSNorm

    torch.manual_seed(3)
    norm = RMSNorm(64, eps=1e-5, group_size=32).to(device)
    with torch.no_grad():
        norm.weight.normal_()
    x, gate = (torch.randn(2, 7, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    y = rmsnorm_fn(x, norm.weight.to(dtype), None, z=gate, eps=norm.eps, group_size=32, norm_before_gate=False)
    y_ref = norm(x, gate)
    tensors = [x, gate]
    return dict(err=max(rel_err(y, y_ref), worst(zip(grads([y], tensors), grads([y_ref], tensors)))),
                fwd=rel_err(y, y_ref))


# a mixer and a model on the Triton kernels ---------------------------------------------------------
def triton_ops():
    """The cuda Ops bundle with the torch conv and Mamba1 scan (their kernels are CUDA C++)."""
    from hier_mamba.ops import TORCH_OPS, Ops, cuda_kernels

    return Ops("triton", TORCH_OPS.conv, TORCH_OPS.conv_step, TORCH_OPS.selective_scan,
               cuda_kernels.selective_state_update, cuda_kernels.ssd, cuda_kernels.ssd_state_update)


@contextlib.contextmanager
def triton_backend(ops=None):
    """Inside: mixers with ssm_backend='cuda' use ``ops`` (default :func:`triton_ops`) on any device."""
    from hier_mamba import mixers

    ops = ops or triton_ops()
    original = mixers.get_ops
    mixers.get_ops = lambda requested, device: ops if requested == "cuda" else original(requested, device)
    try:
        yield
    finally:
        mixers.get_ops = original


def check_mamba2_mixer(device, dtype) -> dict:
    """Mamba2Mixer (2 groups, time_step_limit) forward + backward, a step, and a continuation, vs torch."""
    from hier_mamba import HierMambaConfig
    from hier_mamba.mixers import Mamba2Mixer

    config = dict(hidden_size=64, mixer="mamba2", state_size=16, head_dim=32, n_groups=2, chunk_size=16,
                  time_step_limit=(0.001, 0.2))
    torch.manual_seed(4)
    ref = Mamba2Mixer(HierMambaConfig(ssm_backend="torch", **config)).to(device, dtype)
    fast = Mamba2Mixer(HierMambaConfig(ssm_backend="cuda", **config)).to(device, dtype)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(2, 40, 64, device=device, dtype=dtype, requires_grad=True)
    token = torch.randn(2, 64, device=device, dtype=dtype)
    with triton_backend():
        y, state = fast(x)
        g = grads([y], [x, *fast.parameters()])
        with torch.no_grad():
            step, _ = fast.step(token, state)
            cont, _ = fast(x[:, :17], state)
    y_ref, state_ref = ref(x)
    g_ref = grads([y_ref], [x, *ref.parameters()])
    with torch.no_grad():
        step_ref, _ = ref.step(token, state_ref)
        cont_ref, _ = ref(x[:, :17], state_ref)
    result = dict(fwd=worst([(y, y_ref), (state.ssm, state_ref.ssm)]), bwd=worst(zip(g, g_ref)),
                  step=rel_err(step, step_ref), continuation=rel_err(cont, cont_ref))
    return dict(err=max(result.values()), **result)


def check_mamba2_fused(device, dtype) -> dict:
    """Mamba2Mixer through mamba_ssm's whole-mixer op (split + conv + SSD + gated RMSNorm, from zero states; the
    conv on causal_conv1d's stand-in on CPU), forward + backward, final conv and SSM states, vs the torch mixer;
    and the gated-RMSNorm adapter alone."""
    from hier_mamba import HierMambaConfig
    from hier_mamba.mixers import Mamba2Mixer
    from hier_mamba.ops import cuda_kernels

    config = dict(hidden_size=64, mixer="mamba2", state_size=16, head_dim=32, n_groups=2, chunk_size=16,
                  time_step_limit=(0.001, 0.2))
    torch.manual_seed(6)
    ref = Mamba2Mixer(HierMambaConfig(ssm_backend="torch", **config)).to(device, dtype)
    fast = Mamba2Mixer(HierMambaConfig(ssm_backend="cuda", **config)).to(device, dtype)
    fast.load_state_dict(ref.state_dict())
    with torch.no_grad():  # a norm weight other than ones, the same in both
        ref.norm.weight.normal_()
        fast.norm.weight.copy_(ref.norm.weight)
    x = torch.randn(2, 40, 64, device=device, dtype=dtype, requires_grad=True)
    calls = []
    fused = cuda_kernels.mamba2_split_conv_scan

    def counted(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    ops = dataclasses.replace(triton_ops(), mamba2_fused=counted, gated_norm=cuda_kernels.gated_rmsnorm)
    with triton_backend(ops):
        y, state = fast(x)
        g = grads([y, state.ssm], [x, *fast.parameters()])
    y_ref, state_ref = ref(x)
    g_ref = grads([y_ref, state_ref.ssm], [x, *ref.parameters()])
    gate = torch.randn(2, 7, 64, device=device, dtype=dtype)
    norm_in = torch.randn(2, 7, 64, device=device, dtype=dtype)
    norm = cuda_kernels.gated_rmsnorm(norm_in, gate, ref.norm.weight[:64], ref.norm.eps, 32)
    from hier_mamba.norms import RMSNorm

    norm_ref = RMSNorm(64, eps=ref.norm.eps, group_size=32).to(device, dtype)
    with torch.no_grad():
        norm_ref.weight.copy_(ref.norm.weight[:64])
    result = dict(fwd=worst([(y, y_ref), (state.ssm, state_ref.ssm), (state.conv, state_ref.conv)]),
                  bwd=worst(zip(g, g_ref)), norm=rel_err(norm, norm_ref(norm_in, gate)))
    return dict(err=max(result.values()), fused_calls=len(calls), **result)


def check_model(device, dtype, mixer: str) -> dict:
    """HierMambaForCausalLM: logits of a prompt, and of greedy generation (each token a step), vs torch."""
    from hier_mamba import HierMambaConfig, HierMambaForCausalLM

    config = dict(vocab_size=32, hidden_size=32, mixer=mixer, state_size=8, head_dim=16, H_layers=1, L_layers=1,
                  H_cycles=2, L_cycles=1, chunk_size=16)
    torch.manual_seed(5)
    ref = HierMambaForCausalLM(HierMambaConfig(ssm_backend="torch", **config)).to(device, dtype).eval()
    fast = HierMambaForCausalLM(HierMambaConfig(ssm_backend="cuda", **config)).to(device, dtype).eval()
    fast.load_state_dict(ref.state_dict())
    ids = torch.randint(0, 32, (2, 21), device=device)
    generate = dict(max_new_tokens=6, do_sample=False, pad_token_id=0, output_logits=True, return_dict_in_generate=True)
    with torch.no_grad(), triton_backend():
        logits, out = fast(ids).logits, fast.generate(ids[:, :9], **generate)
    with torch.no_grad():
        logits_ref, out_ref = ref(ids).logits, ref.generate(ids[:, :9], **generate)
    result = dict(prompt=rel_err(logits, logits_ref),
                  generation=rel_err(torch.stack(out.logits), torch.stack(out_ref.logits)))
    return dict(err=max(result.values()), same_tokens=bool(torch.equal(out.sequences, out_ref.sequences)), **result)


CHECKS = {
    "chunk_scan": check_chunk_scan,
    "ssd_state_update": check_ssd_state_update,
    "selective_state_update": check_selective_state_update,
    "gated_rmsnorm": check_gated_rmsnorm,
    "mamba2_mixer": check_mamba2_mixer,
    "mamba2_fused": check_mamba2_fused,
    "model_mamba2": lambda device, dtype: check_model(device, dtype, "mamba2"),
    "model_mamba1": lambda device, dtype: check_model(device, dtype, "mamba1"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--checks", nargs="+", default=list(CHECKS), choices=list(CHECKS))
    parser.add_argument("--json", type=Path, help="also write the result here")
    args = parser.parse_args()
    stubbed = setup(args.device)
    torch.set_num_threads(max(1, min(torch.get_num_threads(), 4)))
    import mamba_ssm
    import triton

    result = dict(device=args.device, stubbed=stubbed, triton=triton.__version__, mamba_ssm=mamba_ssm.__version__,
                  torch=torch.__version__, interpreter=os.environ.get("TRITON_INTERPRET") == "1", checks={})
    for name in args.checks:
        for dtype_name in args.dtypes:
            key = name if dtype_name == "float32" else f"{name}[{dtype_name}]"
            try:
                result["checks"][key] = CHECKS[name](args.device, getattr(torch, dtype_name))
            except Exception:  # reported, and the other checks still run
                result["checks"][key] = dict(error=traceback.format_exc(limit=-6))
            print(f"{key}: {result['checks'][key]}", file=sys.stderr, flush=True)
            if args.json:  # after every check: a run stopped at a time limit keeps what it measured
                args.json.write_text(json.dumps(result))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
