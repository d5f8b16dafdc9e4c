"""Path-cell accuracy of a maze model on its run config's test split, beside the copy baseline.

    python scripts/maze_path_accuracy.py --model models/maze30-hiermamba --config configs/hard/maze30.yaml \
        [--segments 1 2 4 8] [--batch-size 10] [--threads 1]

Exact accuracy is a harsh measure for long mazes (one wrong cell of a 110-step path fails the maze), so this
reports, for each fixed segment count, the share of the label's path cells the model marks as path (recall),
the share of its path marks that are right (precision), cell accuracy and exact accuracy. The copy baseline
(output = input) marks no path: recall 0 and cell accuracy = the share of non-path cells; marking every open
cell gives recall 1 and precision = path cells / open cells, also printed.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
from pathlib import Path

import torch
import yaml
from transformers import AutoModelForTokenClassification

import hier_mamba  # noqa: F401  (registers the Auto* classes)
from hier_mamba.data import maze
from hier_mamba.tasks import puzzle
from hier_mamba.threads import fit_threads, threads_argument


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--config", required=True, type=Path, help="the run's YAML config (task maze)")
    parser.add_argument("--segments", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--batch-size", type=int, default=10)
    parser.add_argument("--threads", type=threads_argument)
    args = parser.parse_args()
    fit_threads(args.threads)
    config = yaml.safe_load(args.config.read_text())
    _, test = puzzle.build_datasets(config["data"], int(config.get("seed", 0)))
    model = AutoModelForTokenClassification.from_pretrained(args.model).eval()
    x, y = test.inputs, test.labels  # (n, l)
    path = y == maze.PATH_TOKEN
    print(f"{len(x)} test mazes; path cells {path.float().mean().item():.3f} of all cells, "
          f"{path.sum().item() / (x == maze.OPEN_TOKEN).sum().item():.3f} of open cells")
    print(f"copy baseline: cell accuracy {(x == y).float().mean().item():.4f}, path recall 0")
    for count in args.segments:
        model.config.halt_max_steps, model.config.act_eval_mode = count, "max_steps"
        with torch.no_grad():
            pred = torch.cat([model(input_ids=x[i:i + args.batch_size]).logits.argmax(-1)
                              for i in range(0, len(x), args.batch_size)])  # (n, l)
        hit = ((pred == maze.PATH_TOKEN) & path).sum().item()
        marked = max((pred == maze.PATH_TOKEN).sum().item(), 1)
        print(f"segments {count:>2}: cell accuracy {(pred == y).float().mean().item():.4f}, path recall "
              f"{hit / path.sum().item():.4f}, path precision {hit / marked:.4f}, "
              f"exact {(pred == y).all(-1).float().mean().item():.3f}")


if __name__ == "__main__":
    main()
