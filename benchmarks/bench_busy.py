"""Training step time on an idle and on a busy machine, for four CPU thread settings.

    python benchmarks/bench_busy.py [--steps 10] [--max-seconds 60] [--config configs/lm_tiny.yaml]

Each measurement is a fresh child process that trains the model of ``--config`` (the quickstart model by
default) on random bytes at the config's batch size and block size with AdamW, and reports the median
seconds per step after two warm-up steps. Settings of the measured process:

- ``torch default``: OMP_WAIT_POLICY and OMP_NUM_THREADS unset (threads spin while waiting, one per core);
- ``scripts default``: OMP_WAIT_POLICY=PASSIVE, one thread per core (what ``scripts/*.py`` and ``benchmarks/*.py`` do);
- ``scripts --threads auto``: PASSIVE and ``hier_mamba.threads.fit_threads("auto")`` (threads = the cores
  free when the process starts);
- ``short spin``: OMP_WAIT_POLICY unset and GOMP_SPINCOUNT=10000 (libgomp spins 10k iterations, ~tens of
  microseconds, instead of its default 300k before a waiting thread sleeps).

Load beside it: none, one single-threaded Python busy loop, or one more training process with torch's
defaults (another user's job). Prints a markdown table with each time and its ratio to the idle
``torch default`` time.

Nothing at module level imports torch or benchmarks/harness.py (which sets OMP_WAIT_POLICY): the measured
children run this file, and each must start with exactly the environment of its setting.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = {
    "torch default": {},
    "scripts default": {"OMP_WAIT_POLICY": "PASSIVE"},
    "scripts --threads auto": {"OMP_WAIT_POLICY": "PASSIVE", "HIER_MAMBA_BENCH_FIT": "1"},
    "short spin": {"GOMP_SPINCOUNT": "10000"},
}
LOADS = ["idle", "python busy loop", "torch training job"]


def worker(config_path: str, steps: int, max_seconds: float, forever: bool) -> None:
    """Train on random bytes; print {"threads", "s_per_step"} as JSON (or loop until killed)."""
    import torch
    import yaml

    from hier_mamba import HierMambaConfig, HierMambaForCausalLM
    from hier_mamba.threads import fit_threads

    if os.environ.get("HIER_MAMBA_BENCH_FIT"):
        fit_threads("auto")
    with open(config_path) as f:
        run = yaml.safe_load(f)
    torch.manual_seed(0)
    model = HierMambaForCausalLM(HierMambaConfig(vocab_size=256, **run["model"]))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    batch = run["training"]["per_device_train_batch_size"]
    ids = torch.randint(0, 256, (batch, run["data"]["block_size"]))  # (b, l)
    times: list[float] = []
    start = time.perf_counter()
    while forever or (len(times) < steps + 2 and time.perf_counter() - start < max_seconds):
        t0 = time.perf_counter()
        model(input_ids=ids, labels=ids).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        times.append(time.perf_counter() - t0)
    measured = times[2:] or times
    print(json.dumps({"threads": torch.get_num_threads(), "s_per_step": statistics.median(measured),
                      "steps": len(measured)}))


def busy_loop() -> None:
    """One core's worth of pure-Python work, until killed."""
    x = 0
    while True:
        x = (x + 1) % 1_000_003


def child_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
    env.update(extra)
    return env


def start_load(load: str, args) -> subprocess.Popen | None:
    if load == "idle":
        return None
    role = ["--busy-loop"] if load == "python busy loop" else ["--worker", "--forever"]
    process = subprocess.Popen([sys.executable, __file__, *role, "--config", args.config], env=child_env({}),
                               stdout=subprocess.DEVNULL)
    time.sleep(8)  # let it import torch and start working
    return process


def measure(setting: str, args) -> dict:
    out = subprocess.run([sys.executable, __file__, "--worker", "--config", args.config, "--steps", str(args.steps),
                          "--max-seconds", str(args.max_seconds)], env=child_env(SETTINGS[setting]),
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/lm_tiny.yaml")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS),
                        help="thread settings to measure (torch default is always measured: the base)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--forever", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--busy-loop", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.busy_loop:
        return busy_loop()
    if args.worker:
        return worker(args.config, args.steps, args.max_seconds, args.forever)

    load_before = os.getloadavg()
    results = {}
    for load in LOADS:
        process = start_load(load, args)
        try:
            for setting in dict.fromkeys(["torch default", *args.settings]):
                results[load, setting] = measure(setting, args)
        finally:
            if process is not None:
                process.kill()
                process.wait()
    base = results["idle", "torch default"]["s_per_step"]
    print(f"cores: {os.cpu_count()}; load average before: {load_before}, after: {os.getloadavg()}; "
          f"base {base:.3f} s/step\n")
    from harness import table  # here, not at the top: see the module docstring

    print(table(["load", "setting", "threads", "s/step", "× idle torch default"],
                [[load, setting, r["threads"], f"{r['s_per_step']:.3f}", f"{r['s_per_step'] / base:.2f}×"]
                 for (load, setting), r in results.items()]))


if __name__ == "__main__":
    main()
