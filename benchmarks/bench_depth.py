"""Very deep H and L stacks: training memory and step time against depth, with and without depth-wise
gradient checkpointing, and a 2 x N-block model trained at a few sequence lengths with it.

    nice -n 10 python benchmarks/bench_depth.py [--sections depth overhead goal] [--depths 2 4 8 16 32 64]
        [--length 1024] [--hidden 256] [--overhead-depths 4 16] [--goal-layers 50] [--goal-lengths 1024 4096]
        [--json docs/results/bench_depth.json] [--plot docs/img/bench_depth.png]

depth: HierMambaForCausalLM with H_layers = L_layers = depth and H_cycles = L_cycles = 1, so one forward
    runs L then H once and every block's activations are recorded (the recorded depth of HRM's one-step
    gradient at any cycle count; more cycles add no-grad forwards, i.e. time, not memory). One
    forward + backward per point, each point in a fresh process (benchmarks/harness.py): peak bytes
    allocated in the step (profiler), peak RSS of the process, best step time; with and without
    ``gradient_checkpointing``. Linear fits give the slope per depth step of each, and the fitted lines
    say at how many blocks per stack the peak RSS plus AdamW's moments (8 B per parameter) would reach
    the machine's RAM (extrapolated, labelled so).
overhead: the recompute overhead as a ratio measured in one process: the same model's steps alternate
    between checkpointing off and on, so both see the same load on a shared machine.
goal: the model a user would train (2 x ``--goal-layers`` blocks, H_cycles = L_cycles = 2, one-step
    gradient, checkpointing) runs ``--goal-steps`` AdamW steps on one repeated batch at each length;
    the losses show it trains, the process's peak RSS against length is fitted and extrapolated to RAM.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (hier_mamba/threads.py)

import torch

from harness import (bench_lm_config, header, loglog_slope, measure_step, rss_bytes, run_worker,  # first: it puts
                     serve_worker, table)  # the checkout on sys.path
from hier_mamba import HierMambaForCausalLM

MIB = 2**20
ADAM_BYTES_PER_PARAMETER = 8  # AdamW's two fp32 moments; a fwd+bwd step does not allocate them


def model_for(spec: dict) -> HierMambaForCausalLM:
    """The byte-level LM of ``spec``: hidden, depth (blocks per stack), cycles; mamba2, head_dim 64."""
    config = bench_lm_config(hidden_size=spec["hidden"], H_layers=spec["depth"], L_layers=spec["depth"],
                             H_cycles=spec["cycles"], L_cycles=spec["cycles"], chunk_size=64, bptt_steps=2)
    torch.manual_seed(0)
    model = HierMambaForCausalLM(config).train()
    if spec["checkpointing"]:
        model.activation_checkpointing_enable()
    return model


def depth_worker(spec: dict) -> dict:
    """One (depth, checkpointing) point: harness.measure_step of a forward + backward."""
    model = model_for(spec)
    ids = torch.randint(1, 256, (spec["batch"], spec["length"]), generator=torch.Generator().manual_seed(0))

    def step():
        model.zero_grad(set_to_none=True)
        model(input_ids=ids, labels=ids).loss.backward()

    rss_before = rss_bytes("VmRSS")  # parameters, libraries, the interpreter
    point = measure_step(model, step, torch.device("cpu"), spec["reps"])
    parameters = sum(p.numel() for p in model.parameters())
    return dict(point, rss_before_bytes=rss_before, peak_rss_bytes=rss_before + point["rss_growth_bytes"],
                parameters=parameters)


def goal_worker(spec: dict) -> dict:
    """``spec["steps"]`` AdamW steps of the checkpointed deep model on one repeated batch (it should learn it)."""
    model = model_for(spec)
    ids = torch.randint(1, 256, (spec["batch"], spec["length"]), generator=torch.Generator().manual_seed(0))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    rss_before = rss_bytes("VmRSS", reset_peak=True)
    losses, times = [], []
    for _ in range(spec["steps"]):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
        losses.append(loss.item())
    return dict(losses=losses, step_s=min(times[1:] or times), step_s_all=times, rss_before_bytes=rss_before,
                peak_rss_bytes=rss_bytes("VmHWM"), parameters=sum(p.numel() for p in model.parameters()),
                checkpointed=all(block.gradient_checkpointing for block in model.model.reasoner.L.layers))


def overhead_worker(spec: dict) -> dict:
    """Recompute overhead in one process: the same model's steps alternate between checkpointing off and on,
    so both see the same machine load; best of ``reps`` each."""
    model = model_for(dict(spec, checkpointing=False))
    ids = torch.randint(1, 256, (spec["batch"], spec["length"]), generator=torch.Generator().manual_seed(0))
    times = {"plain": [], "checkpointed": []}
    for _ in range(spec["reps"] + 1):  # the first round warms up
        for mode in times:
            if mode == "checkpointed":
                model.activation_checkpointing_enable()
            else:
                model.activation_checkpointing_disable()
            start = time.perf_counter()
            model(input_ids=ids, labels=ids).loss.backward()
            model.zero_grad(set_to_none=True)
            times[mode].append(time.perf_counter() - start)
    best = {mode: min(values[1:]) for mode, values in times.items()}
    return dict(step_s=best, step_s_all=times, time_ratio=best["checkpointed"] / best["plain"])


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares (intercept, slope) of y = intercept + slope * x."""
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return my - slope * mx, slope


def ram_bytes() -> int:
    """MemTotal of this machine (Linux /proc/meminfo)."""
    line = next(l for l in Path("/proc/meminfo").read_text().splitlines() if l.startswith("MemTotal:"))
    return int(line.split()[1]) * 1024


def bench_depth(args) -> dict:
    """Every (checkpointing, depth) point, then the per-mode fits."""
    points = {"plain": [], "checkpointed": []}
    for mode in points:
        for depth in args.depths:
            spec = dict(kind="depth", hidden=args.hidden, depth=depth, cycles=1, checkpointing=mode == "checkpointed",
                        batch=args.batch, length=args.length, reps=args.reps, threads=args.threads)
            point = dict(depth=depth, load=os.getloadavg()[0], **run_worker(__file__, spec))
            points[mode].append(point)
            print(f"[depth] {mode} {depth} blocks/stack: peak {point['peak_bytes'] / MIB:.0f} MiB allocated, "
                  f"peak RSS {point['peak_rss_bytes'] / MIB:.0f} MiB, step {point['step_s']:.2f} s, "
                  f"load {point['load']:.1f}",
                  flush=True)
    fits = {}
    for mode, series in points.items():
        depths = [p["depth"] for p in series]
        _, per_block_params = linear_fit(depths, [p["parameters"] for p in series])
        total = [p["peak_rss_bytes"] + ADAM_BYTES_PER_PARAMETER * p["parameters"] for p in series]
        intercept, slope = linear_fit(depths, total)
        fits[mode] = dict(
            peak_bytes_per_block=linear_fit(depths, [p["peak_bytes"] for p in series])[1],
            peak_exponent=loglog_slope(depths, [p["peak_bytes"] for p in series]),
            rss_with_adam_intercept=intercept, rss_with_adam_per_block=slope,
            step_s_per_block=linear_fit(depths, [p["step_s"] for p in series])[1],
            step_exponent=loglog_slope(depths, [p["step_s"] for p in series]),
            parameters_per_block=per_block_params,
            depth_at_ram=(args.ram_bytes - intercept) / slope)  # extrapolated along the fitted line
    return dict(points=points, fits=fits)


def bench_overhead(args) -> dict:
    """The recompute overhead, plain and checkpointed steps interleaved in one process per depth."""
    points = []
    for depth in args.overhead_depths:
        spec = dict(kind="overhead", hidden=args.hidden, depth=depth, cycles=1, batch=args.batch,
                    length=args.overhead_length, reps=args.overhead_reps, threads=args.threads)
        point = dict(depth=depth, load=os.getloadavg()[0], **run_worker(__file__, spec))
        points.append(point)
        print(f"[overhead] {depth} blocks/stack: plain {point['step_s']['plain']:.2f} s, checkpointed "
              f"{point['step_s']['checkpointed']:.2f} s, ratio {point['time_ratio']:.2f}", flush=True)
    return dict(points=points, length=args.overhead_length, reps=args.overhead_reps)


def bench_goal(args) -> dict:
    """The 2 x goal_layers model, checkpointed, at each length; peak RSS against length fitted and extrapolated."""
    runs = []
    for length in args.goal_lengths:
        spec = dict(kind="goal", hidden=args.hidden, depth=args.goal_layers, cycles=2, checkpointing=True,
                    batch=1, length=length, steps=args.goal_steps, threads=args.threads)
        run = dict(length=length, load=os.getloadavg()[0], **run_worker(__file__, spec))
        runs.append(run)
        print(f"[goal] 2 x {args.goal_layers} blocks, length {length}: peak RSS {run['peak_rss_bytes'] / MIB:.0f} MiB, "
              f"step {run['step_s']:.1f} s, losses {[round(v, 3) for v in run['losses']]}", flush=True)
    fit = None
    if len(runs) > 1:
        intercept, slope = linear_fit([r["length"] for r in runs], [r["peak_rss_bytes"] for r in runs])
        fit = dict(intercept=intercept, bytes_per_token=slope, length_at_ram=(args.ram_bytes - intercept) / slope)
    return dict(runs=runs, fit=fit)


def report(results: dict, args) -> None:
    """The markdown tables of docs/benchmarks.md's "Very deep stacks"."""
    if "depth" in results:
        report_depth(results["depth"], args)
    report_overhead(results, args)
    report_goal(results, args)


def report_depth(depth: dict, args) -> None:
    rows = []
    for plain, checkpointed in zip(depth["points"]["plain"], depth["points"]["checkpointed"]):
        rows.append([plain["depth"], f"{plain['parameters'] / 1e6:.1f}",
                     f"{plain['peak_bytes'] / MIB:.0f}", f"{checkpointed['peak_bytes'] / MIB:.0f}",
                     f"{plain['peak_rss_bytes'] / MIB:.0f}", f"{checkpointed['peak_rss_bytes'] / MIB:.0f}",
                     f"{plain['step_s']:.2f}", f"{checkpointed['step_s']:.2f}",
                     f"{plain.get('load', float('nan')):.1f} / {checkpointed.get('load', float('nan')):.1f}"])
    print(f"\nHierMambaForCausalLM hidden {args.hidden}, mamba2, H_cycles = L_cycles = 1, b={args.batch}, "
          f"l={args.length}; one forward + backward per point, fresh process each")
    print(table(["blocks per stack", "params (M)", "peak alloc MiB", "peak alloc MiB (ckpt)", "peak RSS MiB",
                 "peak RSS MiB (ckpt)", "step s", "step s (ckpt)", "load avg (plain / ckpt)"], rows))
    fit_rows = [[mode, f"{f['peak_bytes_per_block'] / MIB:.1f}", f"{f['peak_exponent']:.2f}",
                 f"{f['rss_with_adam_per_block'] / MIB:.1f}", f"{f['step_s_per_block']:.3f}",
                 f"{f['step_exponent']:.2f}",
                 f"~{f['depth_at_ram']:.0f} (extrapolated)"] for mode, f in depth["fits"].items()]
    print(f"\nLinear fits over {args.depths} blocks per stack; RAM {args.ram_bytes / 2**30:.1f} GiB")
    print("(per depth step: one more block in H and one in L)")
    print(table(["mode", "peak alloc MiB / depth step", "log-log exponent", "peak RSS + AdamW MiB / depth step",
                 "s / depth step", "time exponent", "blocks per stack at RAM"], fit_rows))


def report_overhead(results: dict, args) -> None:
    if "overhead" in results:
        overhead = results["overhead"]
        print(f"\nRecompute overhead, steps alternating plain / checkpointed in one process, l={overhead['length']}, "
              f"best of {overhead['reps']}")
        print(table(["blocks per stack", "step s", "step s (ckpt)", "ckpt time ratio", "load"],
                    [[p["depth"], f"{p['step_s']['plain']:.2f}", f"{p['step_s']['checkpointed']:.2f}",
                      f"{p['time_ratio']:.2f}", f"{p['load']:.1f}"] for p in results["overhead"]["points"]]))


def report_goal(results: dict, args) -> None:
    if "goal" in results:
        goal = results["goal"]
        print(f"\n2 x {args.goal_layers} blocks, H_cycles = L_cycles = 2 (one-step gradient), checkpointed, "
              f"AdamW, b=1, {args.goal_steps} steps on one repeated batch")
        print(table(["length", "params (M)", "peak RSS MiB", "step s", "losses"],
                    [[r["length"], f"{r['parameters'] / 1e6:.1f}", f"{r['peak_rss_bytes'] / MIB:.0f}",
                      f"{r['step_s']:.1f}", " → ".join(f"{v:.3f}" for v in r["losses"])] for r in goal["runs"]]))
        if goal["fit"]:
            fit = goal["fit"]
            print(f"peak RSS ~ {fit['intercept'] / MIB:.0f} MiB + {fit['bytes_per_token'] / 1024:.1f} KiB per token: "
                  f"RAM reached at ~{fit['length_at_ram']:.0f} tokens (extrapolated)")


def plot(results: dict, path: Path, ram: int) -> None:
    """Peak memory (measured and fitted, with the RAM line) and step time against blocks per stack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    depth = results["depth"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    for (mode, series), marker in zip(depth["points"].items(), "os"):
        depths = [p["depth"] for p in series]
        fit = depth["fits"][mode]
        a1.plot(depths, [(p["peak_rss_bytes"] + ADAM_BYTES_PER_PARAMETER * p["parameters"]) / 2**30 for p in series],
                marker=marker, label=f"{mode}: measured RSS + AdamW")
        reach = [2 ** (i / 4) for i in range(4 * (max(depths) * 4).bit_length() - 3)]  # 1 .. 4 * max, smooth on log x
        a1.plot(reach, [(fit["rss_with_adam_intercept"] + fit["rss_with_adam_per_block"] * d) / 2**30 for d in reach],
                ls=":", color=a1.lines[-1].get_color(), label=f"{mode}: fitted line (extrapolation)")
        a2.plot(depths, [p["step_s"] for p in series], marker=marker, label=f"{mode} (fresh process per point)")
    if "overhead" in results:  # the interleaved one-process measurement: both modes under the same load
        points = results["overhead"]["points"]
        for mode, marker, color in zip(("plain", "checkpointed"), "os", ("C0", "C1")):
            a2.plot([p["depth"] for p in points], [p["step_s"][mode] for p in points], marker=marker, ls="--",
                    color=color,
                    mfc="white",
                    label=f"{mode} (interleaved in one process, l={results['overhead'].get('length', 512)})")
    a1.axhline(ram / 2**30, color="k", lw=0.8)
    a1.text(1, ram / 2**30, " RAM", va="bottom")
    a1.set(xscale="log", xlabel="blocks per stack (H and L)", ylabel="GiB", ylim=(0, ram / 2**30 * 1.3),
           title="Peak training memory")
    a2.set(xscale="log", yscale="log", xlabel="blocks per stack (H and L)", ylabel="s / step (fwd+bwd)",
           title="Step time")
    a2.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ticks = [p["depth"] for p in depth["points"]["plain"]] + [max(depths) * 4]
    for ax in (a1, a2):
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def worker(spec: dict) -> dict:
    """One point in this fresh process (``bench_depth.py memory-worker '<json spec>'``, via run_worker)."""
    torch.set_num_threads(spec["threads"])
    return {"depth": depth_worker, "goal": goal_worker, "overhead": overhead_worker}[spec["kind"]](spec)


def main() -> None:
    if serve_worker(worker):  # internal: one point, JSON on stdout
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--depths", type=int, nargs="+", default=[2, 4, 8, 16, 32, 64], help="blocks per stack")
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--length", type=int, default=1024, help="sequence length of the depth sweep")
    parser.add_argument("--reps", type=int, default=2, help="timed steps per depth point (after one warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--overhead-depths", type=int, nargs="+", default=[4, 16])
    parser.add_argument("--overhead-length", type=int, default=512)
    parser.add_argument("--overhead-reps", type=int, default=3, help="timed rounds (plain, checkpointed) per depth")
    parser.add_argument("--goal-layers", type=int, default=50, help="blocks per stack of the goal model")
    parser.add_argument("--sections", nargs="*", choices=["depth", "overhead", "goal"],
                        default=["depth", "overhead", "goal"],
                        help="what to run; with --json, the sections not run are kept from that file (none: "
                             "only print the tables and plot from --json)")
    parser.add_argument("--goal-lengths", type=int, nargs="+", default=[1024, 4096])
    parser.add_argument("--goal-steps", type=int, default=3)
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="write the figure here (e.g. docs/img/bench_depth.png)")
    args = parser.parse_args()
    if len(args.depths) < 2 or min(args.depths) < 1:
        raise SystemExit(f"--depths needs at least two positive depths, got {args.depths}")
    args.ram_bytes = ram_bytes()
    header(torch.device("cpu"), f", {args.ram_bytes / 2**30:.1f} GiB RAM, {args.threads} threads per point")
    start = time.perf_counter()
    results = json.loads(args.json.read_text()) if args.json and args.json.exists() else {}  # other sections kept
    if args.sections:  # the arguments of the latest run that measured something
        results["args"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    for section, bench in (("depth", bench_depth), ("overhead", bench_overhead), ("goal", bench_goal)):
        if section in args.sections:
            results[section] = bench(args)
            if args.json:  # after each section, so a long run keeps what it measured
                args.json.parent.mkdir(parents=True, exist_ok=True)
                args.json.write_text(json.dumps(results, indent=1))
    report(results, args)
    print(f"({time.perf_counter() - start:.0f} s)")
    if args.plot and "depth" in results:
        plot(results, args.plot, args.ram_bytes)

if __name__ == "__main__":
    main()
