"""Model-level training throughput against transformers' Mamba models, and the fraction of the machine it uses.

Used by benchmarks/bench.py (section `model`): four (five) causal LMs of the same width, depth and state size are
built in one process and timed round-robin, a training step each (forward, LM loss on random bytes, backward;
no optimizer step), best of the rounds:

    ours mamba2      HierMambaForCausalLM, architecture="looped", H_cycles=1, L_cycles=0: one pass through a
                     stack of ``layers`` Mamba2 blocks (a flat Mamba2 LM), torch ops
    Mamba2ForCausalLM transformers' Mamba2 with the same sizes; on CPU its torch path runs
    ours mamba1      the same with mixer="mamba1" (state 16)
    MambaForCausalLM(use_mambapy=True)   transformers' Mamba1 with the `mambapy` package's parallel scan
    MambaForCausalLM (eager)             its sequential scan (O(l^2) backward): timed once within a budget

FLOP count (:func:`training_flops`): the matmuls (every projection, the LM head, the SSD's chunk matmuls) at
2 FLOPs per multiply-add, three times for forward + backward (the input and the weight gradient); Mamba1's scan
as its elementwise work per (token, channel, state) (forward 7: Delta A, exp, Delta B u, the recurrence's
multiply-add, the read-out's multiply-add; backward counted as twice the forward). Norms, conv, gates and the
loss are left out, so achieved FLOP/s is a lower bound. The machine's fp32 GEMM FLOP/s is measured in the same
rounds (torch.mm of the model's largest projection and of 1024^3), best of all.

``--model-parts`` also times each part of one of our blocks (:func:`part_timings`), forward + backward.
"""

from __future__ import annotations

import math
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import torch

from harness import table, timed  # benchmarks/, beside this file
from hier_mamba import HierMambaConfig, HierMambaForCausalLM

HIDDEN, LAYERS, VOCAB = 256, 4, 256
STATE = {"mamba2": 64, "mamba1": 16}
HEAD_DIM, CHUNK, EXPAND, CONV = 64, 64, 2, 4


def models(backend: str, with_eager: bool) -> dict:
    """name -> (model, kind) with equal width, depth, state size, expand, conv width, head_dim and chunk."""
    from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM
    from transformers.utils.import_utils import is_mambapy_available

    def ours(kind: str):
        return HierMambaForCausalLM(HierMambaConfig(
            vocab_size=VOCAB, hidden_size=HIDDEN, architecture="looped", H_cycles=1, L_cycles=0, L_layers=LAYERS,
            mixer=kind, state_size=STATE[kind], expand=EXPAND, conv_kernel=CONV, head_dim=HEAD_DIM, n_groups=1,
            chunk_size=CHUNK, ssm_backend=backend))

    def mamba1(use_mambapy: bool):
        return MambaForCausalLM(MambaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                            state_size=STATE["mamba1"], expand=EXPAND, conv_kernel=CONV,
                                            use_mambapy=use_mambapy))

    if not is_mambapy_available():  # transformers would silently run its sequential scan instead
        raise SystemExit("model: the mambapy package is not installed (pip install mambapy, or '.[bench]')")
    built = {
        "ours mamba2": (ours("mamba2"), "mamba2"),
        "Mamba2ForCausalLM": (Mamba2ForCausalLM(Mamba2Config(
            vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, state_size=STATE["mamba2"],
            expand=EXPAND, conv_kernel=CONV, head_dim=HEAD_DIM, num_heads=EXPAND * HIDDEN // HEAD_DIM, n_groups=1,
            chunk_size=CHUNK)), "mamba2"),
        "ours mamba1": (ours("mamba1"), "mamba1"),
        "MambaForCausalLM (mambapy)": (mamba1(True), "mamba1"),
    }
    if with_eager:
        built["MambaForCausalLM (eager)"] = (mamba1(False), "mamba1")
    return built


def training_flops(kind: str, batch: int, length: int, hidden: int = HIDDEN, layers: int = LAYERS,
                   vocab: int = VOCAB) -> dict:
    """FLOPs of one training step (forward + backward) of a flat ``layers``-block Mamba LM: {"matmul", "scan"}.

    Matmuls count 2 per multiply-add, x3 for forward + backward; see the module docstring for the scan."""
    tokens, d_inner, n = batch * length, EXPAND * hidden, STATE[kind]
    if kind == "mamba2":
        heads = d_inner // HEAD_DIM
        in_features = 2 * d_inner + 2 * n + heads  # z, x, B, C, dt (one group)
        projections = hidden * in_features + d_inner * hidden
        chunks = math.ceil(length / CHUNK)
        per_chunk = (CHUNK * CHUNK * n  # C B^T (one group)
                     + heads * CHUNK * CHUNK * HEAD_DIM  # scores @ x
                     + 2 * heads * HEAD_DIM * CHUNK * n)  # chunk end states, entering-state read-out
        scan_matmul = 2 * batch * chunks * per_chunk
        scan_elementwise = 0
    else:
        dt_rank = math.ceil(hidden / 16)
        projections = hidden * 2 * d_inner + d_inner * (dt_rank + 2 * n) + dt_rank * d_inner + d_inner * hidden
        scan_matmul = 0
        scan_elementwise = 7 * tokens * d_inner * n
    matmul = 3 * (2 * tokens * projections * layers + 2 * tokens * hidden * vocab + scan_matmul * layers)
    return {"matmul": matmul, "scan": 3 * scan_elementwise * layers}


def gemm_flops_per_s(shapes: list[tuple[int, int, int]], device, reps: int = 5) -> float:
    """Best fp32 torch.mm FLOP/s over ``shapes`` (m, k, n)."""
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, device=device), torch.randn(k, n, device=device)
        a @ b  # warm-up
        best = max(best, max(2 * m * k * n / timed(lambda: a @ b, device) for _ in range(reps)))
    return best


def bench_model(args, device) -> dict:
    b, l = args.batch, args.model_length
    torch.manual_seed(0)
    built = models(args.backend, args.model_eager)
    ids = torch.randint(1, VOCAB, (b, l), device=device)
    params = {name: sum(p.numel() for p in model.parameters()) for name, (model, _) in built.items()}
    for model, _ in built.values():
        model.to(device).train()

    def step(model):
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    gemm_shapes = [(b * l, HIDDEN, 2 * EXPAND * HIDDEN + 2 * STATE["mamba2"] + EXPAND * HIDDEN // HEAD_DIM),
                   (1024, 1024, 1024)]
    times, gemm = {name: [] for name in built}, []
    eager = "MambaForCausalLM (eager)"
    for name, (model, _) in built.items():  # warm-up (the eager peer: its single timed step, within the budget)
        if name != eager:
            step(model)
    for _ in range(args.model_reps):  # round-robin: machine load hits every model alike
        for name, (model, _) in built.items():
            if name != eager:
                times[name].append(timed(lambda: step(model), device))
        gemm.append(gemm_flops_per_s(gemm_shapes, device))
        print("[model] round: " + ", ".join(f"{n} {t[-1]:.3f} s" for n, t in times.items() if t), flush=True)
    if eager in built:
        budget_start = time.perf_counter()
        while not times[eager] or time.perf_counter() - budget_start < args.peer_budget_s and len(times[eager]) < 2:
            times[eager].append(timed(lambda: step(built[eager][0]), device))
    machine_flops = max(gemm)
    peers = {"ours mamba2": "Mamba2ForCausalLM", "ours mamba1": "MambaForCausalLM (mambapy)"}
    results, rows = {}, []
    for name, (_, kind) in built.items():
        flops = training_flops(kind, b, l)
        best, median = min(times[name]), statistics.median(times[name])
        achieved = (flops["matmul"] + flops["scan"]) / best
        results[name] = dict(params=params[name], step_s=times[name], best_s=best, median_s=median,
                             tok_s=b * l / best, flops=flops, flops_per_s=achieved,
                             machine_fraction=achieved / machine_flops)
        rows.append([name, f"{params[name]:,}", f"{best * 1e3:.0f}", f"{median * 1e3:.0f}", f"{b * l / best:,.0f}",
                     f"{flops['matmul'] / 1e9:.2f} + {flops['scan'] / 1e9:.2f}", f"{achieved / 1e9:.1f}",
                     f"{100 * achieved / machine_flops:.0f}%", len(times[name])])
    print(f"\ntraining step (forward + LM loss + backward), b={b}, l={l}, d={HIDDEN}, {LAYERS} blocks, fp32, "
          f"{torch.get_num_threads()} threads; machine fp32 GEMM {machine_flops / 1e9:.1f} GFLOP/s (best torch.mm)")
    print(table(["model", "params", "best ms", "median ms", "tok/s", "GFLOP matmul + scan", "GFLOP/s",
                 "of machine GEMM", "reps"], rows))
    ratios = {}
    for ours, peer in [*peers.items(), *([("ours mamba1", eager)] if eager in built else [])]:
        ratios[f"{ours} / {peer}"] = results[peer]["best_s"] / results[ours]["best_s"]
        print(f"{ours} vs {peer}: {ratios[f'{ours} / {peer}']:.2f}x (best); "
              f"{results[peer]['median_s'] / results[ours]['median_s']:.2f}x (median)")
    parts = {}
    if args.model_parts:  # where one of our blocks spends its training time
        parts = {kind: part_timings(kind, b, l, args.model_reps, device) for kind in STATE}
        names = list(dict.fromkeys(name for timing in parts.values() for name in timing))
        print(f"\nours, one block, forward + backward, ms (best of {args.model_reps}); rest = block - parts")
        print(table(["part", *parts], [[name, *(f"{parts[k][name]:.1f}" if name in parts[k] else "" for k in parts)]
                                       for name in names]))
    return dict(results=results, ratios=ratios, machine_gemm_flops=machine_flops, gemm_rounds=gemm, parts=parts,
                batch=b, length=l, threads=torch.get_num_threads())


def part_timings(kind: str, batch: int, length: int, reps: int, device) -> dict:
    """ms of forward + backward of each part of one of our blocks at the model's sizes (best of ``reps``), and of
    the whole block; "rest" = block - parts (splits, reshapes, residual, gradient accumulation)."""
    from hier_mamba.blocks import HierMambaBlock
    from hier_mamba.ops import get_ops

    config = models_config(kind)
    block = HierMambaBlock(config).to(device)
    mixer, ops = block.mixer, get_ops("torch", device)
    A = -torch.exp(mixer.A_log.detach().float())

    def leaf(*shape):
        return torch.randn(*shape, device=device).requires_grad_()

    def best_ms(fn, *inputs) -> float:
        def run():
            out = fn(*inputs)
            outputs = list(out) if isinstance(out, (tuple, list)) else [out]
            torch.autograd.backward(outputs, [torch.ones_like(t) for t in outputs])
        run()
        return 1e3 * min(timed(run, device) for _ in range(reps))

    b, l, d, e = batch, length, HIDDEN, mixer.d_inner
    parts = {"pre-norm RMSNorm": best_ms(block.norm, leaf(b, l, d)), "in_proj": best_ms(mixer.in_proj, leaf(b, l, d))}
    if kind == "mamba2":
        def split_conv(projected):  # the mixer's fused node: in_proj's output -> z, conv'd (x, B, C), dt
            sizes = [mixer.d_inner, mixer.n_groups * mixer.state_size, mixer.n_groups * mixer.state_size]
            z, xBC, dt, _ = ops.split_conv(projected, mixer.d_inner, sizes, mixer.conv1d.weight.squeeze(1),
                                           mixer.conv1d.bias)
            return [z, *xBC, dt]

        parts["split + conv + SiLU"] = best_ms(split_conv, leaf(b, l, mixer.d_inner + mixer.conv_dim + mixer.heads))
        n = config.state_size
        parts["SSD scan (+ D)"] = best_ms(
            lambda x, dt, B, C: ops.ssd(x, dt, A, B, C, CHUNK, D=mixer.D, dt_bias=mixer.dt_bias)[0],
            leaf(b, l, mixer.heads, HEAD_DIM), leaf(b, l, mixer.heads), leaf(b, l, 1, n), leaf(b, l, 1, n))
        parts["gated RMSNorm"] = best_ms(mixer.norm, leaf(b, l, e), leaf(b, l, e))
    else:
        parts["conv + SiLU"] = best_ms(lambda x: ops.conv(x, mixer.conv1d.weight.squeeze(1), mixer.conv1d.bias)[0],
                                       leaf(b, l, 2 * e).transpose(1, 2)[:, :e])
        parts["x_proj + dt_proj"] = best_ms(
            lambda x: mixer.dt_proj.weight @ mixer.x_proj(x)[..., :mixer.dt_rank].transpose(1, 2), leaf(b, l, e))
        n = config.state_size
        parts["selective scan (+ D, gate)"] = best_ms(
            lambda u, dt, B, C, z: ops.selective_scan(u, dt, A, B, C, D=mixer.D, z=z, delta_bias=mixer.dt_proj.bias)[0],
            leaf(b, e, l), leaf(b, e, l), leaf(b, n, l), leaf(b, n, l), leaf(b, e, l))
    parts["out_proj"] = best_ms(mixer.out_proj, leaf(b, l, e))
    total = best_ms(lambda x: block(x)[0], leaf(b, l, d))
    return dict(parts, **{"rest": total - sum(parts.values()), "block": total})


def models_config(kind: str) -> HierMambaConfig:
    """The block configuration of ``ours <kind>`` in :func:`models`."""
    return HierMambaConfig(hidden_size=HIDDEN, mixer=kind, state_size=STATE[kind], expand=EXPAND, conv_kernel=CONV,
                           head_dim=HEAD_DIM, n_groups=1, chunk_size=CHUNK, ssm_backend="torch")
