"""Train a hier_mamba model from a YAML config with transformers.Trainer, save it, reload it, show a sample.

    python scripts/train.py --config configs/lm_tiny.yaml [--max-steps N] [--output-dir DIR] [--resume]

Config layout:
    task: lm | sudoku | maze       # lm -> scripts/task_lm.py, sudoku/maze -> scripts/task_puzzle.py
    seed: 0
    output_dir: runs/NAME          # checkpoints; the final model goes to OUTPUT_DIR/final
    model: {...}                   # HierMambaConfig keyword arguments
    data: {...}                    # read by the task module
    training: {...}                # transformers.TrainingArguments keyword arguments

A task module provides build_model(model_cfg), build_datasets(data_cfg, seed) -> (train, eval),
collate(batch), compute_metrics (or None) and demo(model, eval_dataset, data_cfg) -> str.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

import hier_mamba  # noqa: F401  (registers the Auto* classes)
from hier_mamba import HierMambaTrainer  # Trainer without weight decay on A_log, D, dt_bias, norms, biases

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the task modules live beside this script

logger = logging.getLogger("train")

TASK_MODULES = {"lm": "task_lm", "sudoku": "task_puzzle", "maze": "task_puzzle"}
AUTO_CLASSES = {"lm": "AutoModelForCausalLM", "sudoku": "AutoModelForTokenClassification",
                "maze": "AutoModelForTokenClassification"}
# A progress bar, no experiment trackers, pinned memory only where there is a GPU to copy to.
TRAINING_DEFAULTS = {"disable_tqdm": False, "report_to": "none", "dataloader_pin_memory": torch.cuda.is_available()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="YAML run config (see configs/)")
    parser.add_argument("--max-steps", type=int, help="override training.max_steps")
    parser.add_argument("--output-dir", type=Path, help="override output_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    return parser.parse_args(argv)


def load_config(path: Path) -> dict:
    """The YAML run config, with its required keys checked."""
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    if config.get("task") not in TASK_MODULES:
        raise ValueError(f"{path}: task must be one of {sorted(TASK_MODULES)}, got {config.get('task')!r}")
    for key in ("model", "data", "training"):
        config.setdefault(key, {})
        if not isinstance(config[key], dict):
            raise ValueError(f"{path}: {key} must be a mapping")
    return config


def training_arguments(config: dict, output_dir: Path, max_steps: int | None) -> TrainingArguments:
    """TrainingArguments from the config's training section; CLI overrides win."""
    kwargs = {**TRAINING_DEFAULTS, **config["training"], "output_dir": str(output_dir),
              "seed": config.get("seed", 0)}
    if max_steps is not None:
        kwargs["max_steps"] = max_steps
    return TrainingArguments(**kwargs)


def check_reload(model: torch.nn.Module, reloaded: torch.nn.Module, batch: dict) -> None:
    """Raise if the reloaded model's logits differ from the trained model's on ``batch``."""
    device = next(model.parameters()).device
    reloaded.to(device)
    model.eval()
    reloaded.eval()
    batch = {key: value.to(device) for key, value in batch.items()}
    with torch.no_grad():
        torch.manual_seed(0)
        expected = model(**batch).logits
        torch.manual_seed(0)
        actual = reloaded(**batch).logits
    if not torch.equal(expected, actual):
        difference = (expected - actual).abs().max().item()
        raise RuntimeError(f"reloaded model disagrees with the trained one: max |logit difference| = {difference:.3g}")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    config = load_config(args.config)
    task_name = config["task"]
    task = importlib.import_module(TASK_MODULES[task_name])  # lazy: a puzzle run needs task_puzzle.py only
    seed = int(config.get("seed", 0))
    output_dir = args.output_dir or Path(config.get("output_dir", f"runs/{args.config.stem}"))
    resume_from = None
    if args.resume:
        resume_from = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
        if resume_from is None:
            raise SystemExit(f"--resume: no checkpoint-* folder in {output_dir}")
        logger.info("resuming from %s", resume_from)

    # 1. Model and data, from the seed.
    set_seed(seed)
    model = task.build_model(config["model"])
    train_dataset, eval_dataset = task.build_datasets(config["data"], seed)
    logger.info("task %s: %.2fM parameters, %d train / %d eval examples", task_name,
                sum(p.numel() for p in model.parameters()) / 1e6, len(train_dataset), len(eval_dataset))

    # 2. Train (checkpoints in output_dir), then evaluate.
    training_args = training_arguments(config, output_dir, args.max_steps)
    trainer = HierMambaTrainer(model=model, args=training_args, train_dataset=train_dataset,
                               eval_dataset=eval_dataset, data_collator=task.collate,
                               compute_metrics=getattr(task, "compute_metrics", None))
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()
    print(f"trained {trainer.state.global_step} steps in {train_seconds:.0f} s; "
          f"train loss {train_result.training_loss:.4f}; "
          + ", ".join(f"{key} {value:.4f}" for key, value in metrics.items() if isinstance(value, float)))

    # 3. Save, reload through the Auto* API, and check the reloaded model computes the same logits.
    final_dir = output_dir / "final"
    trainer.model.save_pretrained(final_dir)
    auto_class = getattr(importlib.import_module("transformers"), AUTO_CLASSES[task_name])
    reloaded = auto_class.from_pretrained(final_dir)
    check_reload(trainer.model, reloaded, task.collate([eval_dataset[i] for i in range(min(4, len(eval_dataset)))]))
    print(f"saved to {final_dir}; reloaded with {auto_class.__name__}: identical logits")

    # 4. A readable sample from the reloaded model.
    print(task.demo(reloaded, eval_dataset, config["data"]))


if __name__ == "__main__":
    main()
