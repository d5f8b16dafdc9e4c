"""Solve a Sudoku with a trained HierMambaForTokenClassification and show each reasoning segment.

    python scripts/solve_sudoku.py [--model models/sudoku-hiermamba] [--puzzle 81 chars, '.' or '0' blank]
                                   [--segments 8]

Without --puzzle it solves a held-out test puzzle of configs/exp_sudoku.yaml (never trained on).
Each ACT segment is one more full H/L pass from the previous segment's state; the script prints how
many cells break a row, column or box rule after each segment and stops at the first segment whose
grid is a solution (every row, column and box holds 1-9 and every given is kept): a Sudoku answer
can be checked, so the checker halts instead of the Q-head. It prints that grid and the verdict.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse

import numpy as np
import torch
from transformers import AutoModelForTokenClassification

import hier_mamba  # noqa: F401  (registers the Auto* classes)
from hier_mamba.data import sudoku
from hier_mamba.threads import fit_threads, threads_argument

HELD_OUT = "369.84.27.1.7369.8587...4..7..8..6.21.8267395.2..95784.3145.2.6..6.12549.54.7983."  # test puzzle 0


def parse_puzzle(text: str) -> np.ndarray:
    """81 characters (digits, '.' or '0' for blanks; spaces and newlines ignored) -> digit grid (81,)."""
    cells = [c for c in text if not c.isspace()]
    if len(cells) != 81 or any(c not in "0123456789." for c in cells):
        raise SystemExit(f"--puzzle needs 81 characters of 1-9 and '.'/'0' for blanks, got {len(cells)}: {text!r}")
    return np.array([0 if c in ".0" else int(c) for c in cells], dtype=np.int64)


def conflicts(grid: np.ndarray) -> int:
    """Cells (81,) that share their digit with another cell of their row, column or box."""
    boxes = np.arange(81).reshape(3, 3, 3, 3).transpose(0, 2, 1, 3).reshape(9, 9)  # row-major indices per box
    bad = np.zeros(81, dtype=bool)
    for units in (np.arange(81).reshape(9, 9), np.arange(81).reshape(9, 9).T, boxes):
        for unit in units:
            digits = grid[unit]
            bad[unit] |= (np.bincount(digits, minlength=10)[digits] > 1) & (digits > 0)
    return int(bad.sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models/sudoku-hiermamba", help="a save_pretrained directory")
    parser.add_argument("--puzzle", default=HELD_OUT, help="81 characters, '.' or '0' for blanks")
    parser.add_argument("--segments", type=int, default=8, help="ACT segments to run (test-time compute)")
    parser.add_argument("--threads", type=threads_argument, help="torch CPU threads: N, or auto (the cores free now)")
    args = parser.parse_args()
    fit_threads(args.threads)
    puzzle = parse_puzzle(args.puzzle)
    model = AutoModelForTokenClassification.from_pretrained(args.model).eval()
    tokens = torch.as_tensor(sudoku.to_tokens(puzzle))[None]  # (1, 81)
    with torch.no_grad():
        output = model(input_ids=tokens, num_segments=args.segments, return_all_segments=True)
    print(f"puzzle ({int((puzzle > 0).sum())} givens):\n{sudoku.render(tokens[0].numpy())}\n")
    # Sudoku answers can be checked: stop at the first segment whose grid is a solution (else the last).
    for index, logits in enumerate(output.all_logits, start=1):  # (segments, 1, 81, vocab)
        answer = sudoku.from_tokens(logits[0].argmax(-1).clamp(min=2).numpy())  # digits 1..9 (no blank)
        kept = bool((answer[puzzle > 0] == puzzle[puzzle > 0]).all())
        solved = sudoku.is_valid_solution(answer) and kept
        print(f"segment {index}: {conflicts(answer)} cells break a rule"
              f"{'' if kept else ', a given was changed'}{' -> solved' if solved else ''}")
        if solved:
            break
    print(f"\nanswer after {index} segment{'s' * (index > 1)}:\n{sudoku.render(sudoku.to_tokens(answer))}\n")
    print("solved: every row, column and box holds 1-9 and every given is kept" if solved else
          f"not solved in {args.segments} segments")

if __name__ == "__main__":
    main()
