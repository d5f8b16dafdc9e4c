"""HierMambaForTokenClassification: HRM's puzzle head with ACT and deep supervision.

Training has two schedules (``config.act_training``), dispatched by ``forward``:

* ``"one_segment"`` (default; HRM's and TRM's code): each training forward runs *one* segment of a
  stream of puzzles whose carry is kept across calls, halted puzzles replaced by the batch's new
  ones; the optimizer steps after every segment. The stream is act_stream.py.
* ``"all_segments"``: one call runs every segment of the batch, described below. Evaluation
  (``model.eval()``) always runs this way, as does a training forward without labels and without gradient
  (with gradient, a training forward needs labels: act_stream.MissingLabelsError).

All segments in one call: up to ``halt_max_steps`` *segments* (one full H/L pass each). Between
segments the carry (z_H, z_L) is detached, so the loss, a sum over segments, has the gradient of the
sum of per-segment losses: HRM's deep supervision, but with one optimizer step per batch.
Activation memory grows with the number of segments run (each keeps its own graph until backward).

Per segment s, over the sequences still running (not halted at an earlier segment), with b the
batch size (HRM's weighting: every (sequence, segment) pair counts the same):

    lm_s         = (1/b) sum_i  mean over labelled tokens of CE(logits_s, labels)
    q_halt_s     = (1/b) sum_i  BCE(q_halt_s, sequence exactly correct at s)
    q_continue_s = (1/b) sum_i  BCE(q_continue_s, q_learning_targets(Q_{s+1}, is_last_step))
    loss         = sum_s  lm_s + 0.5 * (q_halt_s + q_continue_s)

Q_{s+1} are the next segment's Q logits, detached. The next segment is run anyway unless s was the
last segment run; then one extra segment under ``torch.no_grad()`` provides them (HRM also runs
one segment past the last step for its target). Halted sequences keep being computed with the
batch; their outputs are simply no longer used.

The Q-head reads the mean of z_H over the (unpadded) positions: the model has no puzzle embedding
or special first token for it to read instead (HRM reads position 0, its puzzle-embedding slot).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn
from transformers import initialization as init
from transformers.modeling_outputs import ModelOutput

from .act import (
    IGNORE_INDEX,
    Segment,
    draw_min_halt_steps,
    halting_decision,
    q_continue_loss,
    q_halt_loss,
    sequence_cross_entropy,
)
from .act_stream import ACTStream, MissingLabelsError
from .configuration import HierMambaConfig
from .modeling import HierMambaModel, HierMambaPreTrainedModel, check_forward_kwargs, check_token_ids
from .reasoning import Carry
from .solving import SolveOutput, solve as solve_puzzles
from .synthetic_gradients import SyntheticGradientModel, synthetic_boundary

INV_SQRT2 = 0.5 ** 0.5
Q_HEAD_BIAS_INIT = -5.0  # HRM: Q starts at sigmoid(-5) ~ 0.007 for both actions, weight 0 (no early halting)


@dataclass
class HierMambaACTOutput(ModelOutput):
    """Output of :class:`HierMambaForTokenClassification`.

    loss:              deep-supervision loss (module docstring), when labels are given.
    logits:            (b, l, vocab) of the segment each sequence halted at (or the last run), fp32.
                       In one_segment training: of this step's segment, for the stream's puzzles (a
                       slot still running holds an earlier batch's puzzle, not this batch's row).
    q_halt_logits:     (b,) Q logit of halting, from that same segment.
    q_continue_logits: (b,) Q logit of continuing, from that same segment.
    steps:             (b,) int64, segments each sequence used (1..number of segments); in one_segment
                       training the segments each slot's puzzle has run, this one included.
    all_logits:        (segments run, b, l, vocab), only with ``return_all_segments``.
    all_q_logits:      (segments run, b, 2) of (halt, continue), only with ``return_all_segments``.
    lm_loss, q_halt_loss, q_continue_loss: the summed components of ``loss``, detached.
    halted:            (b,) bool, one_segment training only: the slots whose puzzle halted at this
                       step (they take the next batch's puzzle); ``halted.sum()`` counts them.
    """

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    q_halt_logits: torch.Tensor | None = None
    q_continue_logits: torch.Tensor | None = None
    steps: torch.Tensor | None = None
    all_logits: torch.Tensor | None = None
    all_q_logits: torch.Tensor | None = None
    lm_loss: torch.Tensor | None = None
    q_halt_loss: torch.Tensor | None = None
    q_continue_loss: torch.Tensor | None = None
    halted: torch.Tensor | None = None


class _PendingLoss(NamedTuple):
    """One segment's loss terms, held open until the next segment runs: the token CE and q_halt BCE are known when
    the segment ends, but q_continue's target is built from the *next* segment's Q logits. ``_open`` makes one from
    a segment, ``_close`` reduces it once that next segment (or none, with ``no_act_continue``) is known."""

    lm: torch.Tensor  # (b,) mean token CE per sequence
    q_halt: torch.Tensor  # (b,) BCE against exact correctness
    q_continue_logits: torch.Tensor  # (b,)
    running: torch.Tensor  # (b,) bool: sequences whose loss counts at this segment
    is_last_step: bool


class HierMambaForTokenClassification(HierMambaPreTrainedModel):
    """Per-position output tokens (puzzle input grid -> solution grid) with ACT over segments.

    Modules: ``model`` (HierMambaModel backbone), ``lm_head`` Linear(hidden, vocab_size) on z_H,
    ``q_head`` Linear(hidden, 2) on mean-pooled z_H (HRM init: weight 0, bias -5), with
    ``config.position_embeddings = n > 0`` an Embedding(n, hidden) of positions added to the token
    embeddings (HRM's learned position encoding), and, with ``config.synthetic_gradients``,
    ``synthetic_gradient`` predicting the gradient cut at each segment boundary (synthetic_gradients.py).
    ``act_stream`` holds the one_segment training stream (runtime state, not saved; act_stream.py):
    ``reset_training_carry()`` empties it, and loading a state dict does too.
    """

    accepts_loss_kwargs = False  # the loss is normalised here; Trainer must scale it for accumulation

    def __init__(self, config: HierMambaConfig):
        config = _token_labels(config)
        super().__init__(config)
        self.model = HierMambaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.q_head = nn.Linear(config.hidden_size, 2)  # (halt, continue)
        self.position_embeddings = (nn.Embedding(config.position_embeddings, config.hidden_size)
                                    if config.position_embeddings else None)
        self.synthetic_gradient = (SyntheticGradientModel(config.hidden_size, config.rms_norm_eps)
                                   if config.synthetic_gradients else None)
        self.act_stream = ACTStream()  # a plain object: not a parameter, buffer or submodule
        self.register_load_state_dict_post_hook(_restart_act_stream)  # new weights: fresh puzzles
        self.post_init()

    def reset_training_carry(self) -> None:
        """Restart the one_segment training stream: the next training step takes all its puzzles from its batch."""
        self.act_stream.reset()

    def solve(self, input_ids: torch.Tensor, max_segments: int | None = None, halt: str = "q", **options) -> SolveOutput:
        """Answer puzzles (b, l) with test-time compute: up to ``max_segments`` segments, halting by the Q-head
        (``halt="q"``), not (``"fixed"``), or at the segment it is surest of (``"best"``); ``options`` (copies,
        select, rounds, commit_threshold, blank_token, seed) as :func:`hier_mamba.solving.solve`.
        Returns its SolveOutput (predictions (b, l), segments run, ...)."""
        return solve_puzzles(self, input_ids, max_segments=max_segments, halt=halt, **options)

    def _init_weights(self, module: nn.Module) -> None:
        """The backbone's init (the untied lm_head LeCun normal, HRM's), then HRM's Q-head (weight 0, bias -5),
        which the generic Linear init would undo."""
        super()._init_weights(module)
        if module is getattr(self, "q_head", None):
            init.zeros_(module.weight)
            init.constant_(module.bias, Q_HEAD_BIAS_INIT)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        num_segments: int | None = None,
        return_all_segments: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> HierMambaACTOutput | tuple:
        """
        Args:
            input_ids: (b, l) puzzle tokens.
            attention_mask: (b, l) of 0/1; padded positions are skipped by the scans and the Q pooling.
            labels: (b, l) solution tokens, -100 where not scored. A training forward with gradient needs them
                (deep supervision is this head's loss): without, it raises MissingLabelsError.
            num_segments: the most segments to run (default ``config.halt_max_steps``); at evaluation
                this tests with more (or fewer) segments than training used.
            return_all_segments: also return every segment's logits and Q logits.
            return_dict: False returns a tuple (defaults to config.return_dict).
            kwargs: only position_ids / cache_position / output_attentions, which are ignored (as the causal LM).
        Returns:
            HierMambaACTOutput (see its docstring), or its tuple. Training with labels and ``config.act_training=
            "one_segment"`` runs one segment of the training stream (act_stream.py; without gradient the stream is
            not advanced); otherwise all segments run here. Halting follows ``act.halting_decision``: Q-head and
            exploration in training, ``config.act_eval_mode`` in evaluation.
        """
        check_forward_kwargs(type(self).__name__, kwargs)
        return_dict = self.config.return_dict if return_dict is None else return_dict
        self._check_inputs(input_ids, labels, attention_mask)
        if self.training and labels is None and torch.is_grad_enabled():
            raise MissingLabelsError(
                "HierMambaForTokenClassification trains with deep supervision, whose loss needs labels in the "
                "forward; got none (transformers' Trainer removes them when label_smoothing_factor > 0 or "
                "compute_loss_func is set: leave both unset for this head; for predictions, call model.eval() or "
                "run under torch.no_grad())")
        if self.training and labels is not None and self.config.act_training == "one_segment":
            if num_segments is not None or return_all_segments:
                raise ValueError("num_segments and return_all_segments apply when all segments run in one forward "
                                 "(evaluation, or act_training='all_segments'); one_segment training runs one")
            output = self._forward_one_segment(input_ids, labels, attention_mask)
        else:
            output = self._forward_all_segments(input_ids, labels, attention_mask, self._max_steps(num_segments),
                                                return_all_segments)
        return output if return_dict else output.to_tuple()

    def _forward_one_segment(self, input_ids, labels, attention_mask) -> HierMambaACTOutput:
        """One segment of the training stream, refilled from this batch (act_stream.py). (b, l) inputs; the outputs
        are (b, l') with l' the stream's padded length (l unless a kept puzzle is longer)."""
        step = self.act_stream.step(self, input_ids, labels, attention_mask, keep=torch.is_grad_enabled())
        segment, state = step.segment, step.state
        return HierMambaACTOutput(
            loss=step.lm_loss + 0.5 * (step.q_halt_loss + step.q_continue_loss), logits=segment.logits,
            q_halt_logits=segment.q_halt, q_continue_logits=segment.q_continue, steps=state.steps,
            lm_loss=step.lm_loss.detach(), q_halt_loss=step.q_halt_loss.detach(),
            q_continue_loss=step.q_continue_loss.detach(), halted=state.halted,
        )

    def _forward_all_segments(self, input_ids, labels, attention_mask, max_steps: int,
                              return_all_segments: bool) -> HierMambaACTOutput:
        """Every segment of the batch in this call (module docstring). (b, l) inputs, validated."""
        # 1. Embed once: every segment injects the same x.
        x = self.embed_inputs(input_ids)  # (b, l, d)
        batch = x.shape[0]
        # 2. Exploration: the minimum number of segments of each sequence (training only: eval draws nothing).
        min_halt_steps = (draw_min_halt_steps(batch, max_steps, self.config.halt_exploration_prob, device=x.device)
                          if self.training else None)  # (b,)
        # 3. Segments until every sequence halted; finish each segment's loss when the next Q is known.
        halted = torch.zeros(batch, dtype=torch.bool, device=x.device)  # (b,)
        steps = torch.zeros(batch, dtype=torch.long, device=x.device)  # (b,)
        carry, final, pending, terms, history = None, None, None, [], []
        for step in range(1, max_steps + 1):
            segment = self.run_segment(x, carry, attention_mask)
            running = ~halted
            if labels is not None:
                if pending is not None:
                    terms.append(self._close(pending, None if self.config.no_act_continue else segment))
                pending = self._open(segment, labels, running, is_last_step=step == max_steps)
            halted = halted | (running & halting_decision(
                step, max_steps, segment.q_halt.detach(), segment.q_continue.detach(), training=self.training,
                eval_mode=self.config.act_eval_mode, min_halt_steps=min_halt_steps))
            steps = torch.where(running, step, steps)
            final = segment if final is None else _select(running, segment, final)
            if return_all_segments:
                history.append(segment)
            if bool(halted.all()):
                break
            carry = self._boundary(segment.carry, still_running=~halted)
        # 4. The last segment's q_continue target needs one more segment's Q values (no gradient).
        if pending is not None and self.config.no_act_continue:  # TRM: no q_continue, no extra segment
            terms.append(self._close(pending, None))
        elif pending is not None:
            with torch.no_grad():
                extra = self.run_segment(x, segment.carry.detach(), attention_mask)
            terms.append(self._close(pending, extra))
        return self._output(final, steps, terms, history, batch)

    # segments ---------------------------------------------------------------------------------
    def embed_inputs(self, input_ids: torch.Tensor) -> torch.Tensor:
        """The injected input x (b, l, d) of puzzle tokens (b, l): token (+ position) embeddings."""
        x = self.model.get_input_embeddings()(input_ids)  # (b, l, d); the backbone applies the sqrt(d) scale
        if self.position_embeddings is not None:  # HRM: 1/sqrt(2) keeps the sum of two unit-scale tables unit-scale
            x = INV_SQRT2 * (x + self.position_embeddings.weight[: x.shape[1]])  # (l, d) broadcast over the batch
        return x

    def initial_carry(self, x: torch.Tensor) -> Carry:
        """The carry a fresh puzzle starts from (HRM's H_init, L_init, or zeros), broadcast to x (b, l, d)."""
        return self.model.reasoner.initial_carry(x)

    def run_segment(self, x: torch.Tensor, carry: Carry | None, attention_mask: torch.Tensor | None) -> Segment:
        """One full H/L pass from ``carry`` (None: the initial states). x: (b, l, d)."""
        outputs = self.model(inputs_embeds=x, attention_mask=attention_mask, carry=carry, use_cache=False,
                             return_dict=True)
        z_H = outputs.last_hidden_state  # (b, l, d)
        logits = self.lm_head(z_H.to(self.lm_head.weight.dtype)).float()  # (b, l, vocab)
        pooled = _masked_mean(z_H, attention_mask)  # (b, d)
        q = self.q_head(pooled.to(self.q_head.weight.dtype)).float()  # (b, 2)
        q_continue = torch.zeros_like(q[:, 1]) if self.config.no_act_continue else q[:, 1]  # TRM: halt iff q_halt > 0
        return Segment(outputs.carry, logits, q[:, 0], q_continue)

    def _boundary(self, carry: Carry, still_running: torch.Tensor) -> Carry:
        """The carry handed to the next segment: detached, or through a synthetic-gradient boundary.

        The synthetic gradient only helps when the reasoner's gradient window reaches the carry it
        starts from (``bptt_steps`` covering all invocations); sequences already halted get none.
        """
        if self.synthetic_gradient is None or not torch.is_grad_enabled():
            return carry.detach()
        sg = self.synthetic_gradient
        g_H, g_L = sg(carry.z_H.detach(), carry.z_L.detach())  # (b, l, d) each, in units of sg.unit_H / unit_L
        keep = still_running[:, None, None].to(g_H.dtype)  # (b, 1, 1)
        scale = self.config.synthetic_gradient_scale
        return Carry(synthetic_boundary(carry.z_H, g_H * keep, sg.unit_H, scale),
                     synthetic_boundary(carry.z_L, g_L * keep, sg.unit_L, scale),
                     tuple(m.detach() for m in carry.memory))

    # losses -----------------------------------------------------------------------------------
    def _open(self, segment: Segment, labels: torch.Tensor, running: torch.Tensor, is_last_step: bool) -> _PendingLoss:
        """A _PendingLoss holding the terms of ``segment`` that need no future (token CE and the q_halt BCE, (b,)
        each), its q_continue logits, and which sequences (``running``, (b,) bool) count at this segment."""
        lm = sequence_cross_entropy(segment.logits, labels, self.config.loss_type)  # (b,)
        q_halt = q_halt_loss(segment.q_halt, segment.logits, labels)  # (b,) BCE against exact correctness
        return _PendingLoss(lm, q_halt, segment.q_continue, running, is_last_step)

    @staticmethod
    def _close(pending: _PendingLoss, next_segment: Segment | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(lm, q_halt, q_continue) of the pending segment, each summed over its running sequences.

        ``next_segment`` None: no q_continue is trained (``no_act_continue``), its term is 0.
        """
        q_continue = (torch.zeros_like(pending.lm) if next_segment is None else
                      q_continue_loss(pending.q_continue_logits, next_segment.q_halt, next_segment.q_continue,
                                      pending.is_last_step))  # (b,)
        weight = pending.running.to(pending.lm.dtype)  # (b,)
        return (pending.lm * weight).sum(), (pending.q_halt * weight).sum(), (q_continue * weight).sum()

    def _output(self, final: Segment, steps, terms, history, batch: int) -> HierMambaACTOutput:
        """Reduce the per-segment terms to the losses (divided by the batch size) and pack the output."""
        loss = lm_loss = q_halt_loss = q_continue_loss = None
        if terms:
            lm_loss, q_halt_loss, q_continue_loss = (torch.stack(parts).sum() / batch for parts in zip(*terms))
            loss = lm_loss + 0.5 * (q_halt_loss + q_continue_loss)
            lm_loss, q_halt_loss, q_continue_loss = lm_loss.detach(), q_halt_loss.detach(), q_continue_loss.detach()
        all_logits = torch.stack([s.logits for s in history]) if history else None  # (segments, b, l, vocab)
        all_q = torch.stack([torch.stack([s.q_halt, s.q_continue], -1) for s in history]) if history else None
        return HierMambaACTOutput(
            loss=loss, logits=final.logits, q_halt_logits=final.q_halt, q_continue_logits=final.q_continue,
            steps=steps, all_logits=all_logits, all_q_logits=all_q,
            lm_loss=lm_loss, q_halt_loss=q_halt_loss, q_continue_loss=q_continue_loss,
        )

    # validation -------------------------------------------------------------------------------
    def _max_steps(self, num_segments: int | None) -> int:
        """The most segments this forward may run: ``num_segments`` (validated) or ``config.halt_max_steps``."""
        if num_segments is None:
            return self.config.halt_max_steps
        if not isinstance(num_segments, int) or isinstance(num_segments, bool) or num_segments < 1:
            raise ValueError(f"num_segments must be a positive int (or None for halt_max_steps), got {num_segments!r}")
        return num_segments

    def _check_inputs(self, input_ids, labels, attention_mask) -> None:
        """Raise ValueError naming the first bad input: shapes (b, l), ids in the vocabulary, length vs positions."""
        if input_ids is None or input_ids.dim() != 2:
            shape = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be a (batch, length) tensor, got shape {shape}")
        check_token_ids("input_ids", input_ids, self.config.vocab_size)
        if self.config.position_embeddings and input_ids.shape[1] > self.config.position_embeddings:
            raise ValueError(f"input_ids has length {input_ids.shape[1]} but the position table has "
                             f"position_embeddings={self.config.position_embeddings} rows")
        if labels is not None:
            if labels.shape != input_ids.shape:
                raise ValueError(f"labels has shape {tuple(labels.shape)}, "
                                 f"expected input_ids' {tuple(input_ids.shape)}")
            check_token_ids("labels", labels, self.config.vocab_size, ignore_index=IGNORE_INDEX)
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, "
                             f"expected input_ids' {tuple(input_ids.shape)}")


def _token_labels(config: HierMambaConfig) -> HierMambaConfig:
    """The config this head uses: its classes are the vocabulary (a puzzle cell's label is its solution token), so
    an unset (default two-label) id2label becomes the token ids, num_labels = vocab_size; any other num_labels
    raises. Nothing is tied (the output head reads z_H, not the embeddings): tie_word_embeddings False. A config
    that needs either change is copied first: the caller's object is left as it was."""
    default = {0: "LABEL_0", 1: "LABEL_1"}
    relabel = config.num_labels != config.vocab_size
    if relabel and config.id2label != default:
        raise ValueError(f"HierMambaForTokenClassification predicts vocabulary tokens: num_labels must equal "
                         f"vocab_size={config.vocab_size}, got num_labels={config.num_labels}")
    if not relabel and not config.tie_word_embeddings:
        return config
    config = copy.deepcopy(config)
    if relabel:
        config.id2label = {index: str(index) for index in range(config.vocab_size)}
        config.label2id = {label: index for index, label in config.id2label.items()}
    config.tie_word_embeddings = False
    return config


def _restart_act_stream(module: HierMambaForTokenClassification, incompatible_keys) -> None:
    """load_state_dict post-hook: new weights start the one_segment training stream from fresh puzzles."""
    module.reset_training_carry()


def _masked_mean(z: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over positions. z: (b, l, d); attention_mask: (b, l) or None. Returns (b, d)."""
    if attention_mask is None:
        return z.mean(1)
    weight = attention_mask.to(z.dtype)[:, :, None]  # (b, l, 1)
    return (z * weight).sum(1) / weight.sum(1).clamp(min=1)


def _select(mask: torch.Tensor, new: Segment, old: Segment) -> Segment:
    """Per sequence, ``new`` where mask (b,) is True, else ``old`` (the carry is taken from ``new``)."""
    return Segment(
        new.carry,
        torch.where(mask[:, None, None], new.logits, old.logits),
        torch.where(mask, new.q_halt, old.q_halt),
        torch.where(mask, new.q_continue, old.q_continue),
    )
