"""Benchmarks of hier_mamba, each against a transformers peer measured in the same process.

    python benchmarks/bench.py all    [--device cpu|cuda] [--plots docs/img] [--json results.json]
    python benchmarks/bench.py mixer  # fwd+bwd tokens/s: Mamba1Mixer / Mamba2Mixer vs MambaMixer / Mamba2Mixer
    python benchmarks/bench.py decode # ms/token at contexts 128..8192, cache bytes, vs HrmTextForCausalLM
    python benchmarks/bench.py memory # peak training memory and step time vs cycles, per gradient setting
    python benchmarks/bench.py credit # the same for the ACT puzzle model, per credit-assignment option, + slopes
    python benchmarks/bench.py onestep # bptt_steps=2 step time vs cycles against one invocation's forward cost
    python benchmarks/bench.py model  # LM training step vs Mamba2ForCausalLM / MambaForCausalLM(mambapy), FLOP/s

(GPU language-model benchmark against transformers' Mamba2 and mamba_ssm: benchmarks/bench_gpu.py.)

Timings: best of several repetitions (robust on a shared machine), synchronized on CUDA. `memory` and
`credit` run each point in a fresh process (benchmarks/harness.py): peak bytes allocated in a training
step (profiler memory events on CPU, max_memory_allocated on CUDA), bytes saved for backward
(saved_tensors_hooks), peak-RSS growth.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import torch

from harness import (ROOT, bench_lm_config, header, loglog_slope, measure_step, mib, run_worker,  # first: it puts
                     serve_worker, table, timed, timed_cpu)  # the checkout on sys.path
from bench_decode import bench_decode
from bench_model import bench_model
from hier_mamba import HierMambaConfig, HierMambaForCausalLM, HierMambaForTokenClassification
from hier_mamba.mixers import MIXER_CLASSES

CYCLES = [(1, 1), (1, 2), (2, 2), (2, 4), (4, 4)]  # H_cycles x L_cycles = 1 .. 16
GRADIENT_SETTINGS = {  # name -> HierMambaConfig overrides
    "one-step (bptt_steps=2)": dict(bptt_steps=2),
    "full BPTT (bptt_steps=None)": dict(bptt_steps=None),
    "full BPTT + checkpoint_cycles": dict(bptt_steps=None, checkpoint_cycles=True),
}
CREDIT_CYCLES = [(1, 2), (2, 2), (2, 4), (4, 4), (4, 8)]  # H_cycles x L_cycles = 2 .. 32
CREDIT_OPTIONS = {  # credit-assignment option -> HierMambaConfig overrides
    "one_step": dict(bptt_steps=2),
    "k3_window": dict(bptt_steps=3),
    "full_bptt": dict(bptt_steps=None),
    "full_bptt_sqrt_ckpt": dict(bptt_steps=None, checkpoint_cycles=True),
    "one_step_h_memory": dict(bptt_steps=2, h_memory_size=4),
    "one_step_synthetic": dict(bptt_steps=2, synthetic_gradients=True),
    "full_bptt_synthetic": dict(bptt_steps=None, synthetic_gradients=True),
}
CREDIT_BASE = dict(halt_max_steps=2, halt_exploration_prob=0.0)  # no exploration: every run does 2 segments


# 1. mixer: forward + backward throughput against transformers' mixers with the same weights
def mixer_pair(kind: str, d: int, chunk_size: int, backend: str):
    """Our mixer and transformers' with our weights loaded (strict: every parameter name matches)."""
    from transformers import Mamba2Config, MambaConfig
    from transformers.models.mamba.modeling_mamba import MambaMixer
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer
    state = 16 if kind == "mamba1" else 64
    config = HierMambaConfig(hidden_size=d, mixer=kind, state_size=state, expand=2, conv_kernel=4, head_dim=64,
                             n_groups=1, chunk_size=chunk_size, ssm_backend=backend)
    ours = MIXER_CLASSES[kind](config)
    if kind == "mamba1":
        peer_config = MambaConfig(hidden_size=d, state_size=state, expand=2, conv_kernel=4,
                                  time_step_rank=config.time_step_rank, num_hidden_layers=1)
        theirs = MambaMixer(peer_config, layer_idx=0)
    else:
        peer_config = Mamba2Config(hidden_size=d, state_size=state, expand=2, conv_kernel=4, head_dim=64,
                                   num_heads=config.num_heads, n_groups=1, chunk_size=chunk_size, num_hidden_layers=1,
                                   layer_norm_epsilon=config.rms_norm_eps)
        theirs = Mamba2Mixer(peer_config, layer_idx=0)
    theirs.load_state_dict(ours.state_dict(), strict=True)
    return ours, theirs


def fwd_bwd(module, x: torch.Tensor, grad_out: torch.Tensor) -> None:
    module.zero_grad(set_to_none=True)
    x.grad = None
    out = module(x)
    (out[0] if isinstance(out, tuple) else out).backward(grad_out)


def bench_mixer(args, device) -> dict:
    b, l, d = args.batch, args.length, 256
    torch.manual_seed(0)
    x = torch.randn(b, l, d, device=device, requires_grad=True)
    grad_out = torch.randn(b, l, d, device=device)
    rows, results = [], {}
    for kind, chunk, peer_name in [("mamba1", 64, "MambaMixer"), ("mamba2", 64, "Mamba2Mixer"),
                                   ("mamba2", 256, "Mamba2Mixer")]:
        name = f"{kind} (chunk {chunk})" if kind == "mamba2" else kind
        ours, theirs = mixer_pair(kind, d, chunk, args.backend)
        ours, theirs = ours.to(device).train(), theirs.to(device).train()  # train: the peers' training path
        with torch.no_grad():
            diff = (ours(x)[0] - theirs(x)).abs().max().item()
        print(f"[mixer] {name}: max |ours - {peer_name}| forward = {diff:.2e}", flush=True)
        if not diff < 1e-3:
            raise SystemExit(f"{name}: outputs differ by {diff:.2e}; not timing a different computation")
        fwd_bwd(ours, x, grad_out)  # warm-up
        our_grad = x.grad.clone()
        our_times = [timed(lambda: fwd_bwd(ours, x, grad_out), device) for _ in range(args.reps)]
        # The peer's eager Mamba1 scan indexes dA[:, :, t] per step (O(l^2) backward): time it within a budget.
        peer_times, budget_start = [], time.perf_counter()  # (the best-of also drops a cold first repetition)
        while not peer_times or (len(peer_times) < args.reps and time.perf_counter() - budget_start < args.peer_budget_s):
            peer_times.append(timed(lambda: fwd_bwd(theirs, x, grad_out), device))
        grad_diff = (x.grad - our_grad).abs().max().item()
        ours_tps, theirs_tps = b * l / min(our_times), b * l / min(peer_times)
        results[name] = dict(peer=peer_name, fwd_diff=diff, grad_diff=grad_diff, ours_s=our_times, peer_s=peer_times,
                             ours_tok_s=ours_tps, peer_tok_s=theirs_tps, speedup=ours_tps / theirs_tps)
        rows.append([name, peer_name, f"{diff:.1e}", f"{grad_diff:.1e}", f"{ours_tps:,.0f}", f"{theirs_tps:,.0f}",
                     f"{ours_tps / theirs_tps:.1f}x", f"{len(our_times)}/{len(peer_times)}"])
        print(f"[mixer] {name}: ours {ours_tps:,.0f} tok/s, {peer_name} {theirs_tps:,.0f} tok/s", flush=True)
    print(f"\nforward+backward, b={b}, l={l}, d={d}, fp32, best of reps")
    print(table(["ours", "peer", "max abs diff fwd", "max abs diff dx", "ours tok/s", "peer tok/s", "speedup",
                 "reps ours/peer"], rows))
    m2 = results["mamba2 (chunk 64)"]["ours_tok_s"] / results["mamba2 (chunk 256)"]["ours_tok_s"]
    print(f"\nours mamba2 chunk 64 vs 256: {m2:.2f}x")
    return results


# 2. decode: per-token latency and cache size vs context, against HrmText's KV cache: benchmarks/bench_decode.py


# 3. memory and 4. credit: peak training memory and step time vs cycles (each point in a fresh process)
def lm_workload(spec: dict):
    """HierMambaForCausalLM hidden 256, H_layers = L_layers = 2, mamba2; a step: LM loss on random bytes."""
    config = bench_lm_config(H_cycles=spec["H"], L_cycles=spec["L"], ssm_backend=spec["backend"], **spec["setting"])
    ids = torch.randint(1, 256, (spec["batch"], spec["length"]))
    return HierMambaForCausalLM(config), dict(input_ids=ids, labels=ids)


def puzzle_workload(spec: dict):
    """HierMambaForTokenClassification (ACT, deep supervision) from a run config's ``model:``, on 11x11 mazes."""
    import yaml
    from hier_mamba.data.maze import generate_mazes

    model_cfg = yaml.safe_load(Path(spec["config"]).read_text())["model"]
    config = HierMambaConfig(**{**model_cfg, "H_cycles": spec["H"], "L_cycles": spec["L"],
                                "ssm_backend": spec["backend"], **spec["setting"]})
    mazes = generate_mazes(spec["batch"], size=11, seed=0)
    grids = {key: torch.stack([torch.from_numpy(getattr(m, key).reshape(-1)).long() for m in mazes])
             for key in ("inputs", "labels")}  # (b, 121) each
    return HierMambaForTokenClassification(config), dict(input_ids=grids["inputs"], labels=grids["labels"])


WORKLOADS = {"lm": lm_workload, "puzzle": puzzle_workload}


def memory_worker(spec: dict) -> dict:
    """One configuration (run as ``bench.py memory-worker <spec>``): harness.measure_step of a training step."""
    device = torch.device(spec["device"])
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    model, batch = WORKLOADS[spec["workload"]](spec)
    model, batch = model.to(device).train(), {k: v.to(device) for k, v in batch.items()}
    segments = getattr(model.config, "halt_max_steps", None) if spec["workload"] == "puzzle" else None

    def step():
        model.zero_grad(set_to_none=True)
        output = model(**batch)
        output.loss.backward()
        if segments is not None and not bool((output.steps == segments).all()):  # the same work in every run
            raise RuntimeError(f"ACT halted early: steps {output.steps.tolist()}, expected {segments}")

    return dict(measure_step(model, step, device, spec["reps"]), invocations=model.config.num_invocations)


def sweep(args, device, section: str, workload: str, settings: dict, cycles: list, **spec) -> dict:
    """{setting name: [one measured point per (H_cycles, L_cycles)]}, each point from a fresh worker process."""
    results = {}
    for name, setting in settings.items():
        results[name] = []
        for H, L in cycles:
            point = dict(H=H, L=L, **run_worker(__file__, dict(
                workload=workload, device=str(device), backend=args.backend, H=H, L=L, setting=setting,
                reps=args.memory_reps, threads=args.threads, **spec)))
            results[name].append(point)
            print(f"[{section}] {name} H={H} L={L}: peak {mib(point['peak_bytes'])} MiB, saved "
                  f"{mib(point['saved_bytes'])} MiB, step {point['step_s']:.2f} s", flush=True)
    return results


def cycle_tables(results: dict, settings: dict) -> None:
    """One table per setting; ratios against its first (smallest) cycle count."""
    for name, points in results.items():
        first, hidden = points[0], settings[name].get("checkpoint_cycles")  # checkpoint's own hooks hide its saves
        rows = [[f"{p['H']}x{p['L']}", p["H"] * p["L"], p["invocations"],
                 mib(p["peak_bytes"]), f"{p['peak_bytes'] / first['peak_bytes']:.2f}",
                 *(["n/a", "n/a"] if hidden else
                   [mib(p["saved_bytes"]), f"{p['saved_bytes'] / first['saved_bytes']:.2f}"]),
                 mib(p["rss_growth_bytes"]), f"{p['step_s']:.2f}", f"{p['step_s'] / first['step_s']:.2f}"]
                for p in points]
        print(f"\n{name}: {settings[name]}")
        print(table(["H x L", "cycles", "invocations", "peak MiB", "peak ratio", "saved-for-bwd MiB", "saved ratio",
                     "peak RSS growth MiB", "step s", "step ratio"], rows))


def bench_memory(args, device) -> dict:
    results = sweep(args, device, "memory", "lm", GRADIENT_SETTINGS, CYCLES, batch=args.batch,
                    length=args.memory_length)
    print(f"\nHierMambaForCausalLM hidden 256, H_layers=L_layers=2, mamba2, b={args.batch}, l={args.memory_length}; "
          "ratios vs H_cycles x L_cycles = 1")
    cycle_tables(results, GRADIENT_SETTINGS)
    return results


def bench_credit(args, device) -> dict:
    options = {name: {**CREDIT_BASE, **option} for name, option in CREDIT_OPTIONS.items()}
    points = sweep(args, device, "credit", "puzzle", options, CREDIT_CYCLES, batch=args.credit_batch,
                   config=str(args.credit_config))
    print(f"\nHierMambaForTokenClassification from {os.path.relpath(args.credit_config, ROOT)} model:, "
          f"{CREDIT_BASE}, b={args.credit_batch} mazes of 121 cells; invocations = H_cycles*(L_cycles+1) per "
          "segment; ratios vs the first row")
    cycle_tables(points, options)
    slopes, rows = {}, []
    for name, pts in points.items():  # exponent p of cost ~ invocations^p
        x = [p["invocations"] for p in pts]
        slopes[name] = dict(peak=loglog_slope(x, [p["peak_bytes"] for p in pts]),
                            peak_top3=loglog_slope(x[-3:], [p["peak_bytes"] for p in pts[-3:]]),
                            step=loglog_slope(x, [p["step_s"] for p in pts]))
        rows.append([name, *(f"{slopes[name][k]:.2f}" for k in ("peak", "peak_top3", "step"))])
    print("\nslope of log(cost) vs log(invocations)")
    print(table(["option", "peak memory (all points)", "peak memory (3 largest)", "step time (all points)"], rows))
    overhead = [dict(H=c["H"], L=c["L"], invocations=c["invocations"], time_ratio=c["step_s"] / f["step_s"],
                     peak_ratio=c["peak_bytes"] / f["peak_bytes"])
                for f, c in zip(points["full_bptt"], points["full_bptt_sqrt_ckpt"])]
    print("\nfull_bptt_sqrt_ckpt / full_bptt")
    print(table(["H x L", "invocations", "step time ratio (recompute overhead)", "peak memory ratio"],
                [[f"{o['H']}x{o['L']}", o["invocations"], f"{o['time_ratio']:.2f}", f"{o['peak_ratio']:.2f}"]
                 for o in overhead]))
    return dict(points=points, slopes=slopes, checkpoint_overhead=overhead, batch=args.credit_batch,
                config=os.path.relpath(args.credit_config, ROOT), base=CREDIT_BASE)

# 5. onestep: with bptt_steps=2, do the no-grad invocations cost a plain forward, or autograd bookkeeping too?
def invocation_costs(model, batch: dict, reps: int, device) -> dict:
    """{mode: [(wall s, cpu s)] per rep} of one L-stack invocation on the embedded input (b, l, d): forward
    under no_grad, inference_mode and grad recording, and forward+backward."""
    x = model.model.embeddings(batch["input_ids"]).detach()  # (b, l, d)
    stack = model.model.reasoner.L

    def forward():
        stack(x)

    def recorded():
        stack(x)[0].sum().backward()

    modes = {"no_grad": (torch.no_grad, forward), "inference_mode": (torch.inference_mode, forward),
             "grad (forward)": (torch.enable_grad, forward), "grad (forward+backward)": (torch.enable_grad, recorded)}
    times = {name: [] for name in modes}
    for _ in range(reps):  # interleaved: load hits every mode alike
        for name, (context, fn) in modes.items():
            with context():
                times[name].append(timed_cpu(fn, device))
    model.zero_grad(set_to_none=True)
    return times


def bench_onestep(args, device) -> dict:
    """Training step time (forward, LM loss, backward) vs cycles with the one-step gradient; the growth per
    invocation against the forward cost of one invocation, measured in the same process."""
    torch.manual_seed(0)
    ids = torch.randint(1, 256, (args.batch, args.memory_length), device=device)
    batch = dict(input_ids=ids, labels=ids)
    models = {}
    for H, L in CYCLES:
        torch.manual_seed(0)
        model, _ = lm_workload(dict(H=H, L=L, backend=args.backend, setting=dict(bptt_steps=2), batch=1, length=1))
        models[H, L] = model.to(device).train()

    def step(model):
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()

    for model in models.values():  # warm-up
        step(model)
    steps = {key: [] for key in models}
    for _ in range(args.onestep_reps):  # round-robin over the cycle counts
        for key, model in models.items():
            steps[key].append(timed_cpu(lambda: step(model), device))
    costs = invocation_costs(models[CYCLES[0]], batch, 2 * args.onestep_reps, device)
    invocations = [models[key].config.num_invocations for key in models]
    results = dict(invocations=invocations, steps={f"{H}x{L}": t for (H, L), t in steps.items()},
                   invocation=costs)
    rows, summary = [], []
    for clock, index in (("wall", 0), ("cpu", 1)):
        best = [min(t[index] for t in steps[key]) for key in models]
        cost = {name: min(t[index] for t in times) for name, times in costs.items()}
        slope = statistics.linear_regression(invocations, best).slope  # seconds per extra invocation
        results[f"{clock}_growth_per_invocation_s"], results[f"{clock}_invocation_s"] = slope, cost
        rows.append(best)
        summary.append([clock, f"{1e3 * slope:.1f}", *(f"{1e3 * t:.1f}" for t in cost.values()),
                        f"{slope / cost['no_grad']:.2f}", f"{cost['no_grad'] / cost['inference_mode']:.3f}"])
    print(f"\nHierMambaForCausalLM hidden 256, H_layers=L_layers=2, mamba2, bptt_steps=2, b={args.batch}, "
          f"l={args.memory_length}; best of {args.onestep_reps} interleaved steps (wall clock and process CPU time)")
    print(table(["H x L", "invocations", "step s (wall)", "step s (cpu)", "ratio (cpu)"],
                [[f"{H}x{L}", n, f"{w:.3f}", f"{c:.3f}", f"{c / rows[1][0]:.2f}"]
                 for (H, L), n, w, c in zip(models, invocations, *rows)]))
    print(f"\ngrowth = least-squares slope of step time over invocations; one L invocation (2 blocks + norm) on the "
          f"same input, best of {2 * args.onestep_reps} interleaved reps")
    print(table(["clock", "growth ms / invocation", *(f"{name} ms" for name in costs), "growth / no_grad",
                 "no_grad / inference_mode"], summary))
    return results


# plots -----------------------------------------------------------------------------------------
def plot(results: dict, out_dir: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def save(fig, path: Path) -> None:
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)

    out_dir.mkdir(parents=True, exist_ok=True)
    if "mixer" in results:
        r = results["mixer"]
        fig, ax = plt.subplots(figsize=(7, 4))
        for shift, key, label in [(-0.2, "ours_tok_s", "hier_mamba"), (0.2, "peer_tok_s", "transformers")]:
            ax.bar([i + shift for i in range(len(r))], [v[key] for v in r.values()], 0.4, label=label)
        for i, v in enumerate(r.values()):
            ax.text(i, v["ours_tok_s"], f"{v['speedup']:.1f}x", ha="center", va="bottom")
        ax.set_xticks(range(len(r)), list(r))
        ax.set(yscale="log", ylabel="tokens/s, forward+backward", title="Mixer throughput (same weights)")
        ax.legend()
        save(fig, out_dir / "bench_mixer.png")
    if "decode" in results:
        r = results["decode"]
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
        for name, label in [("ours", "hier_mamba"), ("HrmText", "HrmText (KV cache)")]:
            ctx = sorted(int(k) for k in r[name] if k.isdigit())
            a1.plot(ctx, [r[name][str(c)]["ms_best"] for c in ctx], "o-", label=label)
            a2.plot(ctx, [r[name][str(c)]["cache_bytes"] / 2**20 for c in ctx], "o-", label=label)
        a1.set(xscale="log", xlabel="context (tokens)", ylabel="ms / token (best)", title="Decode latency", ylim=(0, None))
        a2.set(xscale="log", yscale="log", xlabel="context (tokens)", ylabel="cache MiB", title="Cache size")
        a1.legend(), a2.legend()
        save(fig, out_dir / "bench_decode.png")
    def cycles_figure(series: dict, title: str, loglog: bool):
        """Peak memory and step time against stack invocations, one line per setting."""
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.5) if loglog else (10, 4))
        for i, (name, points) in enumerate(series.items()):  # x: stack invocations = H_cycles * (L_cycles + 1)
            calls, style = [p["invocations"] for p in points], dict(marker="os^vDxP"[i % 7], ls=["-", "--", ":"][i % 3])
            a1.plot(calls, [p["peak_bytes"] / 2**20 for p in points], label=name, **style)
            a2.plot(calls, [p["step_s"] for p in points], label=name, **style)
        a1.set(ylabel="peak MiB allocated in a step", title=f"{title}: training memory")
        a2.set(ylabel="s / step (best of reps)", title=f"{title}: step time")
        for ax in (a1, a2):
            ax.set(xlabel="stack invocations H_cycles*(L_cycles+1); label H x L",
                   **(dict(xscale="log", yscale="log") if loglog else dict(ylim=(0, None))))
            ax.minorticks_off()
            ax.set_xticks(calls, [f"{p['H']}x{p['L']}\n{p['invocations']}" if loglog else f"{p['H']}x{p['L']}"
                                  for p in points], rotation=0 if loglog else 60, fontsize=8)
        a1.legend(fontsize=8)
        return fig

    if "memory" in results:
        save(cycles_figure(results["memory"], "HierMambaForCausalLM", loglog=False), out_dir / "bench_memory.png")
    if "credit" in results:
        save(cycles_figure(results["credit"]["points"], "ACT puzzle model", loglog=True), out_dir / "credit_cost.png")


def main() -> None:
    if serve_worker(memory_worker):  # internal: one memory point, JSON on stdout
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("section", choices=["mixer", "decode", "memory", "credit", "onestep", "model", "all"])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--backend", default="auto", choices=["auto", "torch", "cuda"], help="hier_mamba ssm_backend")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=1024, help="mixer sequence length")
    parser.add_argument("--reps", type=int, default=7, help="timed repetitions (mixer) / rounds (decode)")
    parser.add_argument("--peer-budget-s", type=float, default=60.0,
                        help="mixer: stop timing a peer after this many seconds (at least one repetition)")
    parser.add_argument("--contexts", type=int, nargs="+", default=[128, 1024, 8192])
    parser.add_argument("--decode-tokens", type=int, default=16, help="tokens per timed decode round")
    parser.add_argument("--generate-tokens", type=int, default=32, help="decode: timed new tokens per generate()")
    parser.add_argument("--generate-batches", type=int, nargs="+", default=[1, 16], help="decode: generate() batches")
    parser.add_argument("--no-compile-decoding", dest="compile_decoding", action="store_false",
                        help="decode: leave out the compile_decoding() row (its CPU build takes a minute or more)")
    parser.add_argument("--memory-length", type=int, default=256)
    parser.add_argument("--memory-reps", type=int, default=3, help="timed steps per memory/credit point")
    parser.add_argument("--onestep-reps", type=int, default=5, help="onestep: interleaved timed steps per point")
    parser.add_argument("--credit-batch", type=int, default=8, help="credit: mazes per training step")
    parser.add_argument("--credit-config", type=Path, default=ROOT / "configs/exp_maze.yaml",
                        help="credit: run config whose model: section builds the puzzle model")
    parser.add_argument("--model-length", type=int, default=512, help="model: sequence length")
    parser.add_argument("--model-reps", type=int, default=5, help="model: interleaved timed rounds")
    parser.add_argument("--no-model-eager", dest="model_eager", action="store_false",
                        help="model: leave out transformers' eager Mamba1 (one step takes minutes)")
    parser.add_argument("--model-parts", action="store_true", help="model: also time each part of one of our blocks")
    parser.add_argument("--plots", type=Path, help="folder for bench_*.png / credit_cost.png (e.g. docs/img)")
    parser.add_argument("--json", type=Path, help="write all results to this JSON file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device visible to torch")
    header(device)
    benches = {"mixer": bench_mixer, "decode": bench_decode, "memory": bench_memory, "credit": bench_credit,
               "onestep": bench_onestep, "model": bench_model}
    results = {}
    for section in list(benches) if args.section == "all" else [args.section]:
        start = time.perf_counter()
        print(f"\n## {section}", flush=True)
        results[section] = benches[section](args, device)
        print(f"({section}: {time.perf_counter() - start:.0f} s)", flush=True)
    if args.plots:
        plot(results, args.plots)
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


if __name__ == "__main__":
    main()
