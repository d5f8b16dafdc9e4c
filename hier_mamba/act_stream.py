"""One ACT segment per training step: HRM's deep supervision as a stream of puzzles.

This is ``act_training="one_segment"`` (the default), the schedule of HRM's code
(sapientinc/HRM: ``HierarchicalReasoningModel_ACTV1.forward``, ``ACTLossHead``, ``pretrain.py``) and
of TRM. The batch is a set of b *slots*; each holds a puzzle, its carry (z_H, z_L) and the number
of segments it has run. Every training forward does, for all b slots at once:

    1. refill   slots that halted at the previous step take the new batch's puzzle at that slot,
                the initial carry (H_init, L_init) and step count 0; the others keep all three
                (HRM: ``torch.where(halted, new_batch, current_data)``);
    2. segment  one H/L pass from the carry, which was detached at the previous step;
    3. halt     steps += 1; halted = steps >= M_max, or (when M_max > 1) q_halt > q_continue but not
                before M_min, drawn afresh at every step (act.halting_decision, act.draw_min_halt_steps);
    4. target   q_continue's target (act.q_learning_targets) from one more segment from the new
                carry, without gradient; when M_max = 1 HRM trains no q_continue and runs no extra segment;
    5. loss     (1/b) sum over slots of [lm_i + 0.5 (BCE(q_halt_i, exactly right_i) + BCE(q_continue_i, target_i))],
                lm_i the mean token loss of slot i: every slot holds a live puzzle, so all count;
    6. keep     the new carry (detached), steps, halted flags and puzzles for the next forward.

The caller (``transformers.Trainer``, or any loop) steps the optimizer after every forward, so a
puzzle run for s segments sees s optimizer steps and *the number of training steps is the number of
segments trained*: step-based schedules (max_steps, warmup) count segments, not batches. (With
``gradient_accumulation_steps=k`` the optimizer steps after every k segments, each from its own batch.)

The state lives in :class:`ACTStream`, a plain object the model keeps as runtime state: not a
parameter or buffer, not in ``state_dict``, not saved. It keeps one stream per device, so the replicas
``nn.DataParallel`` makes at every forward (which share this object, each on its own device with its own
part of the batch) each continue their own. A stream restarts (every slot takes the batch's puzzle, as at
HRM's first step) on its first training forward, after ``model.reset_training_carry()``, after
``load_state_dict`` (so a resumed Trainer checkpoint starts from fresh puzzles: HRM does not checkpoint its
carry either), and, with a logged warning, when a batch has another batch size (e.g. a smaller last batch of
an epoch: ``dataloader_drop_last=True`` avoids it). A batch of another padded length continues the stream: the
kept puzzles or the new batch are right-padded to one length (padding masked out, labels ignored), and
columns only padding needs are dropped once the puzzles that needed them halted. Only a forward with
gradient advances the stream (a no-grad training-mode forward computes the step's loss and keeps nothing),
and it needs labels: deep supervision has no other loss, so a training forward without them raises
:class:`MissingLabelsError`. Evaluation (``model.eval()``) never touches it.

TRM (SamsungSAILMontreal/TinyRecursiveModels) runs the same stream; with its ``no_ACT_continue``
(``config.no_act_continue``) q_continue is held at 0, so a slot halts when q_halt > 0, and no
q_continue is trained (no extra segment in step 4: a quarter less compute per step).
H memory (``h_memory_size``) and synthetic gradients span segment boundaries inside one forward and
are only available with ``act_training="all_segments"``.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F

from .act import (
    IGNORE_INDEX,
    Segment,
    draw_min_halt_steps,
    halting_decision,
    q_continue_loss,
    q_halt_loss,
    sequence_cross_entropy,
)
from .configuration import HierMambaConfig
from .reasoning import Carry

logger = logging.getLogger(__name__)


class MissingLabelsError(ValueError):
    """A training forward with gradient got no labels: ACT's deep supervision computes its loss inside the model.

    transformers' Trainer pops ``labels`` before the forward when it computes the loss itself
    (``label_smoothing_factor > 0``, ``compute_loss_func``); neither applies to this head."""


class SegmentModel(Protocol):
    """What the stream needs from a model (HierMambaForTokenClassification implements it)."""

    config: HierMambaConfig

    def embed_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The injected input x (b, l, d) of tokens (b, l)."""

    def initial_carry(self, x: torch.Tensor) -> Carry:
        """The carry a fresh puzzle starts from, shaped like x (b, l, d)."""

    def run_segment(self, x: torch.Tensor, carry: Carry | None, attention_mask: torch.Tensor | None) -> Segment:
        """One full H/L pass from ``carry``."""


class StreamState(NamedTuple):
    """What one training step leaves for the next (HRM's ``HierarchicalReasoningModel_ACTV1Carry``), detached.

    carry: z_H, z_L (b, l, d) of each slot, or None before the first segment; steps: (b,) int64
    segments run on each slot's puzzle; halted: (b,) bool, the slot takes a new puzzle at the next
    step; input_ids, labels: (b, l) the slots' puzzles; attention_mask: (b, l) or None.
    """

    carry: Carry | None
    steps: torch.Tensor
    halted: torch.Tensor
    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor | None


class StreamStep(NamedTuple):
    """One training step: the state to keep, the segment run (with its graph) and the loss terms.

    The losses are 0-dim: sums over the b slots divided by b (HRM divides by the global batch size).
    """

    state: StreamState
    segment: Segment
    lm_loss: torch.Tensor
    q_halt_loss: torch.Tensor
    q_continue_loss: torch.Tensor


class ACTStream:
    """The training streams' states between forwards (module docstring), one per device: ``states[device]``."""

    def __init__(self):
        self.states: dict[torch.device, StreamState] = {}

    @property
    def state(self) -> StreamState | None:
        """The state of the one stream (None when fresh). Raises when several devices each keep one."""
        if len(self.states) > 1:
            raise ValueError(f"one stream per device ({sorted(map(str, self.states))}): read ACTStream.states")
        return next(iter(self.states.values()), None)

    def reset(self) -> None:
        """Forget every slot: the next training step takes all puzzles from its batch (in place: replicas share it)."""
        self.states.clear()

    def step(
        self,
        model: SegmentModel,
        input_ids: torch.Tensor,
        labels: torch.Tensor,
        attention_mask: torch.Tensor | None,
        keep: bool = True,
    ) -> StreamStep:
        """Run one training segment on the stream of input_ids' device, refilled from this batch.

        input_ids, labels: (b, l); attention_mask: (b, l) or None. ``keep=False`` computes the step and leaves the
        stream as it was (a forward without gradient must not advance it).
        """
        if model.config.h_memory_size or model.config.synthetic_gradients:
            raise ValueError("h_memory_size and synthetic_gradients span segment boundaries inside one forward: "
                             "set act_training='all_segments' to train with them")
        device = input_ids.device
        kept = self.states.get(device)
        if kept is not None and kept.input_ids.shape[0] != input_ids.shape[0]:
            logger.warning("ACT training stream restarted: a batch of %d puzzles cannot refill the %d slots of the "
                           "stream (every slot starts again at segment 1; dataloader_drop_last=True avoids this)",
                           input_ids.shape[0], kept.input_ids.shape[0])
            kept = None
        pad_id = model.config.pad_token_id or 0
        if kept is not None and kept.input_ids.shape[1] != input_ids.shape[1]:
            kept, input_ids, labels, attention_mask = _align_lengths(kept, input_ids, labels, attention_mask, pad_id)
        result = train_one_segment(model, kept, input_ids, labels, attention_mask)
        if keep:
            self.states[device] = result.state
        return result


def train_one_segment(
    model: SegmentModel,
    state: StreamState | None,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None,
) -> StreamStep:
    """Steps 1-6 of the module docstring. ``state`` None: every slot starts from this batch.

    input_ids, labels: (b, l) the new batch, as long as the state's puzzles; attention_mask: (b, l) or None.
    """
    config, batch = model.config, input_ids.shape[0]
    max_steps = config.halt_max_steps
    if state is None:  # HRM's initial carry: every slot halted, so every slot takes the new batch
        state = StreamState(None, torch.zeros(batch, dtype=torch.long, device=input_ids.device),
                            torch.ones(batch, dtype=torch.bool, device=input_ids.device),
                            input_ids, labels, attention_mask)
    # 1. Refill: halted slots take the new puzzle, the initial carry and step 0; the others keep theirs.
    halted = state.halted  # (b,)
    input_ids = _where_halted(halted, input_ids, state.input_ids)  # (b, l)
    labels = _where_halted(halted, labels, state.labels)  # (b, l)
    attention_mask = _refill_mask(halted, attention_mask, state.attention_mask)  # (b, l) or None
    x = model.embed_inputs(input_ids)  # (b, l, d)
    carry = _reset_carry(halted, state.carry, model.initial_carry(x))
    steps = torch.where(halted, 0, state.steps)  # (b,)
    # 2. One segment from the (already detached) carry.
    segment = model.run_segment(x, carry, attention_mask)
    # 3. Halting: the last step, or Q says halt (once past a fresh exploration minimum) when M_max > 1.
    steps = steps + 1
    is_last_step = steps >= max_steps  # (b,)
    halted = is_last_step
    if max_steps > 1:
        min_halt_steps = draw_min_halt_steps(batch, max_steps, config.halt_exploration_prob, device=x.device)
        halted = halting_decision(steps, max_steps, segment.q_halt.detach(), segment.q_continue.detach(),
                                  training=True, min_halt_steps=min_halt_steps)
    # 4-5. Loss terms over all slots; q_continue's target needs the next segment's Q values (no gradient).
    lm = sequence_cross_entropy(segment.logits, labels, config.loss_type).sum() / batch
    q_halt = q_halt_loss(segment.q_halt, segment.logits, labels).sum() / batch
    q_continue = torch.zeros_like(q_halt)
    if max_steps > 1 and not config.no_act_continue:  # TRM's no_ACT_continue: no target, no extra segment
        with torch.no_grad():
            following = model.run_segment(x, segment.carry.detach(), attention_mask)
        q_continue = q_continue_loss(segment.q_continue, following.q_halt, following.q_continue,
                                     is_last_step).sum() / batch
    # 6. What the next step starts from.
    kept = StreamState(segment.carry.detach(), steps, halted, input_ids, labels, attention_mask)
    return StreamStep(kept, segment, lm, q_halt, q_continue)


def _align_lengths(state: StreamState, input_ids, labels, attention_mask, pad_id: int):
    """The kept state and the new batch at one padded length: the new batch's, or longer where a slot that runs on
    holds a longer puzzle. Padding is masked out (attention 0, label ignored, carry 0); columns that only padding
    and halted slots (which take new puzzles) occupy are dropped. Returns (state, input_ids, labels, mask), (b, l')."""
    kept_mask = torch.ones_like(state.input_ids) if state.attention_mask is None else state.attention_mask
    used = kept_mask.bool() & ~state.halted[:, None]  # (b, l_kept): real tokens of the slots that run on
    columns = used.any(0).nonzero()
    needed = int(columns[-1]) + 1 if len(columns) else 0
    length = max(input_ids.shape[1], needed)

    def fit(t: torch.Tensor, value) -> torch.Tensor:  # (b, l, ...) cut or right-padded to length along dim 1
        if t.shape[1] >= length:
            return t[:, :length]
        pad = [0, 0] * (t.dim() - 2) + [0, length - t.shape[1]]
        return F.pad(t, pad, value=value)

    new_mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    carry = state.carry if state.carry is None else Carry(fit(state.carry.z_H, 0.0), fit(state.carry.z_L, 0.0))
    state = state._replace(carry=carry, input_ids=fit(state.input_ids, pad_id),
                           labels=fit(state.labels, IGNORE_INDEX), attention_mask=fit(kept_mask, 0))
    return state, fit(input_ids, pad_id), fit(labels, IGNORE_INDEX), fit(new_mask, 0)


def _where_halted(halted: torch.Tensor, new: torch.Tensor, old: torch.Tensor) -> torch.Tensor:
    """Per slot, ``new`` where halted (b,) else ``old``. new, old: (b, ...)."""
    return torch.where(halted.view(-1, *(1,) * (new.dim() - 1)), new, old)


def _refill_mask(halted, new: torch.Tensor | None, old: torch.Tensor | None) -> torch.Tensor | None:
    """The slots' attention masks (b, l); None while no puzzle in the stream has one (None = all ones)."""
    if new is None and old is None:
        return None
    new = torch.ones_like(old) if new is None else new
    old = torch.ones_like(new) if old is None else old
    return _where_halted(halted, new, old)


def _reset_carry(halted: torch.Tensor, carry: Carry | None, initial: Carry) -> Carry:
    """HRM's ``reset_carry``: the initial z_H, z_L where halted (b,), else the kept ones. (b, l, d) each."""
    if carry is None:
        return initial
    return Carry(_where_halted(halted, initial.z_H, carry.z_H), _where_halted(halted, initial.z_L, carry.z_L))
