"""Sudoku and maze solving with HierMambaForTokenClassification (ACT): the ``sudoku`` and ``maze`` tasks.

Each example maps a puzzle grid to its solution grid, token for token (layouts in
hier_mamba/data: Sudoku 0 pad, 1 blank, 2..10 digits; maze 0 pad, 1 wall, 2 open, 3 start,
4 goal, 5 path). The data is generated locally and split at the puzzle level.

data config keys:
    task                "sudoku" | "maze" (required; the same as the run config's top-level task)
    n_train, n_test     number of base puzzles per split (required)
    augment_per_puzzle  augmented copies per training puzzle (default 0)
    cache_dir           store/reload the generated arrays as .npz (default: none)
    sudoku only:        min_givens, max_givens, min_backtracks
    maze only:          size, loop_fraction, min_path_length
    demo_index          test example shown by demo() (default 0)
    on_the_fly          {copies: N, reveal_prob: p, seed: s}: the training split becomes an on-the-fly set of
                        N fresh augmentations per base puzzle (Sudoku: with partial reveals of probability p;
                        hier_mamba/data/augmented.py) instead of stored copies
    test_csv            evaluate on a file in the published CSV format instead of the generated test split
                        (Sudoku-Extreme or Maze-Hard; a local path or a hub dataset name, hier_mamba/data/formats.py);
                        its ``rating`` column is kept in ``extras``. test_csv_limit: read only its first N rows

The tokens are grid cells, not text: these tasks have no tokenizer (``load_tokenizer`` returns None).
"""

from __future__ import annotations

import inspect

import numpy as np
import torch
from torch.utils.data import Dataset
from transformers import PreTrainedModel

from hier_mamba import HierMambaConfig, HierMambaForTokenClassification
from hier_mamba.act import IGNORE_INDEX
from hier_mamba.data import build_maze_splits, build_sudoku_splits
from hier_mamba.data.augmented import OnTheFlyMaze, OnTheFlySudoku
from hier_mamba.data.formats import LOADERS

BUILDERS = {"sudoku": build_sudoku_splits, "maze": build_maze_splits}
PAD_TOKEN = 0  # both tasks reserve token 0 for padding
_NOT_BUILDER_KEYS = ("task", "demo_index", "on_the_fly", "test_csv", "test_csv_limit")


def load_tokenizer(data_cfg: dict) -> None:
    """Puzzles are token grids, not text: no tokenizer."""
    return None


def build_model(model_cfg: dict, tokenizer: None = None) -> PreTrainedModel:
    """A freshly initialised HierMambaForTokenClassification from HierMambaConfig keyword arguments."""
    return HierMambaForTokenClassification(HierMambaConfig(**model_cfg))


def build_datasets(data_cfg: dict, seed: int, tokenizer: None = None) -> tuple[Dataset, Dataset]:
    """(train, test) PuzzleDatasets of ``data_cfg["task"]``; ``seed`` fixes the puzzles and the split."""
    task = data_cfg.get("task")
    if task not in BUILDERS:
        raise ValueError(f"data.task must be one of {sorted(BUILDERS)}, got {task!r}")
    builder = BUILDERS[task]
    kwargs = {key: value for key, value in data_cfg.items() if key not in _NOT_BUILDER_KEYS}
    accepted = set(inspect.signature(builder).parameters) - {"seed"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(f"unknown data keys for task {task!r}: {unknown}; accepted: {sorted(accepted)}")
    splits = builder(**kwargs, seed=seed)
    test = splits.test
    if data_cfg.get("test_csv") is not None:
        test = LOADERS[task](data_cfg["test_csv"], limit=data_cfg.get("test_csv_limit"))
    if data_cfg.get("on_the_fly") is None:
        return splits.train, test
    return _on_the_fly(task, splits.train, dict(data_cfg["on_the_fly"]), seed), test


def _on_the_fly(task: str, train, options: dict, seed: int) -> Dataset:
    """The training split's base puzzles (symmetry 0 / unaugmented rows) as an on-the-fly augmented set."""
    base = np.flatnonzero(np.r_[True, train.base_ids[1:] != train.base_ids[:-1]])  # first row of each base puzzle
    inputs, labels = train.inputs[base].numpy(), train.labels[base].numpy()
    options.setdefault("seed", seed)  # its own seed: a later stage draws new copies of the same puzzles
    if task == "sudoku":
        return OnTheFlySudoku(inputs, labels, **options)
    return OnTheFlyMaze(inputs, labels, **options)


def collate(batch: list[dict]) -> dict:
    """Stack examples into (b, l) input_ids and labels.

    Puzzles of one task share a length; if lengths differ, sequences are right-padded (input 0,
    label -100) and an attention_mask (b, l) marks the real tokens.
    """
    lengths = [len(example["input_ids"]) for example in batch]
    if len(set(lengths)) == 1:
        return {key: torch.stack([example[key] for example in batch]) for key in ("input_ids", "labels")}
    longest = max(lengths)
    input_ids = torch.full((len(batch), longest), PAD_TOKEN, dtype=torch.long)
    labels = torch.full((len(batch), longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((len(batch), longest), dtype=torch.long)
    for row, (example, length) in enumerate(zip(batch, lengths)):
        input_ids[row, :length] = example["input_ids"]
        labels[row, :length] = example["labels"]
        attention_mask[row, :length] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": attention_mask}


def puzzle_accuracy(logits_or_predictions: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """Cell accuracy (over labelled cells) and exact accuracy (every labelled cell right).

    logits_or_predictions: (n, l, vocab) logits or (n, l) predicted tokens; labels: (n, l), -100 ignored.
    """
    predictions = np.asarray(logits_or_predictions)
    if predictions.ndim == 3:
        predictions = predictions.argmax(-1)
    labels = np.asarray(labels)
    scored = labels != IGNORE_INDEX  # (n, l)
    correct = (predictions == labels) & scored
    return {
        "cell_accuracy": float(correct.sum() / max(int(scored.sum()), 1)),
        "exact_accuracy": float(np.mean(correct.sum(-1) == scored.sum(-1))),
    }


def compute_metrics(eval_pred) -> dict[str, float]:
    """Trainer metrics: cell accuracy, exact accuracy and the mean number of ACT segments used.

    The predictions are the model output's tensors in field order: logits, q_halt_logits,
    q_continue_logits, steps, then the component losses.
    """
    predictions = eval_pred.predictions
    logits = predictions[0] if isinstance(predictions, (tuple, list)) else predictions
    metrics = puzzle_accuracy(logits, eval_pred.label_ids)
    if isinstance(predictions, (tuple, list)) and len(predictions) > 3:
        metrics["mean_steps"] = float(np.mean(predictions[3]))
    return metrics


@torch.no_grad()
def demo(model: PreTrainedModel, eval_dataset, data_cfg: dict, tokenizer: None = None) -> str:
    """One test puzzle, the model's answer and the solution, rendered as grids, with cell errors counted."""
    index = int(data_cfg.get("demo_index", 0))
    example = eval_dataset[index]
    device = next(model.parameters()).device
    model.eval()
    output = model(input_ids=example["input_ids"][None].to(device))
    prediction = output.logits.argmax(-1)[0].cpu()  # (l,)
    labels = example["labels"]
    scored = labels != IGNORE_INDEX
    wrong = int(((prediction != labels) & scored).sum())
    sections = [
        (f"{data_cfg.get('task', 'puzzle')} #{index}", eval_dataset.render(example["input_ids"])),
        (f"prediction ({wrong} wrong cells of {int(scored.sum())}, {int(output.steps[0])} segments)",
         eval_dataset.render(prediction)),
        ("solution", eval_dataset.render(labels)),
    ]
    return "\n\n".join(f"{title}:\n{grid}" for title, grid in sections)
