"""Cost of one reasoning segment on 30 x 30 mazes (900 tokens): HierMamba against an attention H/L model.

    nice -n 5 taskset -c 1 python benchmarks/bench_maze30.py [--sides 15 30] [--widths 64 256] [--batch 8]
        [--chunk-size 64] [--reps 3] [--threads 1] [--json docs/results/bench_maze30.json]

One *segment* is one full H/L pass (H_cycles = L_cycles = 2, one block per stack, the maze model's
settings): our ``HierMambaModel`` (bidirectional Mamba2 scans along rows and columns of the grid, as
``models/maze-hiermamba``) against transformers' ``HrmTextModel`` (the attention version of the same
recurrence: one attention + SwiGLU block per stack, rotary positions; all tokens in one bidirectional
block via ``prefix_lm`` and ``token_type_ids`` = 1, sdpa attention) of the same width. Both keep gradient
through every cycle (ours ``bptt_steps=None``, HrmText ``L_bp_cycles`` = L_cycles in every H cycle).

Measured per point, each point in a fresh process (benchmarks/harness.py): forward under ``no_grad``
(inference, the cost of one test-time segment) and forward + backward (a training segment), best of
``--reps`` times (on CPU the process's CPU seconds, which a shared core does not inflate at one thread;
wall seconds are in the JSON too; on CUDA wall seconds) and the peak of bytes allocated in the step
(profiler events on CPU, ``max_memory_allocated`` on CUDA). The ratio columns are HrmText / ours: above
1, ours is cheaper.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP (hier_mamba/threads.py)

import torch

from harness import header, measure_step, mib, peak_bytes, run_worker, serve_worker, table, timed_cpu  # first: puts
from hier_mamba import HierMambaConfig, HierMambaModel  # the checkout on sys.path

CYCLES = dict(H_cycles=2, L_cycles=2)


def build(name: str, side: int, width: int, chunk_size: int = 64) -> torch.nn.Module:
    """The model ``name`` ("ours" | "HrmText") for side x side grids at ``width`` (ours: SSD ``chunk_size``)."""
    if name == "ours":
        return HierMambaModel(HierMambaConfig(
            vocab_size=6, hidden_size=width, H_layers=1, L_layers=1, mixer="mamba2", state_size=16, head_dim=16,
            chunk_size=chunk_size, bidirectional=True, grid_shape=[side, side], grid_scan_orders=["row", "col"],
            use_cache=False, bptt_steps=None, **CYCLES))
    from transformers import HrmTextConfig, HrmTextModel

    return HrmTextModel(HrmTextConfig(
        vocab_size=6, hidden_size=width, intermediate_size=4 * width, num_hidden_layers=1 * 2 * 3,
        num_layers_per_stack=1, num_attention_heads=width // 16, head_dim=16, L_bp_cycles=[2, 2],
        max_position_embeddings=side * side, prefix_lm=True, use_cache=False, pad_token_id=0, **CYCLES))


def worker(spec: dict) -> dict:
    """One (model, side, width) point in this fresh process."""
    torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    device = torch.device(spec["device"])
    model = build(spec["model"], spec["side"], spec["width"], spec.get("chunk_size", 64)).to(device)
    ids = torch.randint(1, 6, (spec["batch"], spec["side"] ** 2), device=device)  # (b, side * side)
    extra = {"token_type_ids": torch.ones_like(ids), "use_cache": False} if spec["model"] == "HrmText" else {}

    def forward():
        return model(input_ids=ids, **extra).last_hidden_state  # (b, l, d)

    def train_step():
        model.zero_grad(set_to_none=True)
        forward().float().square().mean().backward()

    model.train()
    trained = measure_step(model, train_step, device, 1)  # peak bytes (and a warm-up)
    train_s = [timed_cpu(train_step, device) for _ in range(spec["reps"])]  # (wall, process CPU) seconds

    def infer():
        with torch.no_grad():
            forward()

    infer()  # warm-up
    infer_s = [timed_cpu(infer, device) for _ in range(spec["reps"])]
    infer_peak = peak_bytes(infer, device)
    return dict(params=sum(p.numel() for p in model.parameters()), fwd_s=min(w for w, _ in infer_s),
                fwd_cpu_s=min(c for _, c in infer_s), fwd_peak=infer_peak, train_s=min(w for w, _ in train_s),
                train_cpu_s=min(c for _, c in train_s), train_peak=trained["peak_bytes"],
                train_saved=trained["saved_bytes"], load=os.getloadavg()[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sides", type=int, nargs="+", default=[30])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--chunk-size", type=int, default=64, help="our Mamba2 SSD chunk length")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    header(torch.device(args.device), f"; batch {args.batch}; chunk {args.chunk_size}; load {os.getloadavg()[0]:.2f}")
    rows, results = [], []
    for side in args.sides:
        for width in args.widths:
            point = {}
            for name in ("ours", "HrmText"):
                spec = dict(model=name, side=side, width=width, batch=args.batch, reps=args.reps,
                            threads=args.threads, device=args.device, chunk_size=args.chunk_size)
                point[name] = run_worker(__file__, spec)
                print(f"[maze30] {side}x{side} width {width} {name}: {point[name]}", flush=True)
            o, p = point["ours"], point["HrmText"]
            if args.device == "cpu":  # one thread: process CPU time is the work done, whatever else shares the core
                o, p = ({**r, "fwd_s": r["fwd_cpu_s"], "train_s": r["train_cpu_s"]} for r in (o, p))
            results.append(dict(side=side, width=width, batch=args.batch, chunk_size=args.chunk_size, **point))
            rows.append([f"{side}x{side} ({side * side})", width, f"{o['params']:,} / {p['params']:,}",
                         f"{o['fwd_s'] * 1e3:.0f} / {p['fwd_s'] * 1e3:.0f}", f"{p['fwd_s'] / o['fwd_s']:.2f}",
                         f"{mib(o['fwd_peak'])} / {mib(p['fwd_peak'])}", f"{p['fwd_peak'] / o['fwd_peak']:.2f}",
                         f"{o['train_s'] * 1e3:.0f} / {p['train_s'] * 1e3:.0f}", f"{p['train_s'] / o['train_s']:.2f}",
                         f"{mib(o['train_peak'])} / {mib(p['train_peak'])}",
                         f"{p['train_peak'] / o['train_peak']:.2f}"])
    print(table(["grid (tokens)", "width", "params ours / HrmText", "fwd ms", "time ratio", "fwd peak MiB",
                 "mem ratio", "fwd+bwd ms", "time ratio", "fwd+bwd peak MiB", "mem ratio"], rows))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    if not serve_worker(worker):  # internal: one point, JSON on stdout
        main()
