"""Puzzle sets drawn by difficulty, as rows of the published CSV formats (hier_mamba/data/formats.py).

* :func:`sudoku_rows`: uniquely solvable Sudokus with givens in a range, a technique level among
  ``naked`` / ``hidden`` / ``more`` (hier_mamba/data/sudoku_rating.py) and at least ``min_backtracks``
  solver backtracks (the ``rating`` column, as Sudoku-Extreme's).
* :func:`maze_rows`: ``size`` x ``size`` mazes whose unique shortest path is longer than
  ``path_longer_than`` steps (Maze-Hard: 30 x 30, > 110; the ``rating`` column is the path length).

Both skip puzzles equivalent, up to the task's symmetries, to one already drawn or to one of
``exclude`` (e.g. a test file, so a training set drawn with another seed cannot hold a transformed
copy of a test puzzle). Draws are deterministic in ``seed``.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable, Iterator

from . import maze, sudoku
from .formats import maze_tokens_to_row, sudoku_tokens_to_row
from .sudoku_rating import LEVELS, rate

logger = logging.getLogger(__name__)

Row = tuple[str, str, str, int]  # source, question, answer, rating


def sudoku_rows(n: int, seed: int = 0, min_givens: int = 17, max_givens: int = 30,
                levels: Iterable[str] = LEVELS, min_backtracks: int = 0,
                exclude: Iterable[Iterable[int]] = (), max_draws: int | None = None) -> Iterator[Row]:
    """``n`` Sudoku rows (module docstring); ``exclude``: digit grids (81,), 0 = blank, to stay apart from.

    Raises RuntimeError after ``max_draws`` draws (default 1000 n) without ``n`` accepted puzzles.
    """
    levels = tuple(levels)
    unknown = set(levels) - set(LEVELS)
    if unknown or not levels:
        raise ValueError(f"levels must be a non-empty subset of {LEVELS}, got {levels}")
    rng = random.Random(seed)
    seen = {sudoku.symmetry_invariant(grid) for grid in exclude}
    max_draws = 1000 * n if max_draws is None else max_draws
    accepted = draws = 0
    while accepted < n:
        if draws >= max_draws:
            raise RuntimeError(f"only {accepted} of {n} puzzles after {draws} draws: loosen the filters")
        draws += 1
        p = sudoku.generate_puzzle(rng, min_givens, max_givens)
        if p.backtracks < min_backtracks:
            continue
        level = rate(p.puzzle).level
        key = sudoku.symmetry_invariant(p.puzzle)
        if level not in levels or key in seen:
            continue
        seen.add(key)
        accepted += 1
        if accepted % 100 == 0:
            logger.info("%d / %d sudokus (%d drawn)", accepted, n, draws)
        question, answer = sudoku_tokens_to_row(sudoku.to_tokens(p.puzzle), sudoku.to_tokens(p.solution))
        yield f"hier_mamba_{level}", question, answer, p.backtracks


def maze_rows(n: int, size: int = 30, seed: int = 0, path_longer_than: int = 110, loop_fraction: float = 0.15,
              exclude: Iterable = ()) -> Iterator[Row]:
    """``n`` maze rows (module docstring); ``exclude``: input token grids (size, size) to stay apart from."""
    rng = random.Random(seed)
    seen = {maze.canonical_key(grid) for grid in exclude}
    accepted = duplicates = 0
    while accepted < n:
        m = maze.generate_maze(size, rng, loop_fraction, min_path_length=path_longer_than + 1)
        key = maze.canonical_key(m.inputs)
        if key in seen:
            duplicates += 1
            if duplicates > 20 * n:
                raise RuntimeError(f"only {accepted} of {n} distinct mazes: ask for fewer or a larger size")
            continue
        seen.add(key)
        accepted += 1
        if accepted % 100 == 0:
            logger.info("%d / %d mazes", accepted, n)
        question, answer = maze_tokens_to_row(m.inputs, m.labels)
        yield f"hier_mamba_{size}x{size}", question, answer, m.path_length
