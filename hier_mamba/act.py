"""The math of HRM's adaptive computation time (ACT) and deep supervision, as pure functions.

Glossary (code name -> HRM paper / code):
    segment            one full H/L pass (all cycles) of the reasoner; HRM's "ACT step" / M.
    max_steps          M_max, ``halt_max_steps``: the most segments a sequence may run.
    min_halt_steps     M_min: with probability epsilon (``halt_exploration_prob``) a sequence draws
                       M_min uniformly from {2, ..., M_max} and may not halt before it.
    q_halt, q_continue Q-head logits: the estimated value of halting now / of running another segment.
    target_q_continue  HRM's Q-learning target for q_continue, from the *next* segment's Q values.

Losses return per-token values (0 at ignored positions) so callers choose the reduction; HRM
normalises each sequence by its number of labelled tokens.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from .reasoning import Carry

IGNORE_INDEX = -100


class Segment(NamedTuple):
    """One segment's results (what the functions below score). carry: (b, l, d) states; logits: (b, l, vocab);
    q_halt, q_continue: (b,) Q logits of halting now / of running another segment."""

    carry: Carry
    logits: torch.Tensor
    q_halt: torch.Tensor
    q_continue: torch.Tensor


def log_stablemax(logits: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """log(s(x) / sum s(x)) with HRM's s(x) = 1 / (1 - x) for x < 0, else x + 1.

    logits: (..., V) -> log-probabilities (..., V) in the dtype of ``logits``. s(x) grows linearly
    instead of exponentially, which HRM found more stable on small puzzle datasets. The two branches
    are written with log1p on clamped inputs, so neither produces inf/NaN (or a NaN gradient) for
    the values it does not select.
    """
    negative = logits < 0
    log_s = torch.where(negative, -torch.log1p(-logits.clamp(max=0)), torch.log1p(logits.clamp(min=0)))
    return log_s - torch.logsumexp(log_s, dim=dim, keepdim=True)  # log s - log sum s


def stablemax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-token -log stablemax(logits)[label], computed in float64 as in HRM.

    logits: (..., V); labels: (...) ints, ``ignore_index`` allowed. Returns (...) float32, 0 where ignored.
    """
    valid = labels != ignore_index
    log_probs = log_stablemax(logits.to(torch.float64), dim=-1)  # (..., V)
    picked = log_probs.gather(-1, torch.where(valid, labels, 0).long().unsqueeze(-1)).squeeze(-1)
    return torch.where(valid, -picked, 0.0).to(torch.float32)


def softmax_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-token softmax cross-entropy in float32. logits: (..., V); labels: (...). Returns (...), 0 where ignored."""
    flat = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.long().reshape(-1),
                           ignore_index=ignore_index, reduction="none")
    return flat.view(labels.shape)


LOSS_FUNCTIONS = {"softmax": softmax_cross_entropy, "stablemax": stablemax_cross_entropy}


def token_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, loss_type: str, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Per-token cross-entropy of kind ``loss_type`` ("softmax" | "stablemax"). (..., V), (...) -> (...)."""
    if loss_type not in LOSS_FUNCTIONS:
        raise ValueError(f"loss_type must be one of {tuple(LOSS_FUNCTIONS)}, got {loss_type!r}")
    return LOSS_FUNCTIONS[loss_type](logits, labels, ignore_index)


def sequence_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, loss_type: str, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Mean token cross-entropy of each sequence over its labelled positions (HRM's normalisation).

    logits: (b, l, V); labels: (b, l). Returns (b,); a sequence with no labelled token gives 0.
    """
    per_token = token_cross_entropy(logits, labels, loss_type, ignore_index)  # (b, l)
    counts = (labels != ignore_index).sum(-1).clamp(min=1)  # (b,)
    return per_token.sum(-1) / counts


def sequence_is_correct(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Whether argmax(logits) equals the label at every labelled position. (b, l, V), (b, l) -> (b,) bool."""
    correct = (logits.argmax(-1) == labels) | (labels == ignore_index)  # (b, l)
    return correct.all(-1)


def q_learning_targets(
    next_q_halt_logits: torch.Tensor, next_q_continue_logits: torch.Tensor, is_last_step: torch.Tensor | bool
) -> torch.Tensor:
    """HRM's target for q_continue: sigmoid(next q_halt) at the last step, else sigmoid(max of the next Q logits).

    next_q_*_logits: (b,) Q logits of the segment *after* the one being trained (no gradient is
    wanted through them: pass detached values). is_last_step: (b,) bool or a bool. Returns (b,) in (0, 1).
    """
    is_last_step = torch.as_tensor(is_last_step, device=next_q_halt_logits.device)
    best_next = torch.maximum(next_q_halt_logits, next_q_continue_logits)
    return torch.sigmoid(torch.where(is_last_step, next_q_halt_logits, best_next))


def q_halt_loss(q_halt_logits: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BCE of q_halt against "the segment's answer is exactly right" (HRM's halting target).

    q_halt_logits: (b,); logits: (b, l, V) of the same segment (no gradient flows through the target);
    labels: (b, l). Returns (b,) per-sequence losses.
    """
    correct = sequence_is_correct(logits.detach(), labels).to(q_halt_logits.dtype)  # (b,)
    return F.binary_cross_entropy_with_logits(q_halt_logits, correct, reduction="none")


def q_continue_loss(
    q_continue_logits: torch.Tensor,
    next_q_halt_logits: torch.Tensor,
    next_q_continue_logits: torch.Tensor,
    is_last_step: torch.Tensor | bool,
) -> torch.Tensor:
    """BCE of q_continue against :func:`q_learning_targets` of the next segment's Q logits (detached here).

    q_continue_logits, next_q_*_logits: (b,); is_last_step: (b,) bool or a bool. Returns (b,).
    """
    target = q_learning_targets(next_q_halt_logits.detach(), next_q_continue_logits.detach(), is_last_step)
    return F.binary_cross_entropy_with_logits(q_continue_logits, target, reduction="none")


def draw_min_halt_steps(
    batch_size: int,
    max_steps: int,
    exploration_prob: float,
    device: torch.device | str | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """M_min per sequence: with probability ``exploration_prob`` uniform in {2, ..., max_steps}, else 0.

    Returns (batch_size,) int64. Both random draws are always made (one ``rand`` and one ``randint``
    of ``batch_size`` each, from ``generator`` or the global torch RNG), so seeding reproduces them.
    A sequence may not halt before its M_min. ``act_training="all_segments"`` draws once per forward
    (the HRM paper's description); ``"one_segment"`` draws at every step, as HRM's code does.
    """
    if not 0.0 <= exploration_prob <= 1.0:
        raise ValueError(f"exploration_prob must be in [0, 1], got {exploration_prob!r}")
    explore = torch.rand(batch_size, device=device, generator=generator) < exploration_prob  # (b,)
    if max_steps < 2:  # a single segment leaves nothing to explore
        return torch.zeros(batch_size, dtype=torch.long, device=device)
    drawn = torch.randint(2, max_steps + 1, (batch_size,), device=device, generator=generator)  # (b,)
    return torch.where(explore, drawn, 0)


def halting_decision(
    step: int | torch.Tensor,
    max_steps: int,
    q_halt_logits: torch.Tensor,
    q_continue_logits: torch.Tensor,
    *,
    training: bool,
    eval_mode: str = "max_steps",
    min_halt_steps: torch.Tensor | None = None,
) -> torch.Tensor:
    """Whether each sequence halts after segment ``step`` (1-based). q_*_logits: (b,). Returns (b,) bool.

    ``step`` is one int for the whole batch (all segments in one forward) or a (b,) int tensor of
    per-sequence segment counts (one segment per training step, act_stream.py: each slot of the
    batch is at its own step; values are not range-checked there).

    Training: halt at the last step, or when q_halt > q_continue, but never before M_min.
    Evaluation: ``eval_mode="max_steps"`` runs every segment (HRM's evaluation);
    ``"q_halt"`` halts when q_halt > q_continue (or at the last step).
    """
    if not isinstance(step, torch.Tensor) and not 1 <= step <= max_steps:
        raise ValueError(f"step must be in [1, max_steps={max_steps}], got {step}")
    is_last = torch.zeros_like(q_halt_logits, dtype=torch.bool) | (step >= max_steps)  # (b,)
    wants_halt = q_halt_logits > q_continue_logits  # (b,)
    if training:
        halted = is_last | wants_halt
        if min_halt_steps is not None:
            halted &= step >= min_halt_steps
        return halted
    if eval_mode == "max_steps":
        return is_last
    if eval_mode == "q_halt":
        return is_last | wants_halt
    raise ValueError(f"eval_mode must be 'max_steps' or 'q_halt', got {eval_mode!r}")
