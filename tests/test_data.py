"""Tests of hier_mamba.data: Sudoku and maze generators, augmentations, splits and datasets.

Correctness is checked against independent helpers written here (a set-based Sudoku solver, a
plain BFS), not against the library's own routines.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import pytest
import torch

from hier_mamba.data import (
    build_maze_splits,
    build_sudoku_splits,
    canonical_key,
    dihedral,
    generate_mazes,
    generate_puzzles,
    random_transform,
    solve,
    symmetry_invariant,
)
from hier_mamba.data import maze as maze_mod
from hier_mamba.data import sudoku as sudoku_mod
from hier_mamba.data.sudoku import SudokuTransform, apply_transform, identity_transform

# ---------------------------------------------------------------- independent reference helpers


def units_ok(grid) -> bool:
    """Every row, column and box of a complete 9x9 grid is a permutation of 1..9."""
    g = np.asarray(grid).reshape(9, 9)
    units = [g[r] for r in range(9)] + [g[:, c] for c in range(9)]
    units += [g[3 * b : 3 * b + 3, 3 * s : 3 * s + 3].ravel() for b in range(3) for s in range(3)]
    return all(sorted(u.tolist()) == list(range(1, 10)) for u in units)


def count_solutions_ref(grid, cap: int = 2) -> int:
    """Set-based backtracking counter, independent of the library's bitmask solver."""
    g = [int(v) for v in grid]

    def candidates(i):
        r, c = divmod(i, 9)
        br, bc = 3 * (r // 3), 3 * (c // 3)
        used = {g[9 * r + k] for k in range(9)} | {g[9 * k + c] for k in range(9)}
        used |= {g[9 * (br + a) + bc + b] for a in range(3) for b in range(3)}
        return [d for d in range(1, 10) if d not in used]

    def rec() -> int:
        blanks = [i for i in range(81) if g[i] == 0]
        if not blanks:
            return 1
        i = min(blanks, key=lambda j: len(candidates(j)))
        total = 0
        for d in candidates(i):
            g[i] = d
            total += rec()
            g[i] = 0
            if total >= cap:
                break
        return total

    return rec()


def bfs_ref(grid_tokens: np.ndarray, start) -> dict:
    """Plain BFS over non-wall tokens; returns {cell: distance}."""
    n = grid_tokens.shape[0]
    dist = {start: 0}
    q = deque([start])
    while q:
        r, c = q.popleft()
        for nr, nc in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)):
            if 0 <= nr < n and 0 <= nc < n and grid_tokens[nr, nc] != 1 and (nr, nc) not in dist:
                dist[(nr, nc)] = dist[(r, c)] + 1
                q.append((nr, nc))
    return dist


def check_maze_pair(inputs: np.ndarray, labels: np.ndarray) -> int:
    """Assert ``labels`` marks a correct, unique shortest path of ``inputs``; return its length."""
    assert set(np.unique(inputs).tolist()) <= {1, 2, 3, 4}
    assert (inputs == 3).sum() == 1 and (inputs == 4).sum() == 1
    start = tuple(int(v) for v in np.argwhere(inputs == 3)[0])
    goal = tuple(int(v) for v in np.argwhere(inputs == 4)[0])
    # The label only changes open cells to 5.
    changed = labels != inputs
    assert (labels[changed] == 5).all() and (inputs[changed] == 2).all()
    dist_s, dist_g = bfs_ref(inputs, start), bfs_ref(inputs, goal)
    d = dist_s[goal]
    path = {tuple(int(v) for v in p) for p in np.argwhere(labels == 5)} | {start, goal}
    assert len(path) == d + 1, "path has as many cells as the BFS distance + 1"
    # Every path cell lies on some shortest path, one cell per distance layer -> a shortest path.
    assert sorted(dist_s[p] for p in path) == list(range(d + 1))
    assert all(dist_s[p] + dist_g[p] == d for p in path)
    # Connected: a walk from the start through path cells reaches the goal.
    seen, cell = {start}, start
    while cell != goal:
        r, c = cell
        nxt = [x for x in ((r + 1, c), (r - 1, c), (r, c + 1), (r, c - 1)) if x in path and x not in seen]
        assert len(nxt) == 1, "a shortest path is an induced chain"
        cell = nxt[0]
        seen.add(cell)
    # Unique: no other cell lies on a shortest path, so no second shortest path exists.
    on_some_shortest = [p for p in dist_s if p in dist_g and dist_s[p] + dist_g[p] == d]
    assert set(on_some_shortest) == path
    return d


# ---------------------------------------------------------------- sudoku


@pytest.fixture(scope="module")
def puzzles():
    return generate_puzzles(12, seed=3, min_givens=26, max_givens=32)


def test_solver_on_fixed_cases():
    classic = (
        "530070000600195000098000060800060003400803001700020006060000280000419005000080079"
    )
    grid = [int(ch) for ch in classic]
    result = solve(grid)
    assert result.n_solutions == 1 and units_ok(result.solution)
    assert all(g == s for g, s in zip(grid, result.solution) if g)
    assert solve([0] * 81).n_solutions == 2  # capped at limit
    clash = list(grid)
    clash[2] = 5  # two 5s in row 0
    assert solve(clash).n_solutions == 0


def test_generated_sudokus_valid_unique_in_range(puzzles):
    for p in puzzles:
        assert units_ok(p.solution)
        assert sudoku_mod.is_valid_solution(p.solution)
        given = p.puzzle != 0
        assert (p.puzzle[given] == p.solution[given]).all()
        assert 26 <= p.givens <= 32
        result = solve(p.puzzle)
        assert result.n_solutions == 1 and tuple(result.solution) == tuple(p.solution.tolist())
    assert count_solutions_ref(puzzles[0].puzzle) == 1  # independent solver agrees


def test_solver_detects_second_solution(puzzles):
    grid = puzzles[1].puzzle.copy()
    for i in np.flatnonzero(grid):  # blank givens until the library reports non-uniqueness
        grid[i] = 0
        if solve(grid).n_solutions == 2:
            break
    assert solve(grid).n_solutions == 2
    assert count_solutions_ref(grid) == 2


def test_is_valid_solution_rejects_bad_grid(puzzles):
    bad = puzzles[0].solution.copy()
    bad[0], bad[1] = bad[1], bad[0]  # breaks two columns
    assert not sudoku_mod.is_valid_solution(bad)


def _single_component_transforms(rng: np.random.Generator) -> list[SudokuTransform]:
    ident = identity_transform()
    full = random_transform(rng)
    return [
        SudokuTransform(full.digit_map, ident.row_order, ident.col_order, False),
        SudokuTransform(ident.digit_map, np.r_[6:9, 0:3, 3:6], ident.col_order, False),  # bands
        SudokuTransform(ident.digit_map, ident.row_order, np.r_[3:6, 6:9, 0:3], False),  # stacks
        SudokuTransform(ident.digit_map, np.array([2, 0, 1, 4, 5, 3, 6, 8, 7]), ident.col_order, False),
        SudokuTransform(ident.digit_map, ident.row_order, np.array([1, 0, 2, 5, 3, 4, 8, 7, 6]), False),
        SudokuTransform(ident.digit_map, ident.row_order, ident.col_order, True),
        full,
    ]


def test_augmentations_preserve_validity_uniqueness_and_mapping(puzzles):
    rng = np.random.default_rng(0)
    n_changed = 0
    for p in puzzles[:6]:
        for t in _single_component_transforms(rng):
            aug_p, aug_s = apply_transform(p.puzzle, t), apply_transform(p.solution, t)
            n_changed += int(not np.array_equal(aug_p, p.puzzle))
            assert units_ok(aug_s)
            given = aug_p != 0
            assert given.sum() == p.givens
            assert (aug_p[given] == aug_s[given]).all()
            result = solve(aug_p)
            assert result.n_solutions == 1 and tuple(result.solution) == tuple(aug_s.tolist())
            assert symmetry_invariant(aug_p) == symmetry_invariant(p.puzzle)
    assert n_changed == 6 * 7  # every transform actually moved something


def test_invalid_row_shuffle_would_be_caught(puzzles):
    """Sanity of the checks above: swapping rows across bands breaks validity."""
    ident = identity_transform()
    t = SudokuTransform(ident.digit_map, np.array([3, 1, 2, 0, 4, 5, 6, 7, 8]), ident.col_order, False)
    assert not units_ok(apply_transform(puzzles[0].solution, t))


def test_fewer_givens_means_more_backtracks():
    easy = generate_puzzles(15, seed=11, min_givens=40, max_givens=45)
    hard = generate_puzzles(15, seed=11, min_givens=23, max_givens=25)
    mean_easy = np.mean([p.backtracks for p in easy])
    mean_hard = np.mean([p.backtracks for p in hard])
    assert mean_hard > mean_easy + 5
    assert solve(hard[0].puzzle).backtracks == hard[0].backtracks  # deterministic measure


def test_sudoku_tokens_and_render(puzzles):
    p = puzzles[0]
    tokens = sudoku_mod.to_tokens(p.puzzle)
    assert tokens.min() >= 1 and tokens.max() <= 10
    assert ((tokens == 1) == (p.puzzle == 0)).all()
    assert (sudoku_mod.from_tokens(tokens) == p.puzzle).all()
    text = sudoku_mod.render(tokens)
    assert len(text.splitlines()) == 11 and text.count(".") == 81 - p.givens


# ---------------------------------------------------------------- maze


@pytest.fixture(scope="module")
def mazes():
    return generate_mazes(12, size=15, seed=5) + generate_mazes(3, size=30, seed=5)


def test_maze_labels_are_unique_shortest_paths(mazes):
    for m in mazes:
        d = check_maze_pair(m.inputs, m.labels)
        assert d == m.path_length and d >= 4


def test_mazes_have_loops(mazes):
    """Extra openings make the open-cell graph cyclic (a tree has edges = nodes - 1)."""
    n_cyclic = 0
    for m in mazes:
        open_ = m.inputs != 1
        edges = (open_[1:] & open_[:-1]).sum() + (open_[:, 1:] & open_[:, :-1]).sum()
        n_cyclic += int(edges > open_.sum() - 1)
    assert n_cyclic == len(mazes)


def test_count_shortest_paths_sees_ties():
    open_mask = np.zeros((5, 5), dtype=bool)
    open_mask[1:4, 1:4] = True  # 3x3 room: 6 shortest paths corner to corner
    assert maze_mod.count_shortest_paths(open_mask, (1, 1), (3, 3), cap=10) == 6
    with pytest.raises(ValueError):
        maze_mod.maze_from_mask(open_mask, (1, 1), (3, 3))


def test_dihedral_augmentation_preserves_shortest_paths(mazes):
    m = mazes[0]
    images = set()
    for k in range(8):
        inputs, labels = dihedral(m.inputs, k), dihedral(m.labels, k)
        assert check_maze_pair(inputs, labels) == m.path_length
        images.add(inputs.tobytes())
        assert canonical_key(inputs) == canonical_key(m.inputs)
    assert len(images) == 8  # the 8 symmetries are distinct on this maze


# ---------------------------------------------------------------- splits and datasets


@pytest.fixture(scope="module")
def sudoku_splits():
    return build_sudoku_splits(30, 10, seed=0, min_givens=28, max_givens=34, augment_per_puzzle=2)


@pytest.fixture(scope="module")
def maze_splits():
    return build_maze_splits(30, 10, size=11, seed=0, augment_per_puzzle=3)


def test_dataset_items_and_metadata(sudoku_splits, maze_splits):
    train, test = sudoku_splits
    assert len(train) == 30 * 3 and len(test) == 10
    item = train[5]
    assert set(item) == {"input_ids", "labels"}
    assert item["input_ids"].dtype == torch.long and item["input_ids"].shape == (train.seq_len,) == (81,)
    assert int(train.labels.min()) >= 2 and int(train.labels.max()) < train.vocab_size == 11
    assert ((train.extras["givens"] >= 28) & (train.extras["givens"] <= 34)).all()
    for i in range(len(train)):
        ex = train[i]
        given = ex["input_ids"] != 1
        assert torch.equal(ex["input_ids"][given], ex["labels"][given])
    assert "|" in train.render(item["input_ids"])
    mtrain, mtest = maze_splits
    assert len(mtrain) == 30 * 4 and mtrain.seq_len == 121 and mtrain.vocab_size == 6
    for i in range(0, len(mtrain), 7):
        ex = mtrain[i]
        check_maze_pair(ex["input_ids"].numpy().reshape(11, 11), ex["labels"].numpy().reshape(11, 11))
    assert "S" in mtest.render_example(0) and "*" in mtest.render(mtest[0]["labels"])


def test_augmented_copies_differ_from_their_base(sudoku_splits, maze_splits):
    for ds in (sudoku_splits.train, maze_splits.train):
        base_rows = {}
        for i in range(len(ds)):
            base_rows.setdefault(int(ds.base_ids[i]), []).append(ds.inputs[i].numpy().tobytes())
        assert all(len(set(rows)) == len(rows) for rows in base_rows.values())


def test_determinism_by_seed():
    a = build_sudoku_splits(4, 2, seed=7, min_givens=30, max_givens=34, augment_per_puzzle=1)
    b = build_sudoku_splits(4, 2, seed=7, min_givens=30, max_givens=34, augment_per_puzzle=1)
    c = build_sudoku_splits(4, 2, seed=8, min_givens=30, max_givens=34, augment_per_puzzle=1)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.labels, b.test.labels)
    assert not torch.equal(a.train.inputs, c.train.inputs)
    assert not torch.equal(a.test.inputs, c.test.inputs)
    m1, m2, m3 = (build_maze_splits(5, 2, size=9, seed=s, augment_per_puzzle=2) for s in (1, 1, 2))
    assert torch.equal(m1.train.labels, m2.train.labels) and torch.equal(m1.test.inputs, m2.test.inputs)
    assert not torch.equal(m1.train.inputs, m3.train.inputs)
    # The test split depends on the seed only, not on the training size.
    d = build_sudoku_splits(6, 2, seed=7, min_givens=30, max_givens=34, augment_per_puzzle=1)
    assert torch.equal(a.test.inputs, d.test.inputs)
    assert generate_puzzles(1, seed=2)[0].puzzle.tolist() == generate_puzzles(1, seed=2)[0].puzzle.tolist()


def test_no_train_test_overlap_up_to_symmetry(sudoku_splits, maze_splits):
    def digits(ds, i):
        return ds.inputs[i].numpy() - 1

    train, test = sudoku_splits
    test_keys = {symmetry_invariant(digits(test, i)) for i in range(len(test))}
    train_keys = {symmetry_invariant(digits(train, i)) for i in range(len(train))}
    assert len(test_keys) == len(test)
    assert len(train_keys) == 30  # augmented copies share their base's key
    assert not test_keys & train_keys
    test_rows = {test.inputs[i].numpy().tobytes() for i in range(len(test))}
    assert not any(train.inputs[i].numpy().tobytes() in test_rows for i in range(len(train)))

    mtrain, mtest = maze_splits
    mtest_keys = {canonical_key(mtest.inputs[i].numpy().reshape(11, 11)) for i in range(len(mtest))}
    mtrain_keys = {canonical_key(mtrain.inputs[i].numpy().reshape(11, 11)) for i in range(len(mtrain))}
    assert len(mtest_keys) == 10 and len(mtrain_keys) == 30
    assert not mtest_keys & mtrain_keys


def test_split_rejects_symmetric_duplicates(monkeypatch):
    """A generator that repeats a maze up to symmetry must not leak it across the split."""
    base = generate_mazes(3, size=9, seed=0)
    calls = iter([base[0], base[1], maze_mod.Maze(dihedral(base[0].inputs, 5), dihedral(base[0].labels, 5),
                                                  base[0].start, base[0].goal, base[0].path_length),
                  base[2]] + generate_mazes(5, size=9, seed=1))
    monkeypatch.setattr(maze_mod, "generate_maze", lambda size, rng, loop_fraction, min_path_length=0: next(calls))
    train, test = build_maze_splits(2, 2, size=9, seed=0)
    test_keys = {canonical_key(test.inputs[i].numpy().reshape(9, 9)) for i in range(2)}
    train_keys = {canonical_key(train.inputs[i].numpy().reshape(9, 9)) for i in range(2)}
    assert not test_keys & train_keys
    assert canonical_key(base[0].inputs) in test_keys and canonical_key(base[2].inputs) in train_keys


def test_cache_roundtrip(tmp_path):
    a = build_maze_splits(4, 2, size=9, seed=3, augment_per_puzzle=1, cache_dir=tmp_path)
    files = list(tmp_path.glob("maze_*.npz"))
    assert len(files) == 1
    b = build_maze_splits(4, 2, size=9, seed=3, augment_per_puzzle=1, cache_dir=tmp_path)
    assert torch.equal(a.train.inputs, b.train.inputs) and torch.equal(a.test.labels, b.test.labels)
    assert np.array_equal(a.train.extras["path_length"], b.train.extras["path_length"])
    c = build_maze_splits(4, 2, size=9, seed=4, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("maze_*.npz"))) == 2 and not torch.equal(a.test.inputs, c.test.inputs)


def test_too_many_distinct_puzzles_for_the_size_raises_instead_of_looping():
    with pytest.raises(ValueError, match="distinct puzzles"):
        build_maze_splits(n_train=3000, n_test=10, size=5, seed=0)
