"""What the benchmark scripts share: timing, markdown tables, the machine line, the benchmark model, and
measuring one configuration in a fresh process.

Timing: :func:`timed` (wall seconds, synchronized on CUDA) and :func:`timed_cpu` (also this process's CPU
seconds). Tables: :func:`table` prints markdown. :func:`header` prints the command line and the machine.
:func:`bench_lm_config` is the byte-level language model most sections time (hidden 256, 2 + 2 mamba2 blocks).

Fresh-process points (bench.py's `memory` and `credit` sections, bench_depth.py): a script re-runs itself as
``SCRIPT memory-worker '<json spec>'`` (:func:`serve_worker` answers that call); the worker builds the model
the spec names, calls :func:`measure_step` and prints one JSON line, which :func:`run_worker` reads back. A
fresh process per point keeps one configuration's allocator cache and peak RSS out of the next one's numbers.

Measures of :func:`measure_step` (all above the pre-step baseline, parameters excluded where it matters):
    peak_bytes        peak of bytes allocated during one step: on CPU the running sum of the profiler's
                      ``[memory]`` alloc (+) / free (-) events in time order (exact, deterministic); on
                      CUDA ``max_memory_allocated``. Includes parameter gradients, temporaries and
                      checkpoint recomputation.
    saved_bytes       distinct storages saved for backward (``saved_tensors_hooks``), i.e. activations.
                      Not meaningful under cycle checkpointing: the checkpoint's own hooks hide its saves.
    rss_growth_bytes  VmHWM after the first step minus VmRSS before it; counts allocator caching too.
    step_s            best of ``reps`` timed steps (the first, measured step is the warm-up).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import itertools
import json
import math
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout: the scripts import hier_mamba from it uninstalled
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def bench_lm_config(**overrides):
    """The benchmark language model: bytes in (vocab 256), hidden 256, H_layers = L_layers = 2, mamba2 with
    state 64 and head_dim 64; ``overrides`` set the cycles, backend and gradient settings of a section."""
    from hier_mamba import HierMambaConfig

    return HierMambaConfig(**{**dict(vocab_size=256, hidden_size=256, H_layers=2, L_layers=2, mixer="mamba2",
                                     state_size=64, head_dim=64), **overrides})


def machine(device: torch.device) -> str:
    """The GPU's name, or the CPU's model name with its core and torch thread counts."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((l.split(":", 1)[1].strip() for l in cpuinfo.splitlines() if l.startswith("model name")),
                platform.processor() or platform.machine())
    return f"{name}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def header(device: torch.device, extra: str = "") -> None:
    """Print the command line and the machine, library versions and ``extra`` as two comment lines."""
    import transformers

    print(f"# {' '.join(sys.argv)}\n# {machine(device)}{extra}; torch {torch.__version__}, transformers "
          f"{transformers.__version__}, python {platform.python_version()}", flush=True)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device) -> float:
    """Seconds of one call of fn, synchronized before and after."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def timed_cpu(fn, device) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) of one call of fn. On a shared machine the CPU time leaves
    out the time other processes hold the cores; single-threaded (--threads 1) it is the work done."""
    cpu = time.process_time()
    wall = timed(fn, device)
    return wall, time.process_time() - cpu


def table(headers: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def mib(n: float) -> str:
    return f"{n / 2**20:.1f}"


def rss_bytes(field: str, reset_peak: bool = False) -> int:
    """VmRSS (current) or VmHWM (peak) of this process; reset_peak first resets VmHWM (Linux clear_refs 5)."""
    try:
        if reset_peak:
            Path("/proc/self/clear_refs").write_text("5")
        line = next(l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024  # kB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB; lifetime peak


def profiled_peak_bytes(fn: Callable[[], None]) -> int:
    """Peak of the running sum of CPU allocations minus frees while fn runs (profiler memory events)."""
    from torch.profiler import profile

    with profile(profile_memory=True) as prof:
        fn()
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"
                     and e.device_type() == torch.autograd.DeviceType.CPU), key=lambda e: e.start_ns())
    return max(itertools.accumulate((e.nbytes() for e in events), initial=0))  # +alloc / -free, in time order


def measure_step(model: torch.nn.Module, step: Callable[[], None], device: torch.device, reps: int) -> dict:
    """Memory and time of ``step`` (zero grads, forward, loss, backward of ``model``); see the module docstring."""
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved = {}

    def pack(t):  # count each storage saved for backward once; parameters are not activations
        ptr = t.untyped_storage().data_ptr()
        if ptr not in param_ptrs:
            saved[ptr] = t.untyped_storage().nbytes()
        return t

    rss_before = rss_bytes("VmRSS", reset_peak=True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()  # also the warm-up
    rss_growth = rss_bytes("VmHWM") - rss_before
    times = [timed(step, device) for _ in range(reps)]
    model.zero_grad(set_to_none=True)
    return dict(peak_bytes=peak_bytes(step, device), saved_bytes=sum(saved.values()), rss_growth_bytes=rss_growth,
                step_s=min(times), step_s_all=times)


def peak_bytes(fn: Callable[[], object], device: torch.device) -> int:
    """Peak bytes allocated above the baseline while ``fn()`` runs: CUDA's allocator counters on a GPU,
    the profiler's allocation trace (:func:`profiled_peak_bytes`) on a CPU."""
    if device.type != "cuda":
        return profiled_peak_bytes(fn)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    fn()
    sync(device)
    return torch.cuda.max_memory_allocated(device) - base


def serve_worker(worker: Callable[[dict], dict]) -> bool:
    """If this process was started as ``SCRIPT memory-worker '<json spec>'`` (by :func:`run_worker`): print
    ``worker(spec)`` as one JSON line and return True; else return False (a normal command line)."""
    if len(sys.argv) == 3 and sys.argv[1] == "memory-worker":
        print(json.dumps(worker(json.loads(sys.argv[2]))))
        return True
    return False


def run_worker(script: str, spec: dict) -> dict:
    """Run ``script memory-worker <spec>`` in a fresh interpreter; its last stdout line is the JSON result."""
    run = subprocess.run([sys.executable, script, "memory-worker", json.dumps(spec)], capture_output=True, text=True,
                         check=False)
    if run.returncode:
        raise SystemExit(f"memory worker failed for {spec}:\n{run.stderr[-3000:]}")
    return json.loads(run.stdout.strip().splitlines()[-1])


def loglog_slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares slope of log(y) against log(x): the exponent p of y ~ x^p."""
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)
