"""Rule-based reference points for the Sudoku accuracy numbers in docs/results.md (no learning).

    python scripts/sudoku_baselines.py --config configs/exp_sudoku.yaml

On the test split of the config's data, prints the blank-cell ("target") and exact accuracy of:
- chance: a uniformly random digit for every blank (1/9 per blank);
- elimination: for every blank, a random digit among those not already in its row, column or box
  (the expected accuracy, mean of 1/candidates) -- what "knowing the three constraints" buys;
- naked singles, one pass: blanks with exactly one candidate are filled, the rest guessed as in
  elimination -- one round of constraint propagation;
- naked singles, iterated to a fixed point: repeated propagation, how far the easiest technique goes.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
from pathlib import Path

import numpy as np
import yaml

from hier_mamba.data import sudoku
from hier_mamba.tasks import puzzle as task_puzzle



def candidates(grid: np.ndarray, cell: int) -> set[int]:
    """Digits 1..9 absent from the row, column and box of ``cell`` in ``grid`` (81,), 0 = blank."""
    row, col = divmod(cell, 9)
    box = [9 * (3 * (row // 3) + i) + 3 * (col // 3) + j for i in range(3) for j in range(3)]
    seen = set(grid[9 * row : 9 * row + 9]) | set(grid[col::9]) | set(grid[box])
    return set(range(1, 10)) - seen


def naked_singles(grid: np.ndarray, passes: int | None) -> np.ndarray:
    """Fill blanks that have exactly one candidate, for ``passes`` rounds (None: until nothing changes)."""
    grid = grid.copy()
    done = 0
    while passes is None or done < passes:
        singles = {cell: candidates(grid, cell) for cell in np.flatnonzero(grid == 0)}
        singles = {cell: next(iter(c)) for cell, c in singles.items() if len(c) == 1}
        if not singles:
            break
        for cell, digit in singles.items():
            grid[cell] = digit
        done += 1
    return grid


def expected_scores(puzzle: np.ndarray, filled: np.ndarray, solution: np.ndarray) -> tuple[float, float]:
    """(expected correct blanks, probability all correct) when the blanks left in ``filled`` are
    guessed uniformly among their candidates (computed against ``filled``)."""
    correct, p_exact = 0.0, 1.0
    for cell in np.flatnonzero(puzzle == 0):
        if filled[cell] != 0:
            hit = float(filled[cell] == solution[cell])
        else:
            options = candidates(filled, cell)
            hit = 1.0 / len(options) if solution[cell] in options else 0.0
        correct += hit
        p_exact *= hit
    return correct, p_exact


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML with a sudoku `data:` section")
    args = parser.parse_args(argv)
    config = yaml.safe_load(Path(args.config).read_text())
    _, test = task_puzzle.build_datasets(config["data"], config.get("seed", 0))
    pairs = [(sudoku.from_tokens(test[i]["input_ids"].numpy()), sudoku.from_tokens(test[i]["labels"].numpy()))
             for i in range(len(test))]
    blanks = sum(int((puzzle == 0).sum()) for puzzle, _ in pairs)
    rules = {
        "chance (1/9 per blank)": lambda puzzle: None,
        "elimination (random candidate)": lambda puzzle: puzzle,
        "naked singles, one pass": lambda puzzle: naked_singles(puzzle, passes=1),
        "naked singles, to a fixed point": lambda puzzle: naked_singles(puzzle, passes=None),
    }
    print(f"{len(pairs)} test puzzles, {blanks / len(pairs):.1f} blanks each on average")
    print("| rule | target-cell accuracy | exact accuracy |\n|---|---|---|")
    for name, rule in rules.items():
        correct = exact = 0.0
        for puzzle, solution in pairs:
            filled = rule(puzzle)
            if filled is None:
                n = int((puzzle == 0).sum())
                correct, exact = correct + n / 9, exact + (1 / 9) ** n
                continue
            hits, p_exact = expected_scores(puzzle, filled, solution)
            correct, exact = correct + hits, exact + p_exact
        print(f"| {name} | {100 * correct / blanks:.1f}% | {100 * exact / len(pairs):.1f}% |")


if __name__ == "__main__":
    main()
