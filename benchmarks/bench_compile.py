"""Compiled against eager training on the model-level benchmark model (benchmarks/bench_model.py's "ours").

    python benchmarks/bench_compile.py [--mixers mamba2 mamba1] [--reps 5] [--threads 1] [--backend inductor]

A step is forward, LM loss on random bytes (b=2, l=512), backward; no optimizer step. The compiled step is
``torch.compile(loss_fn, fullgraph=True)`` (one graph, no break; tests/test_compile_training.py). Eager and
compiled steps alternate (each round times both), so load hits them alike; best and median of the rounds. The
first compiled call's time (the build) is reported apart.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import torch

from bench_model import CHUNK, CONV, EXPAND, HEAD_DIM, HIDDEN, LAYERS, STATE, VOCAB  # benchmarks/, beside this file
from harness import header, table
from hier_mamba import HierMambaConfig, HierMambaForCausalLM


def model(kind: str) -> HierMambaForCausalLM:
    return HierMambaForCausalLM(HierMambaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, architecture="looped", H_cycles=1, L_cycles=0, L_layers=LAYERS,
        mixer=kind, state_size=STATE[kind], expand=EXPAND, conv_kernel=CONV, head_dim=HEAD_DIM, n_groups=1,
        chunk_size=CHUNK, ssm_backend="torch")).train()


def measure(kind: str, reps: int, backend: str, batch: int, length: int) -> list:
    torch.manual_seed(0)
    net = model(kind)
    ids = torch.randint(0, VOCAB, (batch, length))

    def loss_fn(ids):
        return net(input_ids=ids, labels=ids).loss

    compiled = torch.compile(loss_fn, fullgraph=True, backend=backend)

    def step(fn) -> float:
        start = time.perf_counter()
        fn(ids).backward()
        net.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    build = step(compiled)
    step(loss_fn)  # warm-up
    eager, fast = [], []
    for _ in range(reps):
        eager.append(step(loss_fn))
        fast.append(step(compiled))
    best, median = min(eager) / min(fast), statistics.median(eager) / statistics.median(fast)
    return [kind, f"{min(eager) * 1e3:.0f} / {statistics.median(eager) * 1e3:.0f}",
            f"{min(fast) * 1e3:.0f} / {statistics.median(fast) * 1e3:.0f}", f"**{best:.2f}x / {median:.2f}x**",
            f"{build:.0f} s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mixers", nargs="+", default=["mamba2", "mamba1"], choices=["mamba2", "mamba1"])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--backend", default="inductor")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--length", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    header(device, f"; load average before: {os.getloadavg()[0]:.1f}")
    rows = [measure(kind, args.reps, args.backend, args.batch, args.length) for kind in args.mixers]
    print(table(["model", "eager ms best / median", "compiled ms best / median", "speed-up best / median",
                 "build (first call)"], rows))
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
