"""The checkpoints in models/: loadable through transformers' Auto API, small, and answering their task's grids."""

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForTokenClassification

import hier_mamba  # noqa: F401  (registers the Auto* classes)
from hier_mamba.data import maze, sudoku

MODELS = Path(__file__).resolve().parent.parent / "models"
SHIPPED = sorted(path.name for path in MODELS.iterdir() if (path / "config.json").is_file())
SUDOKU_GIVENS = "6.7........2..73..1...53.2.3...795......8.972...1.......4.......6.....939...1...8"


def test_every_documented_checkpoint_is_shipped():
    assert {"sudoku-hiermamba", "sudoku-hard-hiermamba", "maze-hiermamba", "maze30-hiermamba"} <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_checkpoint_loads_with_the_auto_api_and_stays_under_20_mb(name):
    folder = MODELS / name
    model = AutoModelForTokenClassification.from_pretrained(folder)
    assert model.config.model_type == "hier_mamba"
    assert sum(f.stat().st_size for f in folder.iterdir()) < 20 * 2**20
    vocab = sudoku.VOCAB_SIZE if name.startswith("sudoku") else maze.VOCAB_SIZE
    assert model.config.vocab_size == vocab
    assert model.config.grid_shape is not None


@pytest.mark.parametrize("name", [n for n in SHIPPED if n.startswith("sudoku")])
def test_a_sudoku_checkpoint_keeps_the_givens_and_answers_digits(name):
    model = AutoModelForTokenClassification.from_pretrained(MODELS / name)
    tokens = torch.as_tensor(sudoku.to_tokens([0 if c == "." else int(c) for c in SUDOKU_GIVENS]))[None]  # (1, 81)
    out = model.solve(tokens, max_segments=2, halt="fixed", blank_token=sudoku.BLANK_TOKEN)
    given = tokens != sudoku.BLANK_TOKEN
    assert torch.equal(out.predictions[given], tokens[given])
    assert (out.predictions >= sudoku.DIGIT_TOKEN_OFFSET + 1).all()  # every cell a digit token (2..10)
