"""Trainer callbacks of the puzzle recipes: a wall-clock budget with its cosine schedule, and an EMA of the weights.

* :class:`TimeBudget` stops training after ``seconds`` and sets the learning rate before every step
  from the elapsed fraction of the budget (linear warm-up over ``warmup_steps`` steps, then a cosine
  to ``min_lr_ratio`` of the base rate); a step-based schedule cannot be used when the step count is
  not known in advance. Use it with ``lr_scheduler_type="constant"``.
* :class:`EMACallback` keeps an exponential moving average of the trainable weights (TRM: decay
  0.999, evaluated and saved instead of the raw weights) and writes it into the model when training
  ends, so ``save_model`` afterwards saves the averaged weights. ``swap()`` exchanges the live and
  averaged weights (evaluate the average in the middle of a run, then swap back).
"""

from __future__ import annotations

import math
import time

import torch
from transformers import TrainerCallback


class TimeBudget(TrainerCallback):
    """Stop after ``seconds`` of training; learning rate from the elapsed fraction (module docstring)."""

    def __init__(self, seconds: float | None, warmup_steps: int = 0, min_lr_ratio: float = 0.0):
        if seconds is not None and seconds <= 0:
            raise ValueError(f"seconds must be positive (or None for no budget), got {seconds!r}")
        if not 0.0 <= min_lr_ratio <= 1.0:
            raise ValueError(f"min_lr_ratio must lie in [0, 1], got {min_lr_ratio!r}")
        self.seconds, self.warmup_steps, self.min_lr_ratio = seconds, warmup_steps, min_lr_ratio
        self.start, self.base_lrs = None, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.perf_counter()

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        if self.seconds is None or optimizer is None:
            return
        if self.base_lrs is None:
            self.base_lrs = [group["lr"] for group in optimizer.param_groups]
        elapsed = min((time.perf_counter() - self.start) / self.seconds, 1.0)
        factor = self.min_lr_ratio + (1.0 - self.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * elapsed))
        if state.global_step < self.warmup_steps:
            factor *= (state.global_step + 1) / self.warmup_steps
        for group, base in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = base * factor

    def on_step_end(self, args, state, control, **kwargs):
        if self.seconds is not None and time.perf_counter() - self.start > self.seconds:
            control.should_training_stop = True


class EMACallback(TrainerCallback):
    """Exponential moving average of the trainable weights: ``ema = decay * ema + (1 - decay) * w`` after every step.

    The average starts from the initial weights; for the first steps the effective decay is
    ``min(decay, (1 + step) / (10 + step))`` so early averages are not dominated by the random init.
    """

    def __init__(self, decay: float = 0.999):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must lie in (0, 1), got {decay!r}")
        self.decay = decay
        self.shadow: dict[str, torch.Tensor] | None = None
        self.model = None

    def _parameters(self):
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.model = model
        if self.shadow is None:
            self.shadow = {name: p.detach().clone() for name, p in self._parameters().items()}

    @torch.no_grad()
    def on_step_end(self, args, state, control, **kwargs):
        step = state.global_step
        decay = min(self.decay, (1 + step) / (10 + step))
        for name, p in self._parameters().items():
            self.shadow[name].lerp_(p.detach(), 1.0 - decay)

    @torch.no_grad()
    def swap(self) -> None:
        """Exchange the live weights and the averaged ones (call twice to return)."""
        for name, p in self._parameters().items():
            live = p.detach().clone()
            p.copy_(self.shadow[name])
            self.shadow[name] = live

    def on_train_end(self, args, state, control, **kwargs):
        self.swap()  # the model now holds the average; shadow holds the last live weights
