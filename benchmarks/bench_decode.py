"""The decode section of benchmarks/bench.py: per-token latency and cache size against transformers' HrmText at
growing contexts, and greedy generate() at batch 1 and 16 against Mamba2ForCausalLM (eager, and with
compile_decoding()). Run it as ``python benchmarks/bench.py decode``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import itertools
import statistics
import time

import torch

from harness import bench_lm_config, mib, table, timed, timed_cpu  # benchmarks/, beside this file
from hier_mamba import HierMambaForCausalLM


def decode_models(device, backend: str, max_positions: int):
    from transformers import HrmTextConfig, HrmTextForCausalLM

    ours = HierMambaForCausalLM(bench_lm_config(H_cycles=2, L_cycles=2, ssm_backend=backend))
    peer = HrmTextForCausalLM(HrmTextConfig(
        vocab_size=256, hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
        head_dim=64, H_cycles=2, L_cycles=2, L_bp_cycles=[2], max_position_embeddings=max_positions,
        prefix_lm=False, pad_token_id=0))
    return {"ours": ours.to(device).eval(), "HrmText": peer.to(device).eval()}


def cache_bytes(cache) -> int:
    if hasattr(cache, "nbytes"):
        return cache.nbytes()
    return sum(t.numel() * t.element_size() for layer in cache.layers for t in (layer.keys, layer.values)
               if isinstance(t, torch.Tensor))


def bench_decode(args, device) -> dict:
    contexts = args.contexts
    models = decode_models(device, args.backend, max(contexts) + (args.reps + 2) * args.decode_tokens + 16)
    params = {name: sum(p.numel() for p in m.parameters()) for name, m in models.items()}
    torch.manual_seed(0)
    state, results = {}, {name: {} for name in models}
    with torch.no_grad():
        for ctx in contexts:  # 1. prefill every context once (the caches are kept for stepping)
            ids = torch.randint(1, 256, (1, ctx), device=device)
            for name, model in models.items():
                out = {}
                seconds = timed(lambda: out.update(o=model(ids, use_cache=True)), device)
                cache, nxt = out["o"].cache, out["o"].logits[:, -1:].argmax(-1)
                results[name][ctx] = dict(prefill_s=seconds, cache_bytes=cache_bytes(cache), ms=[])
                state[name, ctx] = [cache, nxt]
                print(f"[decode] {name} prefill {ctx}: {seconds:.2f} s, cache {mib(cache_bytes(cache))} MiB", flush=True)

        def steps(name, ctx, n):
            cache, nxt = state[name, ctx]
            for _ in range(n):
                nxt = models[name](nxt, cache=cache, use_cache=True).logits[:, -1:].argmax(-1)
            state[name, ctx][1] = nxt

        for name, ctx in itertools.product(models, contexts):  # 2. warm-up
            steps(name, ctx, 2)
        for _ in range(args.reps):  # 3. round-robin so that machine load hits every point alike
            for ctx, name in itertools.product(contexts, models):
                seconds = timed(lambda: steps(name, ctx, args.decode_tokens), device)
                results[name][ctx]["ms"].append(1e3 * seconds / args.decode_tokens)
    rows = []
    for ctx in contexts:
        o, p = results["ours"][ctx], results["HrmText"][ctx]
        o["ms_best"], p["ms_best"] = min(o["ms"]), min(p["ms"])
        o["ms_median"], p["ms_median"] = statistics.median(o["ms"]), statistics.median(p["ms"])
        rows.append([ctx, f"{o['ms_best']:.2f}", f"{o['ms_median']:.2f}", f"{p['ms_best']:.2f}", f"{p['ms_median']:.2f}",
                     f"{o['cache_bytes']:,}", f"{p['cache_bytes']:,}", f"{p['cache_bytes'] / o['cache_bytes']:.1f}x",
                     f"{o['prefill_s']:.2f}", f"{p['prefill_s']:.2f}"])
    print(f"\nbatch 1, fp32; params ours {params['ours']:,}, HrmText {params['HrmText']:,}; "
          f"{args.reps} rounds x {args.decode_tokens} tokens")
    print(table(["context", "ours ms/tok (best)", "ours ms/tok (median)", "HrmText ms/tok (best)",
                 "HrmText ms/tok (median)", "ours cache B", "HrmText cache B", "cache ratio", "ours prefill s",
                 "HrmText prefill s"], rows))
    lo, hi = contexts[0], contexts[-1]
    for name in models:
        r = results[name]
        flat_best, flat_median = r[hi]["ms_best"] / r[lo]["ms_best"], r[hi]["ms_median"] / r[lo]["ms_median"]
        r["flatness"] = dict(best=flat_best, median=flat_median)
        print(f"{name}: ms/token at {hi} / at {lo} = {flat_best:.2f} (best), {flat_median:.2f} (median)")
    return dict(params=params, generate=bench_generate(args, device),
                **{name: {str(k): v for k, v in r.items()} for name, r in results.items()})


def generate_models(device, backend: str, compile_decoding: bool) -> dict:
    """The decode bench model (eager, and compiled when asked) and transformers' Mamba2ForCausalLM with as many
    layers as ours runs block-steps per token (12: 6 invocations x 2 blocks), same width, state, heads, conv."""
    from transformers import Mamba2Config, Mamba2ForCausalLM

    ours = decode_models(device, backend, 1)["ours"]  # only the HierMamba model of decode_models
    layers = ours.config.num_hidden_layers
    torch.manual_seed(0)
    peer = Mamba2ForCausalLM(Mamba2Config(
        vocab_size=256, hidden_size=256, num_hidden_layers=layers, state_size=64, head_dim=64, num_heads=8,
        expand=2, n_groups=1, conv_kernel=4, chunk_size=64, pad_token_id=0, bos_token_id=0, eos_token_id=0))
    models = {"ours (eager)": (ours, layers), "Mamba2ForCausalLM": (peer.to(device).eval(), layers)}
    if compile_decoding:
        compiled = decode_models(device, backend, 1)["ours"]
        compiled.load_state_dict(ours.state_dict())
        models["ours (compile_decoding)"] = (compiled.compile_decoding(), layers)
    return models


def bench_generate(args, device) -> dict:
    """Greedy generate() ms/token and tokens/s at batch 1 and 16 against Mamba2ForCausalLM, per block-step.

    ms/token = (time of generate(n + 1 new tokens) - time of generate(1 new token)) / n: the prefill and the first
    token cancel. Best of --reps rounds, round-robin over models and batch sizes.
    """
    models = generate_models(device, args.backend, args.compile_decoding)
    n = args.generate_tokens
    prompts = {b: torch.randint(1, 256, (b, 128), generator=torch.Generator().manual_seed(b)).to(device)
               for b in args.generate_batches}

    def generate(model, batch, new):
        return model.generate(prompts[batch], attention_mask=torch.ones_like(prompts[batch]), max_new_tokens=new,
                              min_new_tokens=new, do_sample=False, pad_token_id=0)

    results = {name: {b: dict(ms=[], cpu_ms=[]) for b in prompts} for name in models}
    with torch.no_grad():
        for name, (model, _) in models.items():  # warm-up; the compiled model compiles here (per batch size)
            for b in prompts:
                start = time.perf_counter()
                generate(model, b, 3)
                results[name][b]["warmup_s"] = time.perf_counter() - start
        reference = generate(models["ours (eager)"][0], 1, n + 1)
        for name, (model, _) in models.items():  # the compiled decode must produce the eager tokens
            if name.startswith("ours") and not torch.equal(generate(model, 1, n + 1), reference):
                raise SystemExit(f"{name}: generated tokens differ from eager decoding; not timing them")
        for _ in range(args.reps):
            for b, (name, (model, _)) in itertools.product(prompts, models.items()):
                one_wall, one_cpu = timed_cpu(lambda: generate(model, b, 1), device)
                all_wall, all_cpu = timed_cpu(lambda: generate(model, b, n + 1), device)
                results[name][b]["ms"].append(1e3 * (all_wall - one_wall) / n)
                results[name][b]["cpu_ms"].append(1e3 * (all_cpu - one_cpu) / n)
    rows = []
    peer = {b: min(results["Mamba2ForCausalLM"][b]["ms"]) for b in prompts}
    for b, (name, (_, layers)) in itertools.product(prompts, models.items()):
        r = results[name][b]
        r["ms_best"], r["cpu_ms_best"], r["ms_median"] = min(r["ms"]), min(r["cpu_ms"]), statistics.median(r["ms"])
        rows.append([b, name, f"{r['ms_best']:.2f}", f"{r['ms_median']:.2f}", f"{r['cpu_ms_best']:.2f}",
                     f"{1e3 * r['ms_best'] / layers:.0f}", f"{1e3 * b / r['ms_best']:,.0f}",
                     f"{peer[b] / r['ms_best']:.2f}x", f"{r['warmup_s']:.1f}"])
    print(f"\ngreedy generate, prompt 128, {n} timed new tokens, fp32; best of {args.reps} rounds (wall), process "
          f"CPU time alongside; per block-step = ms/token / {models['ours (eager)'][1]} (6 invocations x 2 blocks; "
          f"the peer has as many layers)")
    print(table(["batch", "model", "ms/token (best)", "ms/token (median)", "CPU ms/token (best)", "us/block-step",
                 "tokens/s", "vs Mamba2ForCausalLM", "warm-up s"], rows))
    return {name: {str(b): v for b, v in r.items()} for name, r in results.items()}
