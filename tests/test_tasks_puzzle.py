"""hier_mamba.tasks.puzzle and puzzle_eval: metrics, collate, demo, and accuracy per number of ACT segments."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from hier_mamba.tasks import puzzle
from hier_mamba.tasks.puzzle_eval import evaluate_checkpoint

TINY = dict(hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, state_size=8, head_dim=16,
            chunk_size=16, bidirectional=True, halt_exploration_prob=0.0)

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_puzzle_metrics_collate_and_demo():
    labels = np.array([[2, 3, -100], [4, 4, 4]])
    predictions = np.array([[2, 3, 9], [4, 5, 4]])
    logits = np.eye(12)[predictions]  # (2, 3, 12), argmax = predictions
    eval_pred = SimpleNamespace(predictions=(logits, None, None, np.array([2, 4])), label_ids=labels)
    metrics = puzzle.compute_metrics(eval_pred)
    assert metrics == {"cell_accuracy": 4 / 5, "exact_accuracy": 0.5, "mean_steps": 3.0}
    assert puzzle.load_tokenizer({"task": "maze"}) is None
    train, test = puzzle.build_datasets({"task": "maze", "n_train": 3, "n_test": 2, "size": 7}, seed=0)
    assert len(train) == 3 and len(test) == 2
    batch = puzzle.collate([test[0], test[1]])
    assert batch["input_ids"].shape == batch["labels"].shape == (2, 49)
    model = puzzle.build_model({**TINY, "vocab_size": 6, "halt_max_steps": 2})
    text = puzzle.demo(model, test, {"task": "maze"})
    assert "prediction" in text and test.render(test[0]["labels"]) in text
    with pytest.raises(ValueError, match="unknown data keys"):
        puzzle.build_datasets({"task": "maze", "n_train": 1, "n_test": 1, "givens": 3}, seed=0)


def test_collate_pads_unequal_lengths_with_a_mask():
    short = {"input_ids": torch.tensor([3, 4]), "labels": torch.tensor([5, 5])}
    long = {"input_ids": torch.tensor([3, 4, 2]), "labels": torch.tensor([5, 5, 2])}
    batch = puzzle.collate([short, long])
    assert batch["input_ids"].tolist() == [[3, 4, 0], [3, 4, 2]]
    assert batch["labels"].tolist() == [[5, 5, -100], [5, 5, 2]]
    assert batch["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1]]


def test_evaluate_checkpoint_reports_accuracy_per_segment_count(tmp_path):
    torch.manual_seed(0)
    model = puzzle.build_model({**TINY, "vocab_size": 6, "halt_max_steps": 2})
    model.save_pretrained(tmp_path / "model")
    _, test = puzzle.build_datasets({"task": "maze", "n_train": 1, "n_test": 3, "size": 7}, seed=0)
    results = evaluate_checkpoint(tmp_path / "model", test, [1, 3], batch_size=2)
    assert results["test_puzzles"] == 3 and results["trained_segments"] == 2 and results["segments"] == [1, 2, 3]
    assert sorted(results["max_steps"]) == sorted(results["q_halt"]) == [1, 2, 3]
    assert results["max_steps"][3]["mean_steps"] == 3.0
    assert 1.0 <= results["q_halt"][3]["mean_steps"] <= 3.0
    # max_steps at N segments is the ACT model run for exactly N segments: check N = 2 against a direct forward.
    with torch.no_grad():
        batch = puzzle.collate([test[i] for i in range(3)])
        logits = model.eval()(batch["input_ids"], num_segments=2).logits
    expected = puzzle.puzzle_accuracy(logits.numpy(), batch["labels"].numpy())
    assert results["max_steps"][2]["cell_accuracy"] == pytest.approx(expected["cell_accuracy"])
    assert results["max_steps"][2]["exact_accuracy"] == pytest.approx(expected["exact_accuracy"])
    with pytest.raises(ValueError, match=r"segments must be positive counts, got \[0\]"):
        evaluate_checkpoint(tmp_path / "model", test, [0])
