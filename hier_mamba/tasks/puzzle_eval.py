"""Puzzle accuracy against the number of ACT segments, in the two evaluation modes of HRM.

    max_steps  every puzzle runs exactly N segments (HRM's evaluation). One pass with N = max(segments)
               gives all counts: segment n of a long run equals an n-segment run.
    q_halt     a puzzle stops when its Q-head says halt (q_halt > q_continue), at most N segments;
               reports the mean number of segments used.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import AutoConfig, AutoModelForTokenClassification, PreTrainedModel

from ..act import IGNORE_INDEX
from .puzzle import collate


def batches(dataset: Dataset, batch_size: int, limit: int | None) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches over the first ``limit`` examples (all when None)."""
    size = len(dataset) if limit is None else min(limit, len(dataset))
    for start in range(0, size, batch_size):
        yield collate([dataset[i] for i in range(start, min(start + batch_size, size))])


class Tally:
    """Running counts of correct cells, exactly solved puzzles and segments used."""

    def __init__(self):
        self.cells = self.scored = self.exact = self.puzzles = self.steps = 0

    def add(self, logits: torch.Tensor, labels: torch.Tensor, steps: torch.Tensor) -> None:
        """logits: (b, l, vocab); labels: (b, l) with -100 ignored; steps: (b,)."""
        scored = labels != IGNORE_INDEX
        correct = (logits.argmax(-1) == labels) & scored
        self.cells += int(correct.sum())
        self.scored += int(scored.sum())
        self.exact += int((correct.sum(-1) == scored.sum(-1)).sum())
        self.puzzles += labels.shape[0]
        self.steps += int(steps.sum())

    def result(self) -> dict[str, float]:
        """cell_accuracy, exact_accuracy and mean_steps over everything added so far."""
        return {"cell_accuracy": self.cells / max(self.scored, 1), "exact_accuracy": self.exact / max(self.puzzles, 1),
                "mean_steps": self.steps / max(self.puzzles, 1)}


def _forward(model: PreTrainedModel, batch: dict, **kwargs):
    device = next(model.parameters()).device
    mask = batch.get("attention_mask")
    return model(batch["input_ids"].to(device), attention_mask=None if mask is None else mask.to(device), **kwargs)


@torch.no_grad()
def evaluate_max_steps(model: PreTrainedModel, dataset: Dataset, segments: list[int], batch_size: int,
                       limit: int | None) -> dict[int, dict[str, float]]:
    """Accuracy when every puzzle runs exactly N segments, for each N in ``segments`` (one long pass)."""
    tallies = {count: Tally() for count in segments}
    for batch in batches(dataset, batch_size, limit):
        output = _forward(model, batch, num_segments=max(segments), return_all_segments=True)
        labels = batch["labels"].to(output.steps.device)
        for count, tally in tallies.items():
            tally.add(output.all_logits[count - 1], labels, torch.full_like(output.steps, count))
    return {count: tally.result() for count, tally in tallies.items()}


@torch.no_grad()
def evaluate_q_halt(model: PreTrainedModel, dataset: Dataset, segments: list[int], batch_size: int,
                    limit: int | None) -> dict[int, dict[str, float]]:
    """Accuracy and mean segments used when the Q-head decides, capped at each N in ``segments``."""
    results = {}
    for count in segments:
        tally = Tally()
        for batch in batches(dataset, batch_size, limit):
            output = _forward(model, batch, num_segments=count)
            tally.add(output.logits, batch["labels"].to(output.logits.device), output.steps)
        results[count] = tally.result()
    return results


def evaluate_checkpoint(model_path: str | Path, test_set: Dataset, segments: list[int], batch_size: int = 64,
                        limit: int | None = None, device: str | None = None) -> dict:
    """Both modes on a saved puzzle model, at every count in ``segments`` and at its training setting.

    Returns ``{"model", "trained_segments", "segments", "test_puzzles", "max_steps": {N: metrics},
    "q_halt": {N: metrics}}`` with metrics as in :meth:`Tally.result`.
    """
    if not segments or any(count < 1 for count in segments):
        raise ValueError(f"segments must be positive counts, got {segments}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    trained = AutoConfig.from_pretrained(model_path).halt_max_steps
    segments = sorted(set(segments) | {trained})  # the training setting is always reported
    results = {"model": str(model_path), "trained_segments": trained, "segments": segments,
               "test_puzzles": min(len(test_set), limit or len(test_set))}
    for mode, evaluate in (("max_steps", evaluate_max_steps), ("q_halt", evaluate_q_halt)):
        # from_pretrained's keyword arguments override the saved config (here: the halting rule).
        model = AutoModelForTokenClassification.from_pretrained(model_path, act_eval_mode=mode).to(device).eval()
        results[mode] = evaluate(model, test_set, segments, batch_size, limit)
    return results
