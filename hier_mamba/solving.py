"""Test-time compute for puzzle models: segments with Q-halting, symmetric copies, and committed rounds.

:func:`solve` turns more inference compute into accuracy in three ways, each optional and measured in
docs/results.md:

1. **Segments.** Up to ``max_segments`` ACT segments (full H/L passes carrying the state). ``halt="fixed"``
   answers with the last segment (HRM's evaluation); ``halt="q"`` answers with the first segment whose
   Q-head says halt (q_halt > q_continue; q_continue is 0 with ``no_act_continue``), else the last;
   ``halt="best"`` runs every segment and answers with the one whose halt margin q_halt - q_continue is
   highest (useful when the Q-head ranks states well but never crosses its threshold).
2. **Symmetric copies** (``copies=n``). The puzzle and n - 1 random symmetric copies (Sudoku: digit
   relabelling, band/stack and line shuffles, transpose; square grids: the 8 rotations/reflections) are
   solved and their answers mapped back. ``select="vote"`` averages the mapped-back cell probabilities
   (augmentation voting); ``select="q"`` keeps, per puzzle, the copy whose Q-head is most sure it solved
   it (several differently-perturbed runs picked by the Q-head); ``select="plurality"`` keeps the whole-grid
   answer that most copies agree on exactly (self-consistency: a right answer recurs, wrong ones scatter),
   ties broken by the Q-head.
3. **Committed rounds** (``rounds=r``, Sudoku-style tasks with a blank token). After a round, every blank
   whose predicted probability is at least ``commit_threshold`` is written into the input as if given
   (at least the most confident blank of each unfinished puzzle), and the next round starts from the new
   grid. Confident cells then constrain the rest, so a model that reliably finds forced cells solves
   puzzles that need many chained deductions. Rounds stop once no blank is left.

Cost is reported in segments: ``SolveOutput.segments`` counts every segment run for a puzzle (all
copies, all rounds), so accuracy can be set against compute.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from .act import log_stablemax
from .data import sudoku

HALT_RULES = ("q", "fixed", "best")
SELECT_RULES = ("vote", "q", "plurality")


class Symmetry(NamedTuple):
    """One symmetry of a grid task as index maps: transformed ``tokens[k] = token_map[tokens[positions[k]]]``.

    positions: (l,) long, the input cell each output cell reads.  token_map: (vocab,) long, a permutation.
    """

    positions: torch.Tensor
    token_map: torch.Tensor

    def apply(self, tokens: torch.Tensor) -> torch.Tensor:
        """Tokens (b, l) -> their transformed copy (b, l)."""
        return self.token_map[tokens[:, self.positions]]

    def invert_probabilities(self, probabilities: torch.Tensor) -> torch.Tensor:
        """Per-cell probabilities (b, l, vocab) of the transformed puzzle -> those of the original."""
        original = torch.empty_like(probabilities)
        original[:, self.positions] = probabilities  # cell k of the copy is cell positions[k] of the original
        return original[..., self.token_map]  # original token t reads the copy's token token_map[t]


def identity_symmetry(length: int, vocab_size: int) -> Symmetry:
    return Symmetry(torch.arange(length), torch.arange(vocab_size))


def sudoku_symmetry(rng: np.random.Generator) -> Symmetry:
    """A random Sudoku symmetry (sudoku.random_transform) in the token layout of hier_mamba.data.sudoku."""
    transform = sudoku.random_transform(rng)
    cells = np.arange(81).reshape(9, 9)
    if transform.transpose:
        cells = cells.T
    positions = cells[np.ix_(transform.row_order, transform.col_order)].reshape(81)
    token_map = np.concatenate([[sudoku.PAD_TOKEN, sudoku.BLANK_TOKEN],
                                transform.digit_map[1:] + sudoku.DIGIT_TOKEN_OFFSET])  # digit d -> token d + 1
    return Symmetry(torch.as_tensor(positions), torch.as_tensor(token_map))


def dihedral_symmetry(side: int, vocab_size: int, k: int) -> Symmetry:
    """Symmetry k in 0..7 of a (side, side) grid: k % 4 quarter turns, then a transpose when k >= 4."""
    cells = np.rot90(np.arange(side * side).reshape(side, side), k % 4)
    cells = cells.T if k >= 4 else cells
    return Symmetry(torch.as_tensor(np.ascontiguousarray(cells).reshape(-1)), torch.arange(vocab_size))


def draw_symmetries(config, copies: int, seed: int) -> list[Symmetry]:
    """The identity and ``copies - 1`` random symmetries of the model's grid task (Sudoku or a square grid)."""
    length = int(np.prod(config.grid_shape)) if config.grid_shape else None
    if length is None:
        raise ValueError("copies > 1 needs a grid task: config.grid_shape is not set")
    symmetries = [identity_symmetry(length, config.vocab_size)]
    rng = np.random.default_rng(seed)
    is_sudoku = list(config.grid_shape) == [9, 9] and config.box_shape and config.vocab_size == sudoku.VOCAB_SIZE
    if is_sudoku:
        symmetries += [sudoku_symmetry(rng) for _ in range(copies - 1)]
    elif config.grid_shape[0] == config.grid_shape[1]:
        ks = rng.permutation(np.arange(1, 8))  # distinct non-identity symmetries first
        symmetries += [dihedral_symmetry(config.grid_shape[0], config.vocab_size, int(ks[i % 7]))
                       for i in range(copies - 1)]
    else:
        raise ValueError(f"no symmetry group for grid_shape={config.grid_shape}: use copies=1")
    return symmetries


@dataclass
class SolveOutput:
    """Result of :func:`solve`.

    predictions:   (b, l) answer tokens: with ``blank_token``, the givens and committed cells as written and the
                   last round's argmax in the other blanks; without it, the argmax everywhere.
    probabilities: (b, l, vocab) the last round's cell probabilities (after voting / selection).
    q_halt:        (b,) the Q-head's halt logit of the answer (mean over copies with ``select="vote"``).
    segments:      (b,) segments run for each puzzle: all copies and all rounds (the compute spent).
    rounds:        (b,) rounds each puzzle took (1 without committing).
    """

    predictions: torch.Tensor
    probabilities: torch.Tensor
    q_halt: torch.Tensor
    segments: torch.Tensor
    rounds: torch.Tensor


@torch.no_grad()
def _one_pass(model, input_ids: torch.Tensor, max_segments: int, halt: str):
    """One batch through up to ``max_segments`` segments. Returns probabilities (b, l, vocab), q_halt (b,), segments (b,)."""
    output = model(input_ids=input_ids, num_segments=max_segments, return_all_segments=True)
    logits, q = output.all_logits, output.all_q_logits  # (s, b, l, vocab), (s, b, 2)
    run = logits.shape[0]
    last = torch.full((input_ids.shape[0],), run - 1, dtype=torch.long, device=input_ids.device)
    if halt == "fixed":
        chosen, spent = last, last + 1
    elif halt == "best":
        chosen, spent = (q[..., 0] - q[..., 1]).argmax(0), last + 1  # (b,) the surest segment; all were run
    else:
        wants = q[..., 0] > q[..., 1]  # (s, b)
        wants[-1] = True  # the last segment always answers
        chosen = wants.int().argmax(0)  # (b,) first segment that halts
        spent = chosen + 1
    batch = torch.arange(input_ids.shape[0], device=input_ids.device)
    return cell_probabilities(logits[chosen, batch], model.config.loss_type), q[chosen, batch, 0], spent


def cell_probabilities(logits: torch.Tensor, loss_type: str) -> torch.Tensor:
    """The distribution the model was trained to output: stablemax or softmax of logits (..., vocab).

    A stablemax-trained model's softmax is far sharper than its stablemax and makes confidence useless
    for committing (measured on a hard-Sudoku checkpoint: most blanks at softmax p > 0.999, 63 % of them right).
    """
    if loss_type == "stablemax":
        return log_stablemax(logits.double()).exp().to(logits.dtype)
    return logits.softmax(-1)


def _with_copies(model, input_ids, symmetries: list[Symmetry], max_segments: int, halt: str, select: str):
    """Every symmetric copy solved, mapped back, and combined. Returns probabilities, q_halt, segments."""
    device = input_ids.device
    results = []
    for symmetry in symmetries:
        symmetry = Symmetry(symmetry.positions.to(device), symmetry.token_map.to(device))
        probabilities, q_halt, segments = _one_pass(model, symmetry.apply(input_ids), max_segments, halt)
        results.append((symmetry.invert_probabilities(probabilities), q_halt, segments))
    probabilities = torch.stack([r[0] for r in results])  # (copies, b, l, vocab)
    q_halt = torch.stack([r[1] for r in results])  # (copies, b)
    segments = torch.stack([r[2] for r in results]).sum(0)  # (b,)
    if select == "vote":
        return probabilities.mean(0), q_halt.mean(0), segments
    best = q_halt.argmax(0) if select == "q" else plurality_pick(probabilities.argmax(-1), q_halt)  # (b,)
    batch = torch.arange(input_ids.shape[0], device=device)
    return probabilities[best, batch], q_halt[best, batch], segments


def plurality_pick(answers: torch.Tensor, q_halt: torch.Tensor) -> torch.Tensor:
    """The copy whose whole answer most copies share exactly; among those, the highest Q-halt logit.

    answers: (copies, b, l) tokens; q_halt: (copies, b). Returns (b,) copy indices.
    """
    agree = (answers[:, None] == answers[None]).all(-1).sum(1)  # (copies, b): copies with the same answer
    return q_halt.masked_fill(agree < agree.max(0).values, float("-inf")).argmax(0)


@torch.no_grad()
def solve(model, input_ids: torch.Tensor, max_segments: int | None = None, halt: str = "q", copies: int = 1,
          select: str = "vote", rounds: int = 1, commit_threshold: float = 0.9, blank_token: int | None = None,
          seed: int = 0) -> SolveOutput:
    """Solve a batch of puzzles with test-time compute (module docstring).

    Args:
        model: a HierMambaForTokenClassification (its eval mode is set here and restored).
        input_ids: (b, l) puzzle tokens.
        max_segments: segments per pass (default ``config.halt_max_steps``).
        halt: "q" (stop at the Q-head's halt), "fixed" (always ``max_segments``) or "best" (run
            ``max_segments``, answer with the segment of the highest halt margin).
        copies: the puzzle plus ``copies - 1`` symmetric copies per pass; select: "vote", "q" or "plurality".
        rounds: committed rounds (1: no committing); needs ``blank_token`` (Sudoku: 1).
        commit_threshold: the probability at which a blank is committed between rounds.
        seed: draws the symmetries.
    Returns:
        SolveOutput.
    """
    # 1. Check the settings.
    max_segments = model.config.halt_max_steps if max_segments is None else max_segments
    if not isinstance(max_segments, int) or max_segments < 1:
        raise ValueError(f"max_segments must be a positive int, got {max_segments!r}")
    if halt not in HALT_RULES:
        raise ValueError(f"halt must be one of {HALT_RULES}, got {halt!r}")
    if select not in SELECT_RULES:
        raise ValueError(f"select must be one of {SELECT_RULES}, got {select!r}")
    if not isinstance(copies, int) or copies < 1:
        raise ValueError(f"copies must be a positive int, got {copies!r}")
    if not isinstance(rounds, int) or rounds < 1:
        raise ValueError(f"rounds must be a positive int, got {rounds!r}")
    if rounds > 1 and blank_token is None:
        raise ValueError("rounds > 1 commits answers into blank cells: pass blank_token (Sudoku: 1)")
    if not 0.0 < commit_threshold <= 1.0:
        raise ValueError(f"commit_threshold must lie in (0, 1], got {commit_threshold!r}")
    if input_ids.dim() != 2:
        raise ValueError(f"input_ids must be (batch, length), got shape {tuple(input_ids.shape)}")
    symmetries = (draw_symmetries(model.config, copies, seed) if copies > 1
                  else [identity_symmetry(input_ids.shape[1], model.config.vocab_size)])
    was_training = model.training
    model.eval()
    try:
        # 2. Rounds: solve, commit the confident blanks, solve again from the new grid.
        grid = input_ids.clone()
        batch = grid.shape[0]
        segments = torch.zeros(batch, dtype=torch.long, device=grid.device)
        used_rounds = torch.zeros(batch, dtype=torch.long, device=grid.device)
        probabilities = q_halt = None
        for _ in range(rounds):
            open_ = (grid == blank_token).any(1) if blank_token is not None else torch.ones_like(segments, dtype=torch.bool)
            if probabilities is not None and not bool(open_.any()):
                break
            new_p, new_q, new_segments = _with_copies(model, grid, symmetries, max_segments, halt, select)
            if probabilities is None:
                probabilities, q_halt = new_p, new_q
            else:  # finished puzzles keep their answer
                probabilities = torch.where(open_[:, None, None], new_p, probabilities)
                q_halt = torch.where(open_, new_q, q_halt)
            segments += torch.where(open_, new_segments, 0)
            used_rounds += open_.long()
            if rounds > 1:
                grid = _commit(grid, probabilities, blank_token, commit_threshold)
        # 3. The answer: givens and committed cells as written, the model's argmax in the other blanks.
        predictions = probabilities.argmax(-1) if blank_token is None else fill_blanks(grid, probabilities, blank_token)
        return SolveOutput(predictions, probabilities, q_halt, segments, used_rounds)
    finally:
        model.train(was_training)


def fill_blanks(grid: torch.Tensor, probabilities: torch.Tensor, blank_token: int) -> torch.Tensor:
    """The answer grid: written cells of ``grid`` (b, l) as they are, the argmax of ``probabilities``
    (..., b, l, vocab) in its blanks. Returns (..., b, l) tokens."""
    return torch.where(grid != blank_token, grid, probabilities.argmax(-1))


def _commit(grid: torch.Tensor, probabilities: torch.Tensor, blank_token: int, threshold: float) -> torch.Tensor:
    """Write confident answers into blank cells: probability >= threshold, and at least the most confident blank.

    grid: (b, l) tokens; probabilities: (b, l, vocab). Returns the new grid (b, l).
    """
    blank = grid == blank_token  # (b, l)
    confidence, answer = probabilities.max(-1)  # (b, l) each
    confidence = torch.where(blank, confidence, torch.full_like(confidence, -1.0))
    commit = blank & (confidence >= threshold)
    best = confidence.argmax(1)  # (b,) most confident blank of each puzzle
    rows = torch.arange(grid.shape[0], device=grid.device)
    commit[rows, best] |= blank.any(1)
    return torch.where(commit, answer, grid)
