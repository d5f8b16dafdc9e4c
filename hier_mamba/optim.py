"""Optimizer parameter groups: which parameters get weight decay.

Weight decay pulls a parameter towards 0. For the SSM parameters that is not regularisation but a
change of model: decaying ``A_log`` towards 0 drives every decay rate to A = -exp(0) = -1 and erases
the multi-timescale S4D init; ``D`` (the skip) and ``dt_bias`` (the step size) likewise have a
meaningful non-zero scale. mamba_ssm marks ``A_log`` and ``D`` with ``_no_weight_decay``; GPT-style
recipes exempt biases and norm gains. Here no weight decay goes to:

    A_log, D, dt_bias            (the SSM's dynamics; mamba_ssm's ``_no_weight_decay``)
    every bias                   (in/out projections, conv, dt_proj, Q-head)
    every norm weight            (RMSNorm modules, including the gated norm inside Mamba2)
    initial states, 1-D tensors  (H_init / L_init when they are parameters; anything with ndim < 2)
    parameters flagged ``_no_weight_decay = True`` (mamba_ssm's convention)

Everything else (projection and conv weights, embeddings, heads) is decayed.

``transformers.Trainer`` decides by name patterns ("bias", "norm") and would decay ``A_log`` and
``D``; use :class:`HierMambaTrainer` (a drop-in ``Trainer``), or pass
``optimizers=(create_optimizer(model, args), None)`` to a plain ``Trainer``.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Trainer, TrainingArguments

from .norms import RMSNorm

NO_DECAY_PARAMETER_NAMES = frozenset({"A_log", "D", "dt_bias", "bias", "H_init", "L_init"})


def no_weight_decay(module: nn.Module, name: str, parameter: nn.Parameter) -> bool:
    """Whether ``module``'s own parameter ``name`` is exempt from weight decay (module docstring)."""
    return (isinstance(module, (RMSNorm, nn.LayerNorm)) or name in NO_DECAY_PARAMETER_NAMES
            or parameter.ndim < 2 or getattr(parameter, "_no_weight_decay", False))


def decay_parameter_names(model: nn.Module) -> list[str]:
    """Full names (as in ``model.named_parameters()``) of the parameters that get weight decay."""
    names = []
    for module_name, module in model.named_modules():
        for name, parameter in module.named_parameters(recurse=False):
            if not no_weight_decay(module, name, parameter):
                names.append(f"{module_name}.{name}" if module_name else name)
    return names


def optimizer_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups for a torch optimizer: decayed weights, then the exempt parameters (weight_decay 0).

    Tied parameters are listed once; frozen ones (requires_grad False) are left out.
    """
    decayed = set(decay_parameter_names(model))
    groups = [{"params": [], "weight_decay": weight_decay}, {"params": [], "weight_decay": 0.0}]
    for name, parameter in model.named_parameters():  # named_parameters() already skips tied duplicates
        if parameter.requires_grad:
            groups[0 if name in decayed else 1]["params"].append(parameter)
    return groups


def create_optimizer(model: nn.Module, args: TrainingArguments) -> torch.optim.Optimizer:
    """The optimizer ``Trainer`` would build from ``args`` (``args.optim``, lr, betas, eps), with these groups.

    For a plain ``Trainer``: ``Trainer(model, args, ..., optimizers=(create_optimizer(model, args), None))``
    (the Trainer still builds the learning-rate schedule).
    """
    optimizer_class, kwargs = Trainer.get_optimizer_cls_and_kwargs(args, model)
    return optimizer_class(optimizer_param_groups(model, args.weight_decay), **kwargs)


class HierMambaTrainer(Trainer):
    """``transformers.Trainer`` whose optimizer exempts the SSM dynamics, biases, norms and initial
    states from weight decay (module docstring). Everything else is Trainer's own."""

    def get_decay_parameter_names(self, model: nn.Module) -> list[str]:
        return decay_parameter_names(model)
