"""Rate a Sudoku by the human techniques it needs: naked singles, hidden singles, or more.

``rate(puzzle)`` runs a logical solver that applies, in order of strength, the techniques
:data:`TECHNIQUES` names until the grid is full or nothing applies:

    naked_single   a blank cell with one candidate digit left
    hidden_single  a digit with one possible cell left in a row, column or box

and returns the weakest technique set that solves the puzzle (``"naked"``, ``"hidden"``) or
``"more"`` when singles stall (the puzzle needs locked candidates, subsets, chains or guessing).
It also reports how many cells singles place before stalling, and the backtracks of the
bitmask search of :mod:`hier_mamba.data.sudoku` (Sudoku-Extreme's ``rating`` counts a solver's
backtracks the same way), so sets can be drawn by givens, technique level and backtracks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .sudoku import solve

LEVELS = ("naked", "hidden", "more")  # weakest first: "naked" puzzles fall to naked singles alone

_ROW = np.arange(81) // 9
_COL = np.arange(81) % 9
_BOX = (_ROW // 3) * 3 + _COL // 3
_UNITS = [np.flatnonzero(_ROW == i) for i in range(9)] + [np.flatnonzero(_COL == i) for i in range(9)] + \
         [np.flatnonzero(_BOX == i) for i in range(9)]  # 27 units of 9 cell indices
_PEERS = [np.flatnonzero(((_ROW == _ROW[i]) | (_COL == _COL[i]) | (_BOX == _BOX[i])) & (np.arange(81) != i))
          for i in range(81)]  # 20 peers per cell


@dataclass(frozen=True)
class Rating:
    """level: "naked" | "hidden" | "more"; placed_by_singles: blanks singles fill before stalling;
    blanks: blank cells of the puzzle; backtracks: dead ends of the exhaustive bitmask search."""

    level: str
    placed_by_singles: int
    blanks: int
    backtracks: int


def singles_fill(puzzle: Sequence[int] | np.ndarray, hidden: bool = True) -> np.ndarray:
    """The grid (81,) after applying naked (and, with ``hidden``, hidden) singles until none applies.

    Blanks that singles cannot fill stay 0. A contradiction (a cell with no candidate) stops the fill.
    """
    grid = np.asarray(puzzle, dtype=np.int64).reshape(81).copy()
    cand = np.ones((81, 10), dtype=bool)  # cand[i, d]: digit d still possible at cell i (column 0 unused)
    cand[:, 0] = False
    for i in np.flatnonzero(grid):
        cand[_PEERS[i], grid[i]] = False
    cand[grid > 0] = False
    progress = True
    while progress:
        progress = False
        blanks = np.flatnonzero(grid == 0)
        counts = cand[blanks].sum(1)
        if (counts == 0).any():
            return grid
        for i in blanks[counts == 1]:  # 1. naked singles
            if grid[i] == 0 and cand[i].any():
                _place(grid, cand, i, int(np.argmax(cand[i])))
                progress = True
        if progress or not hidden:
            continue
        for unit in _UNITS:  # 2. hidden singles (only when no naked single is left)
            places = cand[unit]  # (9 cells, 10 digits)
            for d in np.flatnonzero(places.sum(0) == 1):
                i = unit[int(np.argmax(places[:, d]))]
                if grid[i] == 0 and cand[i, d]:
                    _place(grid, cand, i, int(d))
                    progress = True
    return grid


def _place(grid: np.ndarray, cand: np.ndarray, i: int, digit: int) -> None:
    grid[i] = digit
    cand[i] = False
    cand[_PEERS[i], digit] = False


def rate(puzzle: Sequence[int] | np.ndarray) -> Rating:
    """The technique level (module docstring) and difficulty counts of a uniquely solvable puzzle (81,)."""
    grid = np.asarray(puzzle, dtype=np.int64).reshape(81)
    blanks = int((grid == 0).sum())
    naked = singles_fill(grid, hidden=False)
    both = singles_fill(grid, hidden=True)
    level = "naked" if (naked > 0).all() else "hidden" if (both > 0).all() else "more"
    placed = int((both > 0).sum() - (grid > 0).sum())
    return Rating(level, placed, blanks, solve(grid.tolist(), limit=2).backtracks)
