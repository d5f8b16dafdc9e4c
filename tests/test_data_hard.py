"""Tests of the hard-puzzle data: Sudoku rating (hier_mamba/data/sudoku_rating.py) and the on-the-fly
augmented sets (hier_mamba/data/augmented.py).

The technique levels are checked against a set-based singles solver written here, independent of the
library's candidate-matrix one, on published puzzles whose difficulty is known and on generated ones.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from hier_mamba.data import maze as maze_mod
from hier_mamba.data import sudoku as sudoku_mod
from hier_mamba.data.augmented import OnTheFlyMaze, OnTheFlySudoku
from hier_mamba.data.sudoku_rating import LEVELS, rate, singles_fill

# Published puzzles (each uniquely solvable; checked below with the solver).
WIKIPEDIA = "53..7....6..195....98....6.8...6...34..8.3..17...2...6.6....28....419..5....8..79"  # naked singles suffice
HIDDEN = ".392...4.4.8......1...49..5..3.........1..2.......51.....57.6.1.....683.3.7...5.."  # generated: needs hidden singles
INKALA = "8..........36......7..9.2...5...7.......457.....1...3...1....68..85...1..9....4.."  # Inkala's "hardest" (2012)
ESCARGOT = "1....7.9..3..2...8..96..5....53..9...1..8...26....4...3......1..4......7..7...3.."  # AI Escargot (2006)


def parse(text: str) -> list[int]:
    return [0 if ch == "." else int(ch) for ch in text]


# ---------------------------------------------------------------- independent reference


def singles_ref(grid: list[int], hidden: bool) -> list[int]:
    """Apply naked (and hidden) singles with plain sets until nothing applies; blanks left stay 0."""
    g = list(grid)
    units = [[9 * r + c for c in range(9)] for r in range(9)] + [[9 * r + c for r in range(9)] for c in range(9)]
    units += [[9 * (3 * b + i) + 3 * s + j for i in range(3) for j in range(3)] for b in range(3) for s in range(3)]
    peers = [set().union(*(u for u in units if i in u)) - {i} for i in range(81)]

    def cands(i):
        return set(range(1, 10)) - {g[p] for p in peers[i]}

    while True:
        naked = [(i, cands(i)) for i in range(81) if g[i] == 0]
        naked = [(i, c.pop()) for i, c in naked if len(c) == 1]
        if naked:
            i, d = naked[0]
            g[i] = d
            continue
        if not hidden:
            return g
        placed = False
        for unit in units:
            for d in range(1, 10):
                spots = [i for i in unit if g[i] == 0 and d in cands(i)]
                if len(spots) == 1 and d not in {g[i] for i in unit}:
                    g[spots[0]] = d
                    placed = True
                    break
            if placed:
                break
        if not placed:
            return g


def level_ref(grid: list[int]) -> str:
    if all(singles_ref(grid, hidden=False)):
        return "naked"
    return "hidden" if all(singles_ref(grid, hidden=True)) else "more"


# ---------------------------------------------------------------- rating


@pytest.mark.parametrize("text, level", [(WIKIPEDIA, "naked"), (HIDDEN, "hidden"), (INKALA, "more"),
                                         (ESCARGOT, "more")])
def test_rate_published_puzzles(text, level):
    grid = parse(text)
    result = sudoku_mod.solve(grid, limit=2)
    assert result.n_solutions == 1, "fixture puzzles must be uniquely solvable"
    rating = rate(grid)
    assert rating.level == level == level_ref(grid)
    assert rating.blanks == grid.count(0)
    assert rating.backtracks == result.backtracks
    if level == "more":
        assert rating.placed_by_singles < rating.blanks
        assert rating.backtracks > 0  # the bitmask search (naked singles + guesses) hits dead ends
    else:
        assert rating.placed_by_singles == rating.blanks
    if level == "naked":
        assert rating.backtracks == 0  # the search places naked singles without branching


def test_singles_fill_places_only_solution_digits():
    for text in (HIDDEN, INKALA, ESCARGOT):
        grid = parse(text)
        solution = sudoku_mod.solve(grid).solution
        for hidden in (False, True):
            filled = singles_fill(grid, hidden=hidden)
            assert filled.tolist() == singles_ref(grid, hidden)
            placed = filled != 0
            assert (filled[placed] == np.asarray(solution)[placed]).all()
            assert (filled[np.asarray(grid) != 0] == np.asarray(grid)[np.asarray(grid) != 0]).all()


def test_rate_agrees_with_reference_on_generated_puzzles():
    levels = set()
    for p in sudoku_mod.generate_puzzles(25, seed=3, min_givens=24, max_givens=32):
        grid = p.puzzle.tolist()
        rating = rate(grid)
        assert rating.level in LEVELS
        assert rating.level == level_ref(grid)
        assert rating.backtracks == p.backtracks
        assert rating.blanks == 81 - p.givens
        levels.add(rating.level)
    assert levels >= {"hidden", "more"}  # the comparison covered more than one level


def test_levels_are_ordered_by_strength():
    """Adding givens from the solution never makes a puzzle need stronger techniques."""
    grid = parse(ESCARGOT)
    solution = sudoku_mod.solve(grid).solution
    rng = random.Random(0)
    order = [i for i in range(81) if grid[i] == 0]
    rng.shuffle(order)
    last = LEVELS.index(rate(grid).level)
    for i in order:
        grid[i] = solution[i]
        now = LEVELS.index(rate(grid).level)
        assert now <= last
        last = now
    assert last == 0


# ---------------------------------------------------------------- on-the-fly Sudoku


@pytest.fixture(scope="module")
def sudoku_base():
    puzzles = sudoku_mod.generate_puzzles(4, seed=5, min_givens=24, max_givens=30)
    inputs = np.stack([sudoku_mod.to_tokens(p.puzzle) for p in puzzles])  # (4, 81)
    labels = np.stack([sudoku_mod.to_tokens(p.solution) for p in puzzles])  # (4, 81)
    return puzzles, inputs, labels


def test_on_the_fly_sudoku_is_deterministic_by_index(sudoku_base):
    _, inputs, labels = sudoku_base
    a = OnTheFlySudoku(inputs, labels, copies=5, seed=1, reveal_prob=0.5)
    b = OnTheFlySudoku(inputs, labels, copies=5, seed=1, reveal_prob=0.5)
    other = OnTheFlySudoku(inputs, labels, copies=5, seed=2, reveal_prob=0.5)
    assert len(a) == 20
    for i in (0, 7, 19):
        assert all(np.array_equal(a[i][k], b[i][k]) and np.array_equal(a[i][k], a[i][k]) for k in ("input_ids", "labels"))
    assert any(not np.array_equal(a[i]["input_ids"], other[i]["input_ids"]) for i in range(8))
    assert len({a[i]["labels"].numpy().tobytes() for i in range(20)}) > 15  # fresh transforms per index
    with pytest.raises(IndexError):
        a[20]


def test_on_the_fly_sudoku_keeps_valid_pairs_of_the_right_base(sudoku_base):
    puzzles, inputs, labels = sudoku_base
    data = OnTheFlySudoku(inputs, labels, copies=3, seed=0, reveal_prob=0.0)
    for i in range(len(data)):
        base = puzzles[i % len(puzzles)]
        puzzle = sudoku_mod.from_tokens(data[i]["input_ids"].numpy())
        solution = sudoku_mod.from_tokens(data[i]["labels"].numpy())
        assert sudoku_mod.is_valid_solution(solution)
        result = sudoku_mod.solve(puzzle.tolist(), limit=2)
        assert result.n_solutions == 1 and list(result.solution) == solution.tolist()
        assert np.count_nonzero(puzzle) == base.givens  # no reveal at reveal_prob 0
        assert sudoku_mod.symmetry_invariant(puzzle) == sudoku_mod.symmetry_invariant(base.puzzle)


def test_on_the_fly_sudoku_reveals_only_solution_digits(sudoku_base):
    puzzles, inputs, labels = sudoku_base
    data = OnTheFlySudoku(inputs, labels, copies=10, seed=0, reveal_prob=1.0)
    revealed = 0
    for i in range(len(data)):
        puzzle = sudoku_mod.from_tokens(data[i]["input_ids"].numpy())
        solution = sudoku_mod.from_tokens(data[i]["labels"].numpy())
        shown = puzzle != 0
        assert (puzzle[shown] == solution[shown]).all()
        assert sudoku_mod.is_valid_solution(solution)
        extra = int(shown.sum()) - puzzles[i % len(puzzles)].givens
        assert extra >= 0  # givens are never removed
        revealed += extra
    assert revealed > 0


def test_on_the_fly_rejects_bad_arguments(sudoku_base):
    _, inputs, labels = sudoku_base
    with pytest.raises(ValueError):
        OnTheFlySudoku(inputs, labels, copies=0)
    with pytest.raises(ValueError):
        OnTheFlySudoku(inputs, labels, reveal_prob=1.5)
    with pytest.raises(ValueError):
        OnTheFlySudoku(inputs, labels[:, :80])


# ---------------------------------------------------------------- on-the-fly mazes


def test_on_the_fly_maze_draws_the_eight_symmetries():
    mazes = maze_mod.generate_mazes(3, size=9, seed=0)
    inputs = np.stack([m.inputs.reshape(-1) for m in mazes]).astype(np.int64)  # (3, 81)
    labels = np.stack([m.labels.reshape(-1) for m in mazes]).astype(np.int64)
    data = OnTheFlyMaze(inputs, labels, copies=40, seed=0)
    seen = set()
    for i in range(len(data)):
        m = mazes[i % 3]
        x = data[i]["input_ids"].numpy().reshape(9, 9)
        y = data[i]["labels"].numpy().reshape(9, 9)
        ks = [k for k in range(8) if np.array_equal(x, maze_mod.dihedral(m.inputs, k))]
        assert any(np.array_equal(y, maze_mod.dihedral(m.labels, k)) for k in ks)  # one symmetry for both
        # The label is still the unique shortest path of the transformed maze.
        start, goal = tuple(np.argwhere(x == maze_mod.START_TOKEN)[0]), tuple(np.argwhere(x == maze_mod.GOAL_TOKEN)[0])
        redone = maze_mod.maze_from_mask(x != maze_mod.WALL_TOKEN, start, goal)
        assert np.array_equal(redone.labels, y)
        if i % 3 == 0:
            seen.update(ks)
    assert seen == set(range(8))
    again = OnTheFlyMaze(inputs, labels, copies=40, seed=0)
    assert np.array_equal(again[17]["labels"], data[17]["labels"])


def test_the_puzzle_task_builds_an_on_the_fly_training_set_with_its_own_seed():
    from hier_mamba.tasks import puzzle as task_puzzle

    data = dict(task="sudoku", n_train=4, n_test=2, min_givens=40, max_givens=45)
    _, test = task_puzzle.build_datasets(data, seed=0)
    default, same_test = task_puzzle.build_datasets({**data, "on_the_fly": {"copies": 3}}, seed=0)
    reseeded, _ = task_puzzle.build_datasets({**data, "on_the_fly": {"copies": 3, "seed": 7}}, seed=0)
    assert torch_equal(test.inputs, same_test.inputs)  # the split does not move
    assert len(default) == 12 and default.seed == 0 and reseeded.seed == 7
    assert all(sudoku_mod.is_valid_solution(sudoku_mod.from_tokens(default[i]["labels"].numpy())) for i in range(12))
    assert any(not torch_equal(default[i]["input_ids"], reseeded[i]["input_ids"]) for i in range(12))


def torch_equal(a, b) -> bool:
    return bool((a == b).all())
