"""The tasks that scripts/train.py runs from a YAML config, importable for your own scripts.

A task module provides ``load_tokenizer(data_cfg)`` (a tokenizer or None),
``build_model(model_cfg, tokenizer)``, ``build_datasets(data_cfg, seed, tokenizer) -> (train, eval)``,
``collate(batch)``, ``compute_metrics`` (or None) and ``demo(model, eval_dataset, data_cfg, tokenizer) -> str``.

    lm             causal language modelling on local text (:mod:`hier_mamba.tasks.lm`)
    sudoku, maze   puzzle solving with the ACT head (:mod:`hier_mamba.tasks.puzzle`)
"""

from types import ModuleType

from . import lm, puzzle

TASKS: dict[str, ModuleType] = {"lm": lm, "sudoku": puzzle, "maze": puzzle}
# The Auto* class that reloads a trained model of each task.
AUTO_CLASSES = {"lm": "AutoModelForCausalLM", "sudoku": "AutoModelForTokenClassification",
                "maze": "AutoModelForTokenClassification"}


def get_task(name: str) -> ModuleType:
    """The task module of ``name`` ("lm", "sudoku" or "maze")."""
    if name not in TASKS:
        raise ValueError(f"task must be one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


__all__ = ["AUTO_CLASSES", "TASKS", "get_task", "lm", "puzzle"]
