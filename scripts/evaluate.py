"""Evaluate a trained puzzle model on its test split: accuracy against the number of ACT segments.

    python scripts/evaluate.py --model runs/sudoku_tiny/final --config configs/sudoku_tiny.yaml \
        [--segments 1 2 4 8 16] [--batch-size 64] [--limit N] [--json results.json]

The test split is rebuilt from the run config's ``data`` section and ``seed`` (the same puzzles
train.py held out). Both evaluation modes of hier_mamba/tasks/puzzle_eval.py are reported for every
segment count N: ``max_steps`` (exactly N segments) and ``q_halt`` (the Q-head halts, at most N).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import json
from pathlib import Path

import yaml

from hier_mamba.tasks import puzzle
from hier_mamba.tasks.puzzle_eval import evaluate_checkpoint
from hier_mamba.threads import fit_threads, threads_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a save_pretrained directory")
    parser.add_argument("--config", required=True, type=Path, help="the run's YAML config (task, data, seed)")
    parser.add_argument("--segments", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="segment counts to test")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="evaluate only the first N test puzzles")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--threads", type=threads_argument, help="torch CPU threads: N, or auto (the cores free now)")
    args = parser.parse_args(argv)
    if any(count < 1 for count in args.segments):
        parser.error(f"--segments must be positive, got {args.segments}")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    fit_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    _, test_set = puzzle.build_datasets(config["data"], int(config.get("seed", 0)))
    results = {**evaluate_checkpoint(args.model, test_set, args.segments, args.batch_size, args.limit),
               "config": str(args.config)}
    trained = results["trained_segments"]
    print(f"{results['test_puzzles']} test puzzles; * = halt_max_steps used in training ({trained})")
    print(f"{'segments':>9} | {'max_steps: cell':>15} {'exact':>7} | "
          f"{'q_halt: cell':>12} {'exact':>7} {'mean steps':>10}")
    for count in results["segments"]:
        fixed, halted = results["max_steps"][count], results["q_halt"][count]
        label = f"{count}{'*' if count == trained else ' '}"
        print(f"{label:>9} | {fixed['cell_accuracy']:>15.4f} {fixed['exact_accuracy']:>7.4f} | "
              f"{halted['cell_accuracy']:>12.4f} {halted['exact_accuracy']:>7.4f} {halted['mean_steps']:>10.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
