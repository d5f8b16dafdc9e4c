"""Local puzzle data (no downloads): Sudoku and maze generators and their torch datasets."""

from .datasets import PuzzleDataset, Splits, build_maze_splits, build_sudoku_splits
from .maze import (
    Maze,
    bfs_distances,
    canonical_key,
    count_shortest_paths,
    dihedral,
    generate_maze,
    generate_mazes,
    shortest_path,
)
from .sudoku import (
    SolveResult,
    SudokuPuzzle,
    SudokuTransform,
    apply_transform,
    augment,
    generate_puzzle,
    generate_puzzles,
    is_valid_solution,
    random_transform,
    solve,
    symmetry_invariant,
)

__all__ = [
    "Maze",
    "PuzzleDataset",
    "SolveResult",
    "Splits",
    "SudokuPuzzle",
    "SudokuTransform",
    "apply_transform",
    "augment",
    "bfs_distances",
    "build_maze_splits",
    "build_sudoku_splits",
    "canonical_key",
    "count_shortest_paths",
    "dihedral",
    "generate_maze",
    "generate_mazes",
    "generate_puzzle",
    "generate_puzzles",
    "is_valid_solution",
    "random_transform",
    "shortest_path",
    "solve",
    "symmetry_invariant",
]
