"""hier_mamba.threads: the free-core count, the thread choice, and that every script and benchmark sets the wait
policy first."""

from __future__ import annotations

import argparse
import ast
import itertools
from pathlib import Path

import pytest
import torch

from hier_mamba import threads

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = sorted(str(p.relative_to(ROOT)) for folder in ("scripts", "benchmarks") for p in (ROOT / folder).glob("*.py"))


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("running, cores, expected", [
    ([1, 1, 1], 2, 2),      # only the caller runs: every core is free
    ([2, 3, 2], 2, 1),      # one other process (median): one core left
    ([5, 6, 5], 2, 1),      # oversubscribed: never below 1
    ([1, 9, 1], 4, 4),      # a short spike is ignored (median)
    ([3, 3, 3], 8, 6),
])
def test_free_cores_counts_other_running_processes(monkeypatch, running, cores, expected):
    counts = iter(running)
    monkeypatch.setattr(threads, "_running_processes", lambda: next(counts))
    monkeypatch.setattr(threads, "_usable_cores", lambda: cores)
    assert threads.free_cores(samples=len(running), interval=0) == expected


def test_free_cores_falls_back_to_the_load_average(monkeypatch):
    monkeypatch.setattr(threads, "_running_processes", lambda: None)
    monkeypatch.setattr(threads, "_usable_cores", lambda: 4)
    monkeypatch.setattr(threads.os, "getloadavg", lambda: (2.6, 1.0, 1.0))
    assert threads.free_cores(interval=0) == 1  # 4 - round(2.6)


def test_fit_threads_keeps_torch_count_unless_asked(monkeypatch, restore_threads):
    monkeypatch.setattr(threads, "free_cores", lambda: 1)
    torch.set_num_threads(2)
    assert threads.fit_threads() == 2 and torch.get_num_threads() == 2  # None: torch's count stays
    assert threads.fit_threads("auto") == 1 and torch.get_num_threads() == 1  # the free cores
    assert threads.fit_threads(2) == 2 and torch.get_num_threads() == 2  # an explicit count


@pytest.mark.parametrize("bad", [0, -1, "all", 1.5, True])
def test_fit_threads_rejects_a_bad_count(bad, restore_threads):
    with pytest.raises(ValueError, match=f"threads must be a positive int, 'auto' or None, got {bad!r}"):
        threads.fit_threads(bad)


def test_threads_argument_parses_counts_and_auto():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=threads.threads_argument)
    assert parser.parse_args(["--threads", "3"]).threads == 3
    assert parser.parse_args(["--threads", "auto"]).threads == "auto"
    with pytest.raises(argparse.ArgumentTypeError, match="positive integer or 'auto', got '0'"):
        threads.threads_argument("0")
    with pytest.raises(ValueError, match="samples must be >= 1, got 0"):
        threads.free_cores(samples=0)


def _sets_wait_policy(statement: ast.stmt) -> bool:
    return "OMP_WAIT_POLICY" in ast.unparse(statement) and "PASSIVE" in ast.unparse(statement)


def _imports_torch(statement: ast.stmt) -> bool:
    if isinstance(statement, ast.Import):
        return any(alias.name.split(".")[0] in ("torch", "transformers", "hier_mamba") for alias in statement.names)
    if isinstance(statement, ast.ImportFrom):
        return (statement.module or "").split(".")[0] in ("torch", "transformers", "hier_mamba")
    return False


@pytest.mark.parametrize("script", COMMANDS)
def test_scripts_set_the_wait_policy_before_torch_loads(script):
    """OpenMP reads OMP_WAIT_POLICY once, when torch loads it: a later assignment does nothing."""
    body = ast.parse((ROOT / script).read_text()).body
    if not any(_imports_torch(s) for s in body):
        pytest.skip(f"{script} does not import torch at module level")
    before_torch = list(itertools.takewhile(lambda s: not _imports_torch(s), body))
    assert any(_sets_wait_policy(s) for s in before_torch), (
        f"{script} imports torch before os.environ.setdefault('OMP_WAIT_POLICY', 'PASSIVE')")
