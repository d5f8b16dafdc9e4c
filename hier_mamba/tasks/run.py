"""One training run from a YAML run config: the library behind scripts/train.py.

Config layout:
    task: lm | sudoku | maze       # the task module (hier_mamba.tasks)
    seed: 0
    output_dir: runs/NAME          # checkpoints; the final model goes to OUTPUT_DIR/final
    init_from: DIR                 # optional: start from a save_pretrained folder (e.g. scripts/convert_mamba.py's)
    model: {...}                   # HierMambaConfig keyword arguments (with init_from: overrides, e.g. H_cycles)
    data: {...}                    # read by the task module
    training: {...}                # transformers.TrainingArguments keyword arguments
    callbacks: {...}               # optional: time_budget_s, warmup_steps, min_lr_ratio (TimeBudget), ema_decay

With ``init_from`` the weights come from that folder, the ``model`` keys override its config (settings that
change no parameter shape: cycles, bptt_steps, ...), and its tokenizer is used unless ``data.tokenizer``
names another.

:func:`train_from_config` builds the tokenizer, model and data, trains with HierMambaTrainer (the
tokenizer is its ``processing_class``, so every checkpoint carries it), evaluates, saves the model
and tokenizer to ``OUTPUT_DIR/final``, reloads them through the Auto* API and checks the reloaded
model's logits.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import transformers
import yaml
from transformers import PreTrainedModel, PreTrainedTokenizerBase, TrainingArguments, set_seed
from transformers.trainer_utils import get_last_checkpoint

from ..callbacks import EMACallback, TimeBudget
from ..optim import HierMambaTrainer  # Trainer without weight decay on A_log, D, dt_bias, norms, biases
from . import AUTO_CLASSES, TASKS, get_task

logger = logging.getLogger(__name__)

# A progress bar, no experiment trackers, pinned memory only where there is a GPU to copy to.
TRAINING_DEFAULTS = {"disable_tqdm": False, "report_to": "none", "dataloader_pin_memory": torch.cuda.is_available()}


@dataclass
class RunResult:
    """What a run produced: the trainer, its metrics, the final folder and the reloaded model."""

    trainer: HierMambaTrainer
    global_step: int
    train_seconds: float
    train_loss: float
    metrics: dict
    final_dir: Path
    auto_class: str
    reloaded: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase | None
    eval_dataset: torch.utils.data.Dataset


def load_run_config(path: str | Path) -> dict:
    """The YAML run config at ``path``, with its required keys checked and missing sections empty."""
    path = Path(path)
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    if config.get("task") not in TASKS:
        raise ValueError(f"{path}: task must be one of {sorted(TASKS)}, got {config.get('task')!r}")
    for key in ("model", "data", "training", "callbacks"):
        config.setdefault(key, {})
        if not isinstance(config[key], dict):
            raise ValueError(f"{path}: {key} must be a mapping")
    if "init_from" in config and not (Path(config["init_from"]) / "config.json").is_file():
        raise ValueError(f"{path}: init_from={config['init_from']!r} is not a save_pretrained folder "
                         "(no config.json there)")
    return config


def build_model(config: dict, tokenizer: PreTrainedTokenizerBase | None) -> PreTrainedModel:
    """The run's model: loaded from ``config["init_from"]`` with the ``model`` keys as overrides, else new."""
    if "init_from" not in config:
        return get_task(config["task"]).build_model(config["model"], tokenizer)
    model = getattr(transformers, AUTO_CLASSES[config["task"]]).from_pretrained(config["init_from"], **config["model"])
    if tokenizer is not None and len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"init_from={config['init_from']!r}: the model's vocab_size={model.config.vocab_size} is "
                         f"smaller than the tokenizer's {len(tokenizer)} tokens")
    return model


def _data_config(config: dict) -> dict:
    """The data section; with ``init_from``, its tokenizer (when it has one) unless the section names one."""
    init_from = config.get("init_from")
    if init_from and "tokenizer" not in config["data"] and (Path(init_from) / "tokenizer_config.json").is_file():
        return {**config["data"], "tokenizer": str(init_from)}
    return config["data"]


def training_arguments(config: dict, output_dir: str | Path, max_steps: int | None = None) -> TrainingArguments:
    """TrainingArguments from the config's training section; ``output_dir`` and ``max_steps`` win."""
    kwargs = {**TRAINING_DEFAULTS, **config["training"], "output_dir": str(output_dir),
              "seed": config.get("seed", 0)}
    if max_steps is not None:
        kwargs["max_steps"] = max_steps
    return TrainingArguments(**kwargs)


CALLBACK_KEYS = ("time_budget_s", "warmup_steps", "min_lr_ratio", "ema_decay")


def build_callbacks(section: dict) -> list:
    """Trainer callbacks of the ``callbacks`` section: a wall-clock budget with its cosine schedule
    (``time_budget_s``, ``warmup_steps``, ``min_lr_ratio``; the training section then needs
    ``lr_scheduler_type: constant``) and an EMA of the weights (``ema_decay``; the saved model is the average)."""
    unknown = sorted(set(section) - set(CALLBACK_KEYS))
    if unknown:
        raise ValueError(f"unknown callbacks keys {unknown}; accepted: {list(CALLBACK_KEYS)}")
    callbacks = []
    if section.get("time_budget_s") is not None:
        callbacks.append(TimeBudget(float(section["time_budget_s"]), int(section.get("warmup_steps", 0)),
                                    float(section.get("min_lr_ratio", 0.0))))
    if section.get("ema_decay") is not None:
        callbacks.append(EMACallback(float(section["ema_decay"])))
    return callbacks


def last_checkpoint(output_dir: str | Path) -> str:
    """The newest ``checkpoint-*`` folder of ``output_dir``; raises FileNotFoundError when there is none."""
    found = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    if found is None:
        raise FileNotFoundError(f"no checkpoint-* folder in {output_dir} to resume from")
    return found


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


def train_from_config(config: dict, output_dir: str | Path, max_steps: int | None = None,
                      resume: bool = False) -> RunResult:
    """Train, evaluate, save (model + tokenizer), reload and check one run of a loaded run config."""
    task = get_task(config["task"])
    seed = int(config.get("seed", 0))
    output_dir = Path(output_dir)
    resume_from = last_checkpoint(output_dir) if resume else None
    if resume_from:
        logger.info("resuming from %s", resume_from)

    # 1. Tokenizer, model and data, from the seed.
    set_seed(seed)
    data_cfg = _data_config(config)
    tokenizer = task.load_tokenizer(data_cfg)
    model = build_model(config, tokenizer)
    train_dataset, eval_dataset = task.build_datasets(data_cfg, seed, tokenizer)
    logger.info("task %s: %.2fM parameters, %d train / %d eval examples", config["task"],
                sum(p.numel() for p in model.parameters()) / 1e6, len(train_dataset), len(eval_dataset))

    # 2. Train (checkpoints with the tokenizer in output_dir), then evaluate.
    trainer = HierMambaTrainer(model=model, args=training_arguments(config, output_dir, max_steps),
                               train_dataset=train_dataset, eval_dataset=eval_dataset, data_collator=task.collate,
                               processing_class=tokenizer, compute_metrics=task.compute_metrics,
                               callbacks=build_callbacks(config.get("callbacks", {})))
    start = time.perf_counter()
    train_result = trainer.train(resume_from_checkpoint=resume_from)
    train_seconds = time.perf_counter() - start
    metrics = trainer.evaluate()

    # 3. Save model and tokenizer (main process), reload through the Auto* API, compare logits.
    final_dir = output_dir / "final"
    trainer.save_model(str(final_dir))
    trainer.accelerator.wait_for_everyone()
    auto_class = AUTO_CLASSES[config["task"]]
    reloaded = getattr(transformers, auto_class).from_pretrained(final_dir)
    check_reload(trainer.model, reloaded, task.collate([eval_dataset[i] for i in range(min(4, len(eval_dataset)))]))
    return RunResult(trainer=trainer, global_step=trainer.state.global_step, train_seconds=train_seconds,
                     train_loss=train_result.training_loss, metrics=metrics, final_dir=final_dir,
                     auto_class=auto_class, reloaded=reloaded, tokenizer=tokenizer, eval_dataset=eval_dataset)
