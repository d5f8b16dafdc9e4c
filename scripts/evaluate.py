"""Evaluate a trained puzzle model on its test split: accuracy against the number of ACT segments.

    python scripts/evaluate.py --model runs/sudoku_tiny/final --config configs/sudoku_tiny.yaml \
        [--segments 1 2 4 8 16] [--batch-size 64] [--limit N] [--json results.json]

The test split is rebuilt from the run config's ``data`` section and ``seed`` (the same puzzles
train.py held out). Two evaluation modes are reported for every segment count N:
    max_steps  every puzzle runs exactly N segments (HRM's evaluation). One pass with N = max(segments)
               gives all counts: segment n of a long run equals an n-segment run.
    q_halt     a puzzle stops when its Q-head says halt (q_halt > q_continue), at most N segments;
               reports the mean number of segments used.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import yaml
from transformers import AutoConfig, AutoModelForTokenClassification

import hier_mamba  # noqa: F401  (registers the Auto* classes)

sys.path.insert(0, str(Path(__file__).resolve().parent))
import task_puzzle  # noqa: E402  (scripts/ is not a package)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="a save_pretrained directory")
    parser.add_argument("--config", required=True, type=Path, help="the run's YAML config (task, data, seed)")
    parser.add_argument("--segments", type=int, nargs="+", default=[1, 2, 4, 8, 16], help="segment counts to test")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--limit", type=int, help="evaluate only the first N test puzzles")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if any(count < 1 for count in args.segments):
        parser.error(f"--segments must be positive, got {args.segments}")
    return args


def batches(dataset, batch_size: int, limit: int | None):
    """Collated batches over the first ``limit`` examples (all when None)."""
    size = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, size, batch_size):
        yield task_puzzle.collate([dataset[i] for i in range(start, min(start + batch_size, size))])


class Tally:
    """Running counts of correct cells, exactly solved puzzles and segments used."""

    def __init__(self):
        self.cells = self.scored = self.exact = self.puzzles = self.steps = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, steps: torch.Tensor) -> None:
        """logits: (b, l, vocab); labels: (b, l) with -100 ignored; steps: (b,)."""
        scored = labels != -100
        correct = (logits.argmax(-1) == labels) & scored
        self.cells += int(correct.sum())
        self.scored += int(scored.sum())
        self.exact += int((correct.sum(-1) == scored.sum(-1)).sum())
        self.puzzles += labels.shape[0]
        self.steps += int(steps.sum())

    def result(self) -> dict[str, float]:
        return {"cell_accuracy": self.cells / max(self.scored, 1), "exact_accuracy": self.exact / max(self.puzzles, 1),
                "mean_steps": self.steps / max(self.puzzles, 1)}


@torch.no_grad()
def evaluate_max_steps(model, dataset, segments: list[int], batch_size: int, limit: int | None) -> dict:
    """Accuracy when every puzzle runs exactly N segments, for each N in ``segments`` (one long pass)."""
    device = next(model.parameters()).device
    tallies = {count: Tally() for count in segments}
    for batch in batches(dataset, batch_size, limit):
        input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
        mask = batch.get("attention_mask")
        output = model(input_ids, attention_mask=None if mask is None else mask.to(device),
                       num_segments=max(segments), return_all_segments=True)
        for count, tally in tallies.items():
            tally.add(output.all_logits[count - 1], labels, torch.full_like(output.steps, count))
    return {count: tally.result() for count, tally in tallies.items()}


@torch.no_grad()
def evaluate_q_halt(model, dataset, segments: list[int], batch_size: int, limit: int | None) -> dict:
    """Accuracy and mean segments used when the Q-head decides, capped at each N in ``segments``."""
    device = next(model.parameters()).device
    results = {}
    for count in segments:
        tally = Tally()
        for batch in batches(dataset, batch_size, limit):
            input_ids, labels = batch["input_ids"].to(device), batch["labels"].to(device)
            mask = batch.get("attention_mask")
            output = model(input_ids, attention_mask=None if mask is None else mask.to(device), num_segments=count)
            tally.add(output.logits, labels, output.steps)
        results[count] = tally.result()
    return results


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    config = yaml.safe_load(args.config.read_text())
    _, test_set = task_puzzle.build_datasets(config["data"], int(config.get("seed", 0)))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    trained = AutoConfig.from_pretrained(args.model).halt_max_steps
    segments = sorted(set(args.segments) | {trained})  # the training setting is always reported
    results = {"model": str(args.model), "config": str(args.config), "trained_segments": trained,
               "test_puzzles": min(len(test_set), args.limit or len(test_set))}
    for mode, evaluate in (("max_steps", evaluate_max_steps), ("q_halt", evaluate_q_halt)):
        # from_pretrained's keyword arguments override the saved config (here: the halting rule).
        model = AutoModelForTokenClassification.from_pretrained(args.model, act_eval_mode=mode).to(device).eval()
        results[mode] = evaluate(model, test_set, segments, args.batch_size, args.limit)
    print(f"{results['test_puzzles']} test puzzles; * = halt_max_steps used in training ({trained})")
    print(f"{'segments':>9} | {'max_steps: cell':>15} {'exact':>7} | "
          f"{'q_halt: cell':>12} {'exact':>7} {'mean steps':>10}")
    for count in segments:
        fixed, halted = results["max_steps"][count], results["q_halt"][count]
        label = f"{count}{'*' if count == trained else ' '}"
        print(f"{label:>9} | {fixed['cell_accuracy']:>15.4f} {fixed['exact_accuracy']:>7.4f} | "
              f"{halted['cell_accuracy']:>12.4f} {halted['exact_accuracy']:>7.4f} {halted['mean_steps']:>10.2f}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
