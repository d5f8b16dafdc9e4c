"""Exact accuracy of a puzzle model under test-time compute settings, by givens bucket and technique level.

    python scripts/evaluate_solver.py --model models/sudoku-hard --config configs/hard/sudoku_hard.yaml \
        [--limit 300] [--setting segments=16,halt=q] [--setting segments=2,rounds=60] ... [--out results.json]

The test puzzles are the held-out split of the run config (never trained on, no symmetric copy of
them in training), or a Sudoku-Extreme-style CSV with ``--csv``. Each ``--setting`` is a comma list
of solve() keywords (hier_mamba/solving.py): segments (max_segments), halt (q | fixed | best), copies, select
(vote | q | plurality), rounds, threshold (commit_threshold). Sudoku puzzles are rated by technique (naked / hidden
singles or more, hier_mamba/data/sudoku_rating.py) and reported by rating and givens bucket, with the
mean segments run per puzzle (the compute) and the wall-clock seconds of the setting.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForTokenClassification

import hier_mamba  # noqa: F401  (registers the Auto* classes)
from hier_mamba.data import sudoku
from hier_mamba.data.sudoku_rating import LEVELS, rate
from hier_mamba.solving import solve
from hier_mamba.tasks import puzzle as task_puzzle
from hier_mamba.tasks.run import load_run_config
from hier_mamba.threads import fit_threads, threads_argument

KEYS = {"segments": ("max_segments", int), "halt": ("halt", str), "copies": ("copies", int),
        "select": ("select", str), "rounds": ("rounds", int), "threshold": ("commit_threshold", float)}


def parse_setting(text: str) -> dict:
    """'segments=16,halt=q' -> solve() keyword arguments."""
    kwargs = {}
    for part in filter(None, text.split(",")):
        key, _, value = part.partition("=")
        if key not in KEYS:
            raise SystemExit(f"--setting: unknown key {key!r} in {text!r}; known: {sorted(KEYS)}")
        name, cast = KEYS[key]
        kwargs[name] = cast(value)
    return kwargs


def givens_bucket(givens: int) -> str:
    low = 3 * (givens // 3) + 1 if givens % 3 else givens - 2  # 22-24, 25-27, 28-30, ...
    return f"{low}-{low + 2}"


def test_puzzles(args) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 81) inputs and labels of the config's held-out split (or the CSV): ``--limit`` of them from ``--offset``."""
    if args.csv:
        from hier_mamba.data.formats import load_sudoku_csv  # the published Sudoku-Extreme CSV layout

        test = load_sudoku_csv(args.csv)
    else:
        config = load_run_config(args.config)
        data_cfg = {key: value for key, value in config["data"].items() if key != "on_the_fly"}
        _, test = task_puzzle.build_datasets(data_cfg, int(config.get("seed", 0)))
    offset = getattr(args, "offset", 0)
    end = len(test) if args.limit is None else min(offset + args.limit, len(test))
    return test.inputs[offset:end], test.labels[offset:end]


def report(predictions, labels, segments, groups: dict[str, list[str]]) -> dict:
    """Exact and cell accuracy overall and per group value; mean segments."""
    correct = predictions == labels  # (n, 81)
    exact = correct.all(1).numpy()
    result = {"exact": float(exact.mean()), "cell": float(correct.float().mean()),
              "mean_segments": float(segments.float().mean()), "n": len(exact)}
    for name, values in groups.items():
        by = defaultdict(list)
        for value, ok in zip(values, exact):
            by[value].append(ok)
        result[name] = {value: {"exact": float(np.mean(oks)), "n": len(oks)} for value, oks in sorted(by.items())}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a save_pretrained folder")
    parser.add_argument("--config", type=Path, help="run config whose held-out split is the test set")
    parser.add_argument("--csv", help="a Sudoku-Extreme-style CSV (source,question,answer,rating) instead")
    parser.add_argument("--limit", type=int, help="first N test puzzles")
    parser.add_argument("--setting", action="append", default=[], help="solve() keywords, e.g. segments=16,halt=q")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--threads", type=threads_argument, help="torch CPU threads: N, or auto")
    args = parser.parse_args()
    if not (args.config or args.csv):
        raise SystemExit("give --config (its held-out split) or --csv")
    fit_threads(args.threads)
    model = AutoModelForTokenClassification.from_pretrained(args.model).eval()
    inputs, labels = test_puzzles(args)
    digits = [sudoku.from_tokens(row.numpy()) for row in inputs]
    groups = {"rating": [rate(d).level for d in digits], "givens": [givens_bucket(int((d > 0).sum())) for d in digits]}
    results = {"model": args.model, "test": str(args.csv or args.config), "levels": list(LEVELS), "settings": {}}
    for text in args.setting or ["segments=%d,halt=fixed" % model.config.halt_max_steps]:
        kwargs = parse_setting(text)
        start = time.perf_counter()
        outputs = [solve(model, inputs[i:i + args.batch_size], blank_token=sudoku.BLANK_TOKEN, **kwargs)
                   for i in range(0, len(inputs), args.batch_size)]
        seconds = time.perf_counter() - start
        predictions = torch.cat([o.predictions for o in outputs])
        segments = torch.cat([o.segments for o in outputs])
        result = report(predictions, labels, segments, groups)
        result["seconds"] = round(seconds, 1)
        results["settings"][text] = result
        by_rating = ", ".join(f"{k} {v['exact']:.1%} (n={v['n']})" for k, v in result["rating"].items())
        print(f"{text:45s} exact {result['exact']:.1%}  cell {result['cell']:.1%}  "
              f"segments {result['mean_segments']:.1f}  {seconds:.0f} s | {by_rating}", flush=True)
        if args.out:  # after every setting: a long grid stopped early keeps what it measured
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
