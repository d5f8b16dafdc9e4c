"""CPU thread settings for a machine shared with other jobs.

PyTorch's CPU build runs its intra-op parallel regions on OpenMP threads. By default (libgomp's
``OMP_WAIT_POLICY`` unset) a thread that reaches the end of a region *spins* while it waits for its
peers. When another process holds one of the cores, one peer is descheduled and the others burn
their time slices spinning: on 2 cores beside one other PyTorch job a training step can take ~19x its
idle time (docs/benchmarks.md, "A busy machine"). Two settings help:

1. ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep. OpenMP reads it once, when torch loads it, so a
   script sets it *before* ``import torch`` (``os.environ.setdefault`` keeps a user's own choice).
2. optionally, as many threads as there are free cores: :func:`free_cores` counts the cores this process
   may use minus the processes running on them now; ``fit_threads("auto")`` applies it with
   ``torch.set_num_threads`` (any time after import).

The scripts in ``scripts/`` and ``benchmarks/`` set the passive policy; ``--threads N`` or ``--threads auto``
set the count.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import time

import torch

logger = logging.getLogger(__name__)

WAIT_POLICY = "PASSIVE"


def _usable_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _running_processes() -> int | None:
    """Runnable threads on the machine now, this one included (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as stat:
            for line in stat:
                if line.startswith("procs_running"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def free_cores(samples: int = 5, interval: float = 0.02) -> int:
    """Cores not busy with other processes: usable cores minus the median count of others running.

    Linux: ``procs_running`` of ``/proc/stat`` (an instantaneous count, which includes the calling
    thread), sampled ``samples`` times ``interval`` seconds apart. Elsewhere: the 1-minute load
    average. Never less than 1, never more than the usable cores.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    cores = _usable_cores()
    counts = []
    for i in range(samples):
        running = _running_processes()
        if running is None:
            break
        counts.append(running - 1)  # minus the caller
        if i + 1 < samples:
            time.sleep(interval)
    if counts:
        others = statistics.median(counts)
    elif hasattr(os, "getloadavg"):
        others = os.getloadavg()[0]
    else:
        others = 0
    return max(1, min(cores, cores - round(others)))


def fit_threads(threads: int | str | None = None) -> int:
    """Set torch's intra-op thread count from ``threads`` and return the count in use.

    ``threads``: an int is used as given; ``"auto"`` takes :func:`free_cores`; None keeps torch's count
    (``OMP_NUM_THREADS`` when the user set it, else one per core). Logs the choice and the wait policy.
    With the wait policy passive, None measured better than ``"auto"`` under one competing job on 2 cores
    (docs/benchmarks.md, "A busy machine"), so None is the scripts' default.
    """
    if threads is None:
        reason = "OMP_NUM_THREADS" if os.environ.get("OMP_NUM_THREADS") else "torch's default"
        threads = torch.get_num_threads()
    elif threads == "auto":
        threads, reason = free_cores(), f"free cores of {_usable_cores()}"
    elif isinstance(threads, int) and not isinstance(threads, bool) and threads >= 1:
        reason = "requested"
    else:
        raise ValueError(f"threads must be a positive int, 'auto' or None, got {threads!r}")
    torch.set_num_threads(threads)
    logger.info("torch threads: %d (%s); OMP_WAIT_POLICY=%s", threads, reason,
                os.environ.get("OMP_WAIT_POLICY", "unset (threads spin while waiting)"))
    return threads


def threads_argument(value: str) -> int | str:
    """argparse type of a ``--threads`` option: a positive int or ``auto``."""
    if value == "auto":
        return value
    try:
        count = int(value)
    except ValueError:
        count = 0
    if count < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer or 'auto', got {value!r}")
    return count
