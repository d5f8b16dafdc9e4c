"""CPU thread settings for a machine shared with other jobs.

PyTorch's CPU build runs its intra-op parallel regions on OpenMP threads. By default (libgomp's
``OMP_WAIT_POLICY`` unset) a thread that reaches the end of a region *spins* while it waits for its
peers. When another process holds one of the cores, one peer is descheduled and the others burn
their time slices spinning: a training step of the README's model was measured 5-12x slower on
2 cores shared with one other job (docs/benchmarks.md, "A busy machine"). Two settings fix it:

1. ``OMP_WAIT_POLICY=PASSIVE``: waiting threads sleep. OpenMP reads it once, when torch loads it, so a
   script sets it *before* ``import torch`` (``os.environ.setdefault`` keeps a user's own choice).
2. as many threads as there are free cores: :func:`free_cores` counts the cores this process may use
   minus the processes running on them now, and :func:`fit_threads` applies it with
   ``torch.set_num_threads`` (any time after import), unless the user chose a count.

The scripts in ``scripts/`` do both by default (``--threads N`` overrides the count).
"""

from __future__ import annotations

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


def fit_threads(threads: int | None = None) -> int:
    """Set torch's intra-op thread count and return it.

    ``threads``: an explicit count wins; else ``OMP_NUM_THREADS`` if the user set it (torch already
    honours it: nothing is changed); else :func:`free_cores`. Logs the choice and the wait policy.
    """
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        reason = "requested"
    elif os.environ.get("OMP_NUM_THREADS"):
        threads, reason = torch.get_num_threads(), "OMP_NUM_THREADS"
    else:
        threads, reason = free_cores(), f"free cores of {_usable_cores()}"
    torch.set_num_threads(threads)
    logger.info("torch threads: %d (%s); OMP_WAIT_POLICY=%s", threads, reason,
                os.environ.get("OMP_WAIT_POLICY", "unset (threads spin while waiting)"))
    return threads
