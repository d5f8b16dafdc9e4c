"""Torch datasets over the local puzzle generators, split at the puzzle level.

Split rule: the test set and the training set are drawn from two independent random streams of
the same seed (so the test set does not depend on ``n_train``), and a training base puzzle is
kept only if no test or earlier training base puzzle is equivalent to it up to the task's
symmetries (Sudoku: :func:`~hier_mamba.data.sudoku.symmetry_invariant`; maze: the dihedral
:func:`~hier_mamba.data.maze.canonical_key`). Augmentation happens *after* the split and only
on the training side, so no augmented copy of a test puzzle can appear in training. The test set
holds the base puzzles unaugmented.

Every example is a dict ``{"input_ids": LongTensor(seq_len), "labels": LongTensor(seq_len)}``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from . import maze, sudoku

logger = logging.getLogger(__name__)

_TEST_STREAM, _TRAIN_STREAM, _AUGMENT_STREAM = 1, 2, 3


class PuzzleDataset(Dataset):
    """Fixed-length token sequences with per-cell labels.

    inputs, labels: (n, seq_len) integer arrays.
    base_ids:       (n,) index of the base (unaugmented) puzzle each example comes from.
    extras:         per-example arrays of shape (n,), e.g. "givens", "backtracks", "path_length".
    vocab_size:     number of token ids (pad = 0 included).
    renderer:       tokens (seq_len,) -> human-readable multi-line string.
    """

    def __init__(
        self,
        inputs: np.ndarray,
        labels: np.ndarray,
        *,
        vocab_size: int,
        renderer: Callable[[Sequence[int]], str],
        base_ids: np.ndarray | None = None,
        extras: dict[str, np.ndarray] | None = None,
        name: str = "puzzles",
    ) -> None:
        if inputs.shape != labels.shape or inputs.ndim != 2:
            raise ValueError(f"inputs {inputs.shape} and labels {labels.shape} must be equal (n, seq_len)")
        self.inputs = torch.as_tensor(inputs, dtype=torch.long)  # (n, seq_len)
        self.labels = torch.as_tensor(labels, dtype=torch.long)  # (n, seq_len)
        self.base_ids = np.arange(len(inputs)) if base_ids is None else np.asarray(base_ids)
        self.extras = {k: np.asarray(v) for k, v in (extras or {}).items()}
        self.vocab_size = vocab_size
        self.seq_len = inputs.shape[1]
        self.name = name
        self._renderer = renderer

    def __len__(self) -> int:
        return self.inputs.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.inputs[index], "labels": self.labels[index]}

    def render(self, tokens: Sequence[int] | torch.Tensor | np.ndarray) -> str:
        """Tokens (seq_len,) -> a readable grid (puzzle, label or model prediction)."""
        if isinstance(tokens, torch.Tensor):
            tokens = tokens.detach().cpu().numpy()
        return self._renderer(tokens)

    def render_example(self, index: int) -> str:
        """Input and label of example ``index``, one above the other."""
        example = self[index]
        return f"input:\n{self.render(example['input_ids'])}\nlabel:\n{self.render(example['labels'])}"


class Splits(NamedTuple):
    """Train and test datasets sharing vocabulary and sequence length."""

    train: PuzzleDataset
    test: PuzzleDataset


def _stream_seed(seed: int, stream: int) -> int:
    """An independent 64-bit seed for sub-stream ``stream`` of ``seed``."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, np.uint64)[0])


MAX_DUPLICATE_RATIO = 20


def _draw_unique(
    n: int, draw: Callable[[], object], key: Callable[[object], object], seen: set
) -> list:
    """Draw until ``n`` items whose ``key`` is not in ``seen`` (``seen`` is updated).

    Raises ValueError when duplicates outnumber the wanted items ``MAX_DUPLICATE_RATIO`` to one:
    the puzzle space is too small for ``n`` distinct puzzles (e.g. thousands of 7 x 7 mazes).
    """
    items, rejected = [], 0
    while len(items) < n:
        item = draw()
        k = key(item)
        if k in seen:
            rejected += 1
            if rejected > MAX_DUPLICATE_RATIO * max(n, 1):
                raise ValueError(f"found only {len(items)} of n={n} distinct puzzles after {rejected} duplicates: "
                                 "ask for fewer puzzles or a larger size")
            continue
        seen.add(k)
        items.append(item)
    if rejected:
        logger.info("rejected %d duplicate (up to symmetry) base puzzles", rejected)
    return items


def _draw_splits(n_test: int, n_train: int, draw_from: Callable[[random.Random], Callable[[], object]],
                 key: Callable[[object], object], seed: int) -> tuple[list, list, np.random.Generator]:
    """Distinct test puzzles, then distinct train puzzles none of which is equivalent (same ``key``)
    to a test puzzle, each from its own seed stream; and the generator for the augmentations."""
    seen: set = set()
    test = _draw_unique(n_test, draw_from(random.Random(_stream_seed(seed, _TEST_STREAM))), key, seen)
    train = _draw_unique(n_train, draw_from(random.Random(_stream_seed(seed, _TRAIN_STREAM))), key, seen)
    return test, train, np.random.default_rng(_stream_seed(seed, _AUGMENT_STREAM))


def _token_matrix(rows: list[np.ndarray], seq_len: int) -> np.ndarray:
    """Stack token grids into (n, seq_len) int64 (n = 0 allowed)."""
    return np.array(rows, dtype=np.int64).reshape(len(rows), seq_len)


def _cache_path(cache_dir: str | Path | None, kind: str, params: dict) -> Path | None:
    if cache_dir is None:
        return None
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:16]
    return Path(cache_dir) / f"{kind}_{digest}.npz"


def _save(path: Path, arrays: dict[str, dict[str, np.ndarray]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    flat = {f"{split}/{k}": v for split, d in arrays.items() for k, v in d.items()}
    tmp = path.with_suffix(f".{os.getpid()}.tmp.npz")  # per process: parallel runs may build the same splits
    np.savez_compressed(tmp, **flat)
    tmp.replace(path)  # atomic: a reader sees the old file or the whole new one
    logger.info("cached puzzle splits at %s", path)


def _load(path: Path) -> dict[str, dict[str, np.ndarray]]:
    arrays: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    with np.load(path) as data:
        for name in data.files:
            split, key = name.split("/", 1)
            arrays[split][key] = data[name]
    return arrays


def _to_splits(arrays: dict[str, dict[str, np.ndarray]], vocab_size: int, renderer, kind: str) -> Splits:
    datasets = []
    for split in ("train", "test"):
        d = dict(arrays[split])
        inputs, labels, base_ids = d.pop("inputs"), d.pop("labels"), d.pop("base_ids")
        datasets.append(
            PuzzleDataset(inputs, labels, vocab_size=vocab_size, renderer=renderer,
                          base_ids=base_ids, extras=d, name=f"{kind}-{split}")
        )
    return Splits(*datasets)


def _build_or_load(kind, params, cache_dir, build, vocab_size, renderer) -> Splits:
    path = _cache_path(cache_dir, kind, params)
    if path is not None and path.exists():
        logger.info("loading cached puzzle splits from %s", path)
        return _to_splits(_load(path), vocab_size, renderer, kind)
    arrays = build()
    if path is not None:
        _save(path, arrays)
    return _to_splits(arrays, vocab_size, renderer, kind)


def build_sudoku_splits(
    n_train: int,
    n_test: int,
    seed: int = 0,
    min_givens: int = 24,
    max_givens: int = 36,
    augment_per_puzzle: int = 0,
    min_backtracks: int = 0,
    cache_dir: str | Path | None = None,
) -> Splits:
    """Sudoku train/test datasets, split at the puzzle level (see module docstring).

    n_train, n_test:     number of base puzzles per split.
    min/max_givens:      given-count range (difficulty by clues).
    augment_per_puzzle:  augmented copies added per training puzzle (train size n_train * (1 + k)).
    min_backtracks:      keep only puzzles whose solver backtrack count is at least this.
    cache_dir:           if given, the arrays are stored/reloaded as a .npz keyed by the params.
    Extras per example: "givens", "backtracks". seq_len = 81, vocab_size = 11.
    """
    params = dict(n_train=n_train, n_test=n_test, seed=seed, min_givens=min_givens,
                  max_givens=max_givens, augment_per_puzzle=augment_per_puzzle,
                  min_backtracks=min_backtracks)

    def draw_from(rng: random.Random) -> Callable[[], sudoku.SudokuPuzzle]:
        def draw() -> sudoku.SudokuPuzzle:
            while True:
                p = sudoku.generate_puzzle(rng, min_givens, max_givens)
                if p.backtracks >= min_backtracks:
                    return p
        return draw

    def key(p: sudoku.SudokuPuzzle) -> tuple:
        return sudoku.symmetry_invariant(p.puzzle)

    def build() -> dict[str, dict[str, np.ndarray]]:
        test, train, aug_rng = _draw_splits(n_test, n_train, draw_from, key, seed)
        rows = {"train": [], "test": []}
        for split, base, copies in (("test", test, 0), ("train", train, augment_per_puzzle)):
            for base_id, p in enumerate(base):
                rows[split].append((p.puzzle, p.solution, base_id, p))
                for _ in range(copies):
                    aug_puzzle, aug_solution = sudoku.augment(p.puzzle, p.solution, aug_rng)
                    rows[split].append((aug_puzzle, aug_solution, base_id, p))
        return {
            split: {
                "inputs": _token_matrix([sudoku.to_tokens(r[0]) for r in rs], sudoku.SEQ_LEN),
                "labels": _token_matrix([sudoku.to_tokens(r[1]) for r in rs], sudoku.SEQ_LEN),
                "base_ids": np.array([r[2] for r in rs], dtype=np.int64),
                "givens": np.array([r[3].givens for r in rs], dtype=np.int64),
                "backtracks": np.array([r[3].backtracks for r in rs], dtype=np.int64),
            }
            for split, rs in rows.items()
        }

    return _build_or_load("sudoku", params, cache_dir, build, sudoku.VOCAB_SIZE, sudoku.render)


def build_maze_splits(
    n_train: int,
    n_test: int,
    size: int = 15,
    seed: int = 0,
    augment_per_puzzle: int = 0,
    loop_fraction: float = 0.15,
    cache_dir: str | Path | None = None,
    min_path_length: int = 0,
) -> Splits:
    """Maze train/test datasets, split at the maze level (see module docstring).

    augment_per_puzzle: distinct non-identity dihedral copies per training maze, 0..7.
    min_path_length:    shortest paths of at least this many steps (Maze-Hard: 111 on 30 x 30).
    Extras per example: "path_length", "symmetry" (dihedral index applied, 0 = none).
    seq_len = size * size, vocab_size = 6.
    """
    if not 0 <= augment_per_puzzle < maze.N_SYMMETRIES:
        raise ValueError(f"augment_per_puzzle must lie in 0..7 for mazes, got {augment_per_puzzle}")
    params = dict(n_train=n_train, n_test=n_test, size=size, seed=seed,
                  augment_per_puzzle=augment_per_puzzle, loop_fraction=loop_fraction)
    if min_path_length:
        params["min_path_length"] = min_path_length  # only when set: earlier caches keep their keys

    def draw_from(rng: random.Random) -> Callable[[], maze.Maze]:
        return lambda: maze.generate_maze(size, rng, loop_fraction, min_path_length)

    def key(m: maze.Maze) -> bytes:
        return maze.canonical_key(m.inputs)

    def build() -> dict[str, dict[str, np.ndarray]]:
        test, train, aug_rng = _draw_splits(n_test, n_train, draw_from, key, seed)
        rows = {"train": [], "test": []}
        for split, base, copies in (("test", test, 0), ("train", train, augment_per_puzzle)):
            for base_id, m in enumerate(base):
                symmetries = [0] + (1 + aug_rng.permutation(maze.N_SYMMETRIES - 1)[:copies]).tolist()
                for k in symmetries:
                    pair = maze.dihedral(m.inputs, k), maze.dihedral(m.labels, k)
                    rows[split].append((*pair, base_id, m, k))
        return {
            split: {
                "inputs": _token_matrix([r[0] for r in rs], size * size),
                "labels": _token_matrix([r[1] for r in rs], size * size),
                "base_ids": np.array([r[2] for r in rs], dtype=np.int64),
                "path_length": np.array([r[3].path_length for r in rs], dtype=np.int64),
                "symmetry": np.array([r[4] for r in rs], dtype=np.int64),
            }
            for split, rs in rows.items()
        }

    return _build_or_load("maze", params, cache_dir, build, maze.VOCAB_SIZE, maze.render)
