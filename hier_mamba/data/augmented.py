"""Training sets drawn on the fly: a fixed pool of base puzzles, a fresh augmentation per example.

HRM and TRM train on 1,000 base puzzles x 1,000 stored augmentations. Here the augmentation is drawn
when an example is read, from a generator seeded by (seed, index): the same index gives the same
example (reproducible runs, resumable samplers), and ``copies`` sets the virtual size
``len(pool) * copies`` without storing anything. No puzzle identifier is fed to the model (HRM's
puzzle embedding lets a model memorise its training pool).

Sudoku (:class:`OnTheFlySudoku`): a random validity-preserving transform (digit relabelling, band,
stack, row-in-band and column-in-stack shuffles, transpose), then, with probability ``reveal_prob``,
a *partial reveal*: each blank is filled with its solution digit with probability u ~ U(0, 1). The
reveals are a curriculum built into every batch: a hard puzzle with some of its blanks filled is an
easier puzzle on the way to its solution, exactly the states an iterative solver passes through.

Mazes (:class:`OnTheFlyMaze`): one of the 8 rotations/reflections per example.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from . import maze, sudoku


class _OnTheFly(Dataset):
    """Base: ``len(inputs) * copies`` examples, example i from base ``i % n`` and generator (seed, i).

    inputs, labels: (n, seq_len) token arrays of the base puzzles (the layout of the task's module).
    """

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, copies: int, seed: int,
                 renderer: Callable[[Sequence[int]], str], vocab_size: int, name: str):
        if inputs.shape != labels.shape or inputs.ndim != 2 or len(inputs) == 0:
            raise ValueError(f"inputs {inputs.shape} and labels {labels.shape} must be equal, non-empty (n, seq_len)")
        if not isinstance(copies, int) or copies < 1:
            raise ValueError(f"copies must be a positive int, got {copies!r}")
        self.inputs, self.labels = np.asarray(inputs, np.int64), np.asarray(labels, np.int64)
        self.copies, self.seed, self.vocab_size, self.name = copies, seed, vocab_size, name
        self.seq_len = inputs.shape[1]
        self._renderer = renderer

    def __len__(self) -> int:
        return len(self.inputs) * self.copies

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} examples")
        rng = np.random.default_rng([self.seed, index])
        base = index % len(self.inputs)
        inputs, labels = self._draw(self.inputs[base], self.labels[base], rng)
        return {"input_ids": torch.as_tensor(inputs, dtype=torch.long),
                "labels": torch.as_tensor(labels, dtype=torch.long)}

    def _draw(self, inputs: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
        raise NotImplementedError

    def render(self, tokens) -> str:
        """Tokens (seq_len,) -> a readable grid."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        return self._renderer(tokens)


class OnTheFlySudoku(_OnTheFly):
    """Sudoku examples: random transform, then a partial reveal with probability ``reveal_prob`` (module docstring).

    inputs, labels: (n, 81) tokens (``sudoku.to_tokens``: 1 blank, 2..10 digits).
    """

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, copies: int = 1000, seed: int = 0,
                 reveal_prob: float = 0.0):
        if not 0.0 <= reveal_prob <= 1.0:
            raise ValueError(f"reveal_prob must lie in [0, 1], got {reveal_prob!r}")
        super().__init__(inputs, labels, copies, seed, sudoku.render, sudoku.VOCAB_SIZE, "sudoku-on-the-fly")
        self.reveal_prob = reveal_prob

    def _draw(self, inputs, labels, rng):
        # 1. The same random transform on puzzle and solution (digits: tokens - 1, blanks 0).
        transform = sudoku.random_transform(rng)
        puzzle = sudoku.apply_transform(sudoku.from_tokens(inputs), transform).astype(np.int64)  # (81,)
        solution = sudoku.apply_transform(sudoku.from_tokens(labels), transform).astype(np.int64)  # (81,)
        # 2. Partial reveal: each blank shows its solution digit with probability u ~ U(0, 1).
        if rng.random() < self.reveal_prob:
            shown = (puzzle == 0) & (rng.random(81) < rng.random())
            puzzle = np.where(shown, solution, puzzle)
        return sudoku.to_tokens(puzzle), sudoku.to_tokens(solution)


class OnTheFlyMaze(_OnTheFly):
    """Maze examples: one of the 8 dihedral symmetries, drawn uniformly. inputs, labels: (n, size * size)."""

    def __init__(self, inputs: np.ndarray, labels: np.ndarray, copies: int = 8, seed: int = 0):
        super().__init__(inputs, labels, copies, seed, maze.render, maze.VOCAB_SIZE, "maze-on-the-fly")

    def _draw(self, inputs, labels, rng):
        k = int(rng.integers(maze.N_SYMMETRIES))
        side = int(round(self.seq_len ** 0.5))
        return (maze.dihedral(inputs.reshape(side, side), k).reshape(-1),  # (size * size,)
                maze.dihedral(labels.reshape(side, side), k).reshape(-1))
