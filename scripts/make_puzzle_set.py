"""Write puzzle sets in the published CSV formats (HRM's Sudoku-Extreme and Maze-Hard), generated locally.

    python scripts/make_puzzle_set.py sudoku --n 1000 --out data/sudoku_more.csv \
        [--min-givens 17] [--max-givens 30] [--levels more] [--min-backtracks 0] [--seed 0] [--exclude test.csv]
    python scripts/make_puzzle_set.py maze --n 1000 --out data/maze30_hard.csv \
        [--size 30] [--path-longer-than 110] [--loop-fraction 0.15] [--seed 0] [--exclude test.csv]

Sudoku rows: ``source,question,answer,rating`` with '.' blanks and rating = solver backtracks; levels are
the techniques a puzzle needs (naked singles, hidden singles, or more). Maze rows: ``# SGo`` characters,
rating = shortest path length. ``--exclude`` keeps the new set apart (up to symmetry) from an existing file,
e.g. a training set from its test set. The files load with ``hier_mamba.data.formats.load_sudoku_csv`` /
``load_maze_csv`` or as a run config's ``data.test_csv``. Formats and filters: hier_mamba/data/formats.py and
puzzle_sets.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import logging
import time
from collections import Counter
from pathlib import Path

from hier_mamba.data import formats, puzzle_sets, sudoku
from hier_mamba.data.sudoku_rating import LEVELS

logger = logging.getLogger("make_puzzle_set")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    kinds = parser.add_subparsers(dest="kind", required=True)
    for kind in ("sudoku", "maze"):
        sub = kinds.add_parser(kind)
        sub.add_argument("--n", type=int, required=True, help="number of puzzles")
        sub.add_argument("--out", type=Path, required=True, help="CSV file to write")
        sub.add_argument("--seed", type=int, default=0)
        sub.add_argument("--exclude", type=Path, help="a CSV of the same format whose puzzles (up to symmetry) to avoid")
        if kind == "sudoku":
            sub.add_argument("--min-givens", type=int, default=17)
            sub.add_argument("--max-givens", type=int, default=30)
            sub.add_argument("--levels", nargs="+", choices=LEVELS, default=list(LEVELS),
                             help="technique levels to keep (default: all)")
            sub.add_argument("--min-backtracks", type=int, default=0, help="keep puzzles with at least this rating")
        else:
            sub.add_argument("--size", type=int, default=30, help="side of the square grid")
            sub.add_argument("--path-longer-than", type=int, default=110, help="shortest path > this many steps")
            sub.add_argument("--loop-fraction", type=float, default=0.15, help="extra openings (see data/maze.py)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error(f"--n must be positive, got {args.n}")
    return args


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    start = time.perf_counter()
    if args.kind == "sudoku":
        exclude = [] if args.exclude is None else [sudoku.from_tokens(x.numpy())
                                                   for x in formats.load_sudoku_csv(args.exclude).inputs]
        rows = puzzle_sets.sudoku_rows(args.n, args.seed, args.min_givens, args.max_givens, args.levels,
                                       args.min_backtracks, exclude)
    else:
        exclude = [] if args.exclude is None else [x.numpy().reshape(args.size, args.size)
                                                   for x in formats.load_maze_csv(args.exclude).inputs]
        rows = puzzle_sets.maze_rows(args.n, args.size, args.seed, args.path_longer_than, args.loop_fraction, exclude)
    rows = list(rows)
    count = formats.write_csv(args.out, rows)
    ratings = sorted(row[3] for row in rows)
    logger.info("wrote %d %s puzzles to %s in %.0f s; sources %s; rating min %d, median %d, max %d", count, args.kind,
                args.out, time.perf_counter() - start, dict(Counter(row[0] for row in rows)), ratings[0],
                ratings[len(ratings) // 2], ratings[-1])


if __name__ == "__main__":
    main()
