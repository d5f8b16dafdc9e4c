"""Tests of the published CSV formats (hier_mamba/data/formats.py), the difficulty-filtered sets
(hier_mamba/data/puzzle_sets.py, scripts/make_puzzle_set.py), maze.generate_maze's min_path_length and the
puzzle task's data.test_csv. The fixtures under tests/fixtures/ are in exactly the published format;
nothing is downloaded (the hub path runs against a stand-in ``datasets`` module)."""

from __future__ import annotations

import csv
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from hier_mamba.data import formats, maze, puzzle_sets, sudoku
from hier_mamba.data.sudoku_rating import rate
from hier_mamba.tasks import puzzle

FIXTURES = Path(__file__).parent / "fixtures"
SUDOKU_CSV = FIXTURES / "sudoku_extreme_format.csv"
MAZE_CSV = FIXTURES / "maze_hard_format.csv"
ROOT = Path(__file__).resolve().parents[1]


def raw_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_fixtures_are_in_the_published_format():
    for path, alphabet, length in ((SUDOKU_CSV, set(".123456789"), 81), (MAZE_CSV, set("# SGo"), 900)):
        rows = raw_rows(path)
        assert rows[0] == ["source", "question", "answer", "rating"]
        for source, question, answer, rating in rows[1:]:
            assert len(question) == len(answer) == length
            assert set(question) | set(answer) <= alphabet
            int(rating)


def test_load_sudoku_csv_tokens_and_extras():
    rows = raw_rows(SUDOKU_CSV)[1:]
    data = formats.load_sudoku_csv(SUDOKU_CSV)
    assert len(data) == len(rows) and data.seq_len == 81 and data.vocab_size == sudoku.VOCAB_SIZE
    for i, (source, question, answer, rating) in enumerate(rows):
        x, y = data[i]["input_ids"].numpy(), data[i]["labels"].numpy()
        assert set(np.unique(x)) <= set(range(1, 11)) and set(np.unique(y)) <= set(range(2, 11))
        puzzle_digits = sudoku.from_tokens(x)
        assert "".join(str(d) if d else "." for d in puzzle_digits) == question
        result = sudoku.solve(puzzle_digits.tolist(), limit=2)
        assert result.n_solutions == 1 and "".join(map(str, result.solution)) == answer
        assert data.extras["rating"][i] == int(rating) == result.backtracks
        assert data.extras["givens"][i] == 81 - question.count(".")
        assert data.extras["source"][i] == source == f"hier_mamba_{rate(puzzle_digits).level}"
    assert len(formats.load_sudoku_csv(SUDOKU_CSV, limit=2)) == 2


def test_load_maze_csv_tokens_and_extras():
    rows = raw_rows(MAZE_CSV)[1:]
    data = formats.load_maze_csv(MAZE_CSV)
    assert len(data) == len(rows) and data.seq_len == 900
    for i, (source, question, answer, rating) in enumerate(rows):
        x = data[i]["input_ids"].numpy().reshape(30, 30)
        y = data[i]["labels"].numpy().reshape(30, 30)
        assert [int(t) for t in x.reshape(-1)[:3]] == [maze.WALL_TOKEN] * 3  # '#' -> wall
        start = tuple(np.argwhere(x == maze.START_TOKEN)[0])
        goal = tuple(np.argwhere(x == maze.GOAL_TOKEN)[0])
        assert question.index("S") == 30 * start[0] + start[1]
        redone = maze.maze_from_mask(x != maze.WALL_TOKEN, start, goal)  # the label is the unique shortest path
        assert np.array_equal(redone.labels, y)
        assert data.extras["path_length"][i] == redone.path_length == int(rating) > 110


def test_rows_round_trip_and_zero_blanks(tmp_path):
    data = formats.load_sudoku_csv(SUDOKU_CSV)
    question, answer = formats.sudoku_tokens_to_row(data.inputs[0].numpy(), data.labels[0].numpy())
    path = tmp_path / "zeros.csv"
    formats.write_csv(path, [("x", question.replace(".", "0"), answer, 7)])  # '0' blanks are accepted too
    again = formats.load_sudoku_csv(path)
    assert np.array_equal(again.inputs[0], data.inputs[0]) and again.extras["rating"].tolist() == [7]
    m = formats.load_maze_csv(MAZE_CSV)
    q, a = formats.maze_tokens_to_row(m.inputs[1].numpy(), m.labels[1].numpy())
    assert [q, a] == raw_rows(MAZE_CSV)[2][1:3]


@pytest.mark.parametrize("question, answer", [
    ("1" * 80, "1" * 81),  # short
    ("x" + "." * 80, "1" * 81),  # bad character
    ("2" + "." * 80, "1" * 81),  # a given that contradicts the answer
])
def test_bad_sudoku_rows_raise(question, answer):
    with pytest.raises(ValueError):
        formats.sudoku_row_to_tokens(question, answer)


def test_bad_maze_rows_and_files_raise(tmp_path):
    with pytest.raises(ValueError):
        formats.maze_row_to_tokens("#S G", "#SxG")
    with pytest.raises(ValueError):
        formats.maze_row_to_tokens("#S G", "oS G")  # path over a wall
    bad = tmp_path / "bad.csv"
    bad.write_text("id,q,a\n1,2,3\n")
    with pytest.raises(ValueError, match="header"):
        formats.load_sudoku_csv(bad)
    with pytest.raises(FileNotFoundError):
        formats.load_sudoku_csv(tmp_path / "missing.csv")


def test_hub_name_goes_through_datasets(monkeypatch):
    calls = []
    rows = [dict(zip(formats.HEADER, row)) for row in raw_rows(SUDOKU_CSV)[1:]]

    def load_dataset(name, data_files, split):
        calls.append((name, data_files, split))
        return rows

    monkeypatch.setitem(sys.modules, "datasets", types.SimpleNamespace(load_dataset=load_dataset))
    data = formats.load_sudoku_csv("someone/sudoku-extreme", split="test")
    assert calls == [("someone/sudoku-extreme", {"test": "test.csv"}, "test")]
    assert np.array_equal(data.inputs, formats.load_sudoku_csv(SUDOKU_CSV).inputs)
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed
    with pytest.raises(ImportError, match=r"hier_mamba\[data\]"):
        formats.load_sudoku_csv("someone/sudoku-extreme")


# ---------------------------------------------------------------- sets by difficulty


def test_sudoku_rows_obey_the_filters():
    rows = list(puzzle_sets.sudoku_rows(4, seed=1, min_givens=24, max_givens=28, levels=["more"], min_backtracks=5))
    assert len({r[1] for r in rows}) == 4
    for source, question, answer, rating in rows:
        grid = [0 if c == "." else int(c) for c in question]
        assert 24 <= 81 - grid.count(0) <= 28
        r = rate(grid)
        assert r.level == "more" and source == "hier_mamba_more"
        assert rating == r.backtracks >= 5
    with pytest.raises(ValueError):
        list(puzzle_sets.sudoku_rows(1, levels=["expert"]))


def test_exclude_keeps_sets_apart():
    first = list(puzzle_sets.sudoku_rows(3, seed=0, min_givens=26, max_givens=30))
    grids = [formats.sudoku_row_to_tokens(q, a)[0] - 1 for _, q, a, _ in first]
    keys = {sudoku.symmetry_invariant(g) for g in grids}
    second = list(puzzle_sets.sudoku_rows(3, seed=0, min_givens=26, max_givens=30, exclude=grids))
    assert not keys & {sudoku.symmetry_invariant(formats.sudoku_row_to_tokens(q, a)[0] - 1) for _, q, a, _ in second}


def test_min_path_length_and_default_draws_unchanged():
    import random
    for m in maze.generate_mazes(3, size=15, seed=4, min_path_length=40):
        assert m.path_length >= 40
        assert (m.labels == maze.PATH_TOKEN).sum() == m.path_length - 1
    default = maze.generate_maze(9, random.Random(7))
    explicit = maze.generate_maze(9, random.Random(7), 0.15, min_path_length=0)
    assert np.array_equal(default.labels, explicit.labels)
    with pytest.raises(RuntimeError):
        maze.generate_maze(9, random.Random(0), min_path_length=1000, max_attempts=3)


def test_make_puzzle_set_cli(tmp_path):
    out = tmp_path / "mazes.csv"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_puzzle_set.py"), "maze", "--n", "2", "--size", "15",
                    "--path-longer-than", "30", "--out", str(out)], check=True, capture_output=True, cwd=ROOT)
    data = formats.load_maze_csv(out)
    assert len(data) == 2 and data.seq_len == 225 and (data.extras["path_length"] > 30).all()


# ---------------------------------------------------------------- the puzzle task's data.test_csv


def test_puzzle_task_evaluates_on_a_csv():
    cfg = {"task": "sudoku", "n_train": 2, "n_test": 1, "min_givens": 40, "max_givens": 45,
           "test_csv": str(SUDOKU_CSV), "test_csv_limit": 4}
    train, test = puzzle.build_datasets(cfg, seed=0)
    assert len(train) == 2 and len(test) == 4
    assert np.array_equal(test.inputs, formats.load_sudoku_csv(SUDOKU_CSV).inputs[:4])
    assert "rating" in test.extras
