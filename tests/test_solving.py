"""solve(): segments with Q-halting, symmetric copies mapped back, committed rounds, and its errors."""

import random

import numpy as np
import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForTokenClassification
from hier_mamba.data import maze, sudoku
from hier_mamba.solving import (
    _commit,
    cell_probabilities,
    dihedral_symmetry,
    draw_symmetries,
    plurality_pick,
    solve,
    sudoku_symmetry,
)


def sudoku_model(seed=0, **overrides) -> HierMambaForTokenClassification:
    values = dict(vocab_size=11, hidden_size=32, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1, state_size=8,
                  head_dim=16, chunk_size=16, bidirectional=True, grid_shape=(9, 9), box_shape=(3, 3),
                  grid_scan_orders=("row", "col", "box"), halt_max_steps=4, position_embeddings=81, use_cache=False)
    values.update(overrides)
    torch.manual_seed(seed)
    model = HierMambaForTokenClassification(HierMambaConfig(**values)).eval()
    with torch.no_grad():  # a Q-head that says different things per puzzle and segment (init: weight 0)
        model.q_head.weight.normal_(0, 3.0)
        model.q_head.bias.zero_()
    return model


def puzzles(n=3, seed=0):
    rng = random.Random(seed)
    drawn = [sudoku.generate_puzzle(rng, 40, 50) for _ in range(n)]
    inputs = torch.as_tensor(np.stack([sudoku.to_tokens(p.puzzle) for p in drawn]))  # (n, 81)
    labels = torch.as_tensor(np.stack([sudoku.to_tokens(p.solution) for p in drawn]))
    return inputs, labels


def test_a_sudoku_symmetry_maps_valid_pairs_to_valid_pairs_and_probabilities_back():
    inputs, labels = puzzles()
    symmetry = sudoku_symmetry(np.random.default_rng(3))
    moved = symmetry.apply(labels)
    assert all(sudoku.is_valid_solution(sudoku.from_tokens(row.numpy())) for row in moved)
    moved_inputs = symmetry.apply(inputs)
    assert ((moved_inputs == sudoku.BLANK_TOKEN) == (symmetry.apply(inputs) == sudoku.BLANK_TOKEN)).all()
    assert ((moved_inputs == moved) | (moved_inputs == sudoku.BLANK_TOKEN)).all()  # givens agree with the solution
    one_hot = torch.nn.functional.one_hot(moved, 11).float()  # (b, 81, 11) answers of the moved puzzle
    assert torch.equal(symmetry.invert_probabilities(one_hot).argmax(-1), labels)


def test_dihedral_symmetries_are_the_maze_modules_and_invert():
    grid = torch.arange(25).reshape(1, 25) % 6
    for k in range(8):
        symmetry = dihedral_symmetry(5, 6, k)
        expected = maze.dihedral(grid.reshape(5, 5).numpy(), k).reshape(1, 25)
        assert np.array_equal(symmetry.apply(grid).numpy(), expected)
        back = symmetry.invert_probabilities(torch.nn.functional.one_hot(symmetry.apply(grid), 6).float())
        assert torch.equal(back.argmax(-1), grid)


def test_fixed_halting_answers_with_the_last_segment_and_q_halting_with_the_first_halt():
    model = sudoku_model()
    inputs, _ = puzzles(4)
    original_forward = model.forward
    wants = torch.tensor([[0, 0, 1, 0], [0, 1, 0, 0], [0, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.bool)  # (segments, b)

    def scripted_q(input_ids, num_segments=None, return_all_segments=False, **kwargs):
        """The real logits; Q logits that want to halt where ``wants`` says (puzzle 0: never)."""
        out = original_forward(input_ids=input_ids, num_segments=num_segments, return_all_segments=True)
        out.all_q_logits = torch.stack([wants.float() * 2 - 1, torch.zeros(4, 4)], -1)  # (segments, b, 2)
        return out

    model.forward = scripted_q
    out = model(input_ids=inputs, num_segments=4, return_all_segments=True)
    fixed = solve(model, inputs, max_segments=4, halt="fixed")
    assert torch.equal(fixed.predictions, out.all_logits[-1].argmax(-1))
    assert fixed.segments.tolist() == [4] * 4
    q = solve(model, inputs, max_segments=4, halt="q")
    assert q.segments.tolist() == [4, 2, 1, 3]  # puzzle 0 never halts: the last segment answers
    for i, segment in enumerate(q.segments.tolist()):
        assert torch.equal(q.predictions[i], out.all_logits[segment - 1, i].argmax(-1))
    assert not torch.equal(q.predictions, fixed.predictions)


def test_best_halting_runs_every_segment_and_answers_with_the_highest_halt_margin():
    model = sudoku_model()
    inputs, _ = puzzles(3)
    original_forward = model.forward
    q_halt = torch.tensor([[-1.0, 0.0, -9.0], [3.0, -1.0, -8.0], [0.5, 2.0, -7.0], [-2.0, 1.0, -9.0]])  # (segments, b)
    q_continue = torch.tensor([[0.0, 0.0, -9.5], [0.0, 0.0, -6.0], [0.0, 0.0, -5.0], [0.0, 0.0, -6.0]])

    def scripted_q(input_ids, num_segments=None, return_all_segments=False, **kwargs):
        out = original_forward(input_ids=input_ids, num_segments=num_segments, return_all_segments=True)
        out.all_q_logits = torch.stack([q_halt, q_continue], -1)  # (segments, b, 2)
        return out

    model.forward = scripted_q
    out = model(input_ids=inputs, num_segments=4, return_all_segments=True)
    best = solve(model, inputs, max_segments=4, halt="best")
    assert best.segments.tolist() == [4, 4, 4]  # every segment is run to find the surest one
    for i, segment in enumerate([1, 2, 0]):  # puzzle 2: the margin, not the halt logit (highest at segment 2)
        assert torch.equal(best.predictions[i], out.all_logits[segment, i].argmax(-1))
    assert best.q_halt.tolist() == [3.0, 2.0, -9.0]


def test_copies_are_mapped_back_so_an_equivariant_answer_survives_voting():
    model = sudoku_model()
    inputs, labels = puzzles(2)
    original_forward = model.forward

    def oracle(input_ids, num_segments=None, return_all_segments=False, **kwargs):
        """The real model's shapes and Q logits, with logits that put all mass on each copy's own solution."""
        out = original_forward(input_ids=input_ids, num_segments=num_segments, return_all_segments=True)
        solutions = torch.stack([torch.as_tensor(sudoku.to_tokens(sudoku.solve(
            sudoku.from_tokens(row.numpy()).tolist()).solution)) for row in input_ids])  # (b, 81)
        out.all_logits = 50.0 * torch.nn.functional.one_hot(solutions, 11).float().expand_as(out.all_logits)
        return out

    model.forward = oracle
    for select in ("vote", "q"):
        result = solve(model, inputs, max_segments=2, halt="fixed", copies=5, select=select, seed=1)
        assert torch.equal(result.predictions, labels)
        assert result.segments.tolist() == [10, 10]


def test_voting_over_copies_changes_answers_of_a_model_that_is_not_equivariant():
    model = sudoku_model()
    inputs, _ = puzzles(3)
    one = solve(model, inputs, max_segments=2, halt="fixed")
    voted = solve(model, inputs, max_segments=2, halt="fixed", copies=4)
    assert not torch.equal(one.probabilities, voted.probabilities)
    assert torch.allclose(voted.probabilities.sum(-1), torch.ones(3, 81))


def test_plurality_keeps_the_answer_most_copies_share_and_breaks_ties_by_the_q_head():
    answers = torch.tensor([[[1, 2, 3], [5, 5, 5]],
                            [[4, 2, 3], [6, 5, 5]],
                            [[1, 9, 3], [7, 5, 5]],
                            [[4, 2, 3], [8, 5, 5]]])  # (copies, b, l): puzzle 0: copies 1 and 3 agree
    q_halt = torch.tensor([[9.0, 0.0], [1.0, 3.0], [0.0, 1.0], [2.0, 2.0]])  # (copies, b)
    assert plurality_pick(answers, q_halt).tolist() == [3, 1]  # puzzle 1: no two agree, the Q-head decides


def test_plurality_over_copies_answers_with_a_copy_whose_answer_is_most_shared():
    model = sudoku_model()
    inputs, _ = puzzles(2)
    out = solve(model, inputs, max_segments=2, copies=5, select="plurality", seed=1)
    assert out.segments.tolist() == [10, 10]
    symmetries = draw_symmetries(model.config, 5, seed=1)
    per_copy = torch.stack([s.invert_probabilities(solve(model, s.apply(inputs), max_segments=2).probabilities)
                            for s in symmetries])  # (copies, b, 81, vocab)
    answers = per_copy.argmax(-1)  # (copies, b, 81)
    shared = (answers[:, None] == answers[None]).all(-1).sum(1)  # (copies, b)
    for i in range(2):
        chosen = [k for k in range(5) if torch.allclose(per_copy[k, i], out.probabilities[i])]
        assert chosen and shared[chosen[0], i] == shared[:, i].max()


def test_commit_fills_only_blanks_and_at_least_the_most_confident_one():
    grid = torch.tensor([[1, 5, 1, 1], [3, 4, 5, 6]])  # puzzle 1 has no blank left
    probabilities = torch.full((2, 4, 11), 0.01)
    probabilities[0, 0, 7] = 0.5
    probabilities[0, 2, 8] = 0.6  # below the threshold, but the most confident blank
    probabilities[0, 3, 9] = 0.2
    probabilities[0, 1, 2] = 0.99  # a given: never overwritten
    probabilities[1, :, 2] = 0.99
    assert _commit(grid, probabilities, 1, 0.9).tolist() == [[1, 5, 8, 1], [3, 4, 5, 6]]
    probabilities[0, 0, 7] = 0.95  # above the threshold: committed, and now the most confident
    assert _commit(grid, probabilities, 1, 0.9).tolist() == [[7, 5, 1, 1], [3, 4, 5, 6]]
    probabilities[0, 2, 8] = 0.92
    assert _commit(grid, probabilities, 1, 0.9).tolist() == [[7, 5, 8, 1], [3, 4, 5, 6]]


def test_rounds_keep_the_givens_and_stop_when_no_blank_is_left():
    model = sudoku_model()
    inputs, _ = puzzles(2)
    result = solve(model, inputs, max_segments=1, halt="fixed", rounds=100, commit_threshold=0.5, blank_token=1)
    given = inputs != sudoku.BLANK_TOKEN
    assert torch.equal(result.predictions[given], inputs[given])
    blanks = (inputs == sudoku.BLANK_TOKEN).sum(1)
    assert (result.rounds <= blanks).all() and (result.rounds >= 1).all()
    assert torch.equal(result.segments, result.rounds)  # one segment per round
    assert (result.predictions != sudoku.BLANK_TOKEN).all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(halt="sometimes"), "halt must be one of"),
    (dict(select="best"), "select must be one of"),
    (dict(copies=0), "copies must be a positive int"),
    (dict(max_segments=0), "max_segments must be a positive int"),
    (dict(rounds=3), "pass blank_token"),
    (dict(rounds=2, blank_token=1, commit_threshold=1.5), "commit_threshold"),
])
def test_bad_settings_raise_naming_the_value(kwargs, match):
    model = sudoku_model()
    inputs, _ = puzzles(1)
    with pytest.raises(ValueError, match=match):
        solve(model, inputs, **kwargs)


def test_copies_need_a_grid_with_a_symmetry_group():
    config = sudoku_model().config
    assert len(draw_symmetries(config, 3, seed=0)) == 3
    wide = HierMambaConfig(vocab_size=6, hidden_size=32, grid_shape=(3, 5), grid_scan_orders=("row", "col"),
                           bidirectional=True)
    with pytest.raises(ValueError, match="no symmetry group"):
        draw_symmetries(wide, 2, seed=0)


def test_the_model_method_is_solve():
    model = sudoku_model()
    inputs, _ = puzzles(2)
    expected = solve(model, inputs, max_segments=3, halt="fixed", copies=2, seed=4)
    result = model.solve(inputs, max_segments=3, halt="fixed", copies=2, seed=4)
    assert torch.equal(result.probabilities, expected.probabilities)
    assert torch.equal(result.segments, expected.segments)


def test_probabilities_follow_the_training_loss():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    stable = cell_probabilities(logits, "stablemax")  # s = (3, 1/2, 1) / 4.5
    assert torch.allclose(stable, torch.tensor([[3 / 4.5, 0.5 / 4.5, 1 / 4.5]]))
    assert torch.allclose(cell_probabilities(logits, "softmax"), logits.softmax(-1))
    model = sudoku_model(loss_type="stablemax")
    inputs, _ = puzzles(1)
    with torch.no_grad():
        last = model(input_ids=inputs, num_segments=2).logits
    assert torch.allclose(solve(model, inputs, max_segments=2, halt="fixed").probabilities,
                          cell_probabilities(last, "stablemax"))
