"""The published puzzle datasets' CSV formats: HRM's Sudoku-Extreme and Maze-Hard, read and written.

Both are CSV files with the header ``source,question,answer,rating`` and one puzzle a row (the
format of ``sapientinc/sudoku-extreme`` and ``sapientinc/maze-30x30-hard-1k`` on the Hugging Face
hub, read by HRM's ``dataset/build_sudoku_dataset.py`` and ``build_maze_dataset.py``):

    Sudoku   question: 81 characters, digits 1-9 and '.' (or '0') for a blank; answer: 81 digits;
             rating: the backtracks of a solver (Sudoku-Extreme's difficulty; written here as the
             backtracks of hier_mamba.data.sudoku.solve).
    Maze     question: n * n characters of ``# SGo`` row-major ('#' wall, ' ' open, 'S' start,
             'G' goal); answer: the same grid with the shortest path's cells as 'o'; rating: an
             integer (written here as the path length in steps).

Read into this package's token layout (:class:`~hier_mamba.data.datasets.PuzzleDataset`):
Sudoku 0 pad, 1 blank, 2..10 digits (hier_mamba/data/sudoku.py); maze 0 pad, 1 wall, 2 open,
3 start, 4 goal, 5 path (hier_mamba/data/maze.py; the same ids as HRM's ``CHARSET`` index + 1).
The ``rating`` column is kept as an extra (``dataset.extras["rating"]``) for per-difficulty reports,
with ``givens`` (Sudoku) and ``path_length`` (maze: path cells + 1) beside it.

``load_sudoku_csv`` / ``load_maze_csv`` take a local file, or a hub dataset name read through the
optional ``datasets`` package (``pip install "hier_mamba[data]"``; imported only then).
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from . import maze, sudoku
from .datasets import PuzzleDataset

HEADER = ("source", "question", "answer", "rating")
MAZE_CHARSET = "# SGo"  # HRM's: character i <-> token i + 1 (wall, open, start, goal, path)
_MAZE_TOKEN_OF = {ch: i + 1 for i, ch in enumerate(MAZE_CHARSET)}
assert [_MAZE_TOKEN_OF[c] for c in MAZE_CHARSET] == [maze.WALL_TOKEN, maze.OPEN_TOKEN, maze.START_TOKEN,
                                                     maze.GOAL_TOKEN, maze.PATH_TOKEN]


# ---------------------------------------------------------------- rows <-> tokens


def sudoku_row_to_tokens(question: str, answer: str) -> tuple[np.ndarray, np.ndarray]:
    """One Sudoku-Extreme row -> (input tokens (81,), label tokens (81,)); raises ValueError on a bad row."""
    if len(question) != 81 or len(answer) != 81:
        raise ValueError(f"a sudoku row needs 81-character question and answer, got {len(question)}, {len(answer)}")
    q = question.replace(".", "0")
    if not (q.isdigit() and answer.isdigit()) or "0" in answer:
        raise ValueError(f"bad sudoku characters in {question!r} / {answer!r}")
    puzzle = np.frombuffer(q.encode(), np.uint8) - ord("0")  # (81,) 0 = blank
    solution = np.frombuffer(answer.encode(), np.uint8) - ord("0")  # (81,) 1..9
    if ((puzzle != 0) & (puzzle != solution)).any():
        raise ValueError(f"a given of {question!r} differs from its answer")
    return sudoku.to_tokens(puzzle), sudoku.to_tokens(solution)


def sudoku_tokens_to_row(inputs: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """(input tokens (81,), label tokens (81,)) -> (question with '.' blanks, answer)."""
    puzzle, solution = sudoku.from_tokens(inputs), sudoku.from_tokens(labels)
    return "".join(str(d) if d else "." for d in puzzle), "".join(str(d) for d in solution)


def maze_row_to_tokens(question: str, answer: str) -> tuple[np.ndarray, np.ndarray]:
    """One Maze-Hard row -> (input tokens (n*n,), label tokens (n*n,)); raises ValueError on a bad row."""
    side = int(round(len(question) ** 0.5))
    if side * side != len(question) or len(answer) != len(question):
        raise ValueError(f"a maze row needs equal square lengths, got {len(question)} and {len(answer)}")
    try:
        inputs = np.array([_MAZE_TOKEN_OF[ch] for ch in question], dtype=np.int64)
        labels = np.array([_MAZE_TOKEN_OF[ch] for ch in answer], dtype=np.int64)
    except KeyError as error:
        raise ValueError(f"maze characters must be among {MAZE_CHARSET!r}, found {error.args[0]!r}") from None
    changed = labels != inputs
    if (inputs == maze.PATH_TOKEN).any() or (changed & ((labels != maze.PATH_TOKEN) | (inputs != maze.OPEN_TOKEN))).any():
        raise ValueError("a maze answer may only mark open cells of its question as path ('o')")
    return inputs, labels


def maze_tokens_to_row(inputs: np.ndarray, labels: np.ndarray) -> tuple[str, str]:
    """(input tokens, label tokens), (n*n,) or (n, n) -> (question, answer) strings of ``# SGo``."""
    return tuple("".join(MAZE_CHARSET[int(t) - 1] for t in np.asarray(x).reshape(-1)) for x in (inputs, labels))


# ---------------------------------------------------------------- files


def write_csv(path: str | Path, rows: Iterable[tuple[str, str, str, int]]) -> int:
    """Write (source, question, answer, rating) rows under the published header; returns the row count."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(HEADER)
        for row in rows:
            writer.writerow(row)
            count += 1
    return count


def _read_local(path: Path) -> Iterator[dict]:
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != HEADER:
            raise ValueError(f"{path}: expected the header {','.join(HEADER)}, got {reader.fieldnames}")
        yield from reader


def _read_hub(name: str, split: str) -> Iterable[dict]:
    try:
        import datasets
    except ImportError as error:
        raise ImportError(f"reading the hub dataset {name!r} needs the optional `datasets` package: "
                          'pip install "hier_mamba[data]" (or pass a local CSV file)') from error
    return datasets.load_dataset(name, data_files={split: f"{split}.csv"}, split=split)


def _rows(source: str | Path, split: str) -> Iterable[dict]:
    """Rows of a local CSV file, or of ``{split}.csv`` in a hub dataset when ``source`` is no existing file."""
    path = Path(source)
    if path.is_file():
        return _read_local(path)
    if path.suffix == ".csv" or path.is_absolute() or str(source).startswith("."):
        raise FileNotFoundError(f"no such CSV file: {source}")
    return _read_hub(str(source), split)


def _dataset(source, split, limit, convert, vocab_size, renderer, name, extra) -> PuzzleDataset:
    inputs, labels, ratings, sources = [], [], [], []
    for row in _rows(source, split):
        if limit is not None and len(inputs) >= limit:
            break
        x, y = convert(row["question"], row["answer"])
        inputs.append(x)
        labels.append(y)
        ratings.append(int(float(row["rating"])) if str(row["rating"]).strip() else -1)
        sources.append(row["source"])
    if not inputs:
        raise ValueError(f"{source}: no puzzles read")
    if len({len(x) for x in inputs}) != 1:
        raise ValueError(f"{source}: puzzles of different sizes in one file")
    inputs_arr, labels_arr = np.stack(inputs), np.stack(labels)  # (n, seq_len)
    extras = {"rating": np.array(ratings, dtype=np.int64), **extra(inputs_arr, labels_arr),
              "source": np.array(sources)}
    return PuzzleDataset(inputs_arr, labels_arr, vocab_size=vocab_size, renderer=renderer, extras=extras,
                         name=f"{name}-{Path(str(source)).stem}")


def load_sudoku_csv(source: str | Path, split: str = "test", limit: int | None = None) -> PuzzleDataset:
    """A Sudoku-Extreme-format CSV (local file or hub dataset name; ``split`` picks ``{split}.csv`` on the hub)
    as a PuzzleDataset of (n, 81) tokens, extras ``rating``, ``givens``, ``source``; the first ``limit`` rows."""
    def extra(inputs, labels):
        return {"givens": (inputs != sudoku.BLANK_TOKEN).sum(1)}
    return _dataset(source, split, limit, sudoku_row_to_tokens, sudoku.VOCAB_SIZE, sudoku.render, "sudoku", extra)


def load_maze_csv(source: str | Path, split: str = "test", limit: int | None = None) -> PuzzleDataset:
    """A Maze-Hard-format CSV (local file or hub dataset name) as a PuzzleDataset of (n, side * side) tokens,
    extras ``rating``, ``path_length`` (path cells + 1: steps from start to goal), ``source``."""
    def extra(inputs, labels):
        return {"path_length": (labels == maze.PATH_TOKEN).sum(1) + 1}
    return _dataset(source, split, limit, maze_row_to_tokens, maze.VOCAB_SIZE, maze.render, "maze", extra)


LOADERS = {"sudoku": load_sudoku_csv, "maze": load_maze_csv}
