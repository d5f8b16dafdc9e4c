"""ACT and deep supervision: the math of act.py, HierMambaForTokenClassification, and the experiment scripts' helpers."""

import importlib.util
import math
import random
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from hier_mamba import HierMambaConfig, HierMambaForTokenClassification
from hier_mamba.act import (
    draw_min_halt_steps,
    halting_decision,
    log_stablemax,
    q_learning_targets,
    softmax_cross_entropy,
    stablemax_cross_entropy,
)

TINY = dict(vocab_size=12, hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, state_size=8,
            head_dim=16, chunk_size=16, bidirectional=True, halt_exploration_prob=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(seed: int = 0, **overrides) -> HierMambaForTokenClassification:
    torch.manual_seed(seed)
    return HierMambaForTokenClassification(HierMambaConfig(**{**TINY, **overrides}))


def puzzles(batch: int = 4, length: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)
    labels = torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)
    labels[0, :3] = -100  # some ignored positions
    return input_ids, labels


def set_q_head(model, weight_std: float = 0.0, halt_bias: float = -5.0, continue_bias: float = -5.0) -> None:
    with torch.no_grad():
        model.q_head.weight.normal_(std=weight_std) if weight_std else model.q_head.weight.zero_()
        model.q_head.bias.copy_(torch.tensor([halt_bias, continue_bias]))


# ---------------------------------------------------------------------------------------------- act.py
def test_stablemax_cross_entropy_matches_hand_computation():
    logits = torch.tensor([[-1.0, 0.0, 2.0], [3.0, -3.0, 0.5]])
    labels = torch.tensor([2, -100])
    # s = [1/(1+1), 0+1, 2+1] = [0.5, 1, 3]; p(label 2) = 3 / 4.5
    expected = torch.tensor([-math.log(3 / 4.5), 0.0])
    torch.testing.assert_close(stablemax_cross_entropy(logits, labels), expected)
    torch.testing.assert_close(log_stablemax(torch.tensor([-1.0, 0.0, 2.0])).exp(), torch.tensor([0.5, 1, 3]) / 4.5)


def test_stablemax_gradient_is_finite_where_the_unused_branch_is_singular():
    logits = torch.tensor([[1.0, 2.0, -0.5]], requires_grad=True)  # 1 / (1 - x) is singular at x = 1
    stablemax_cross_entropy(logits, torch.tensor([0])).sum().backward()
    assert torch.isfinite(logits.grad).all()


def test_softmax_cross_entropy_matches_torch_and_ignores_minus_100():
    logits, labels = torch.randn(2, 5, 7), torch.randint(0, 7, (2, 5))
    labels[1, 2] = -100
    per_token = softmax_cross_entropy(logits, labels)
    assert per_token[1, 2] == 0
    torch.testing.assert_close(per_token.sum() / 9, F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1)))


def test_q_learning_targets_match_hand_computation():
    next_halt, next_continue = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.0, 3.0, 4.0])
    is_last = torch.tensor([False, False, True])
    expected = torch.sigmoid(torch.tensor([1.0, 3.0, 0.5]))  # max, max, and q_halt at the last step
    torch.testing.assert_close(q_learning_targets(next_halt, next_continue, is_last), expected)
    torch.testing.assert_close(q_learning_targets(next_halt, next_continue, True), torch.sigmoid(next_halt))


def test_halting_decision_in_training_and_both_evaluation_modes():
    q_halt, q_continue = torch.tensor([1.0, -1.0, 1.0]), torch.tensor([0.0, 0.0, 0.0])
    minimum = torch.tensor([0, 0, 3])
    train = halting_decision(2, 4, q_halt, q_continue, training=True, min_halt_steps=minimum)
    assert train.tolist() == [True, False, False]  # the third wants to halt but must reach step 3
    assert halting_decision(4, 4, q_halt, q_continue, training=True, min_halt_steps=minimum).all()
    assert not halting_decision(2, 4, q_halt, q_continue, training=False, eval_mode="max_steps").any()
    q_halt_eval = halting_decision(2, 4, q_halt, q_continue, training=False, eval_mode="q_halt")
    assert q_halt_eval.tolist() == [True, False, True]
    with pytest.raises(ValueError, match="step"):
        halting_decision(5, 4, q_halt, q_continue, training=True)


def test_draw_min_halt_steps_range_and_probability():
    torch.manual_seed(0)
    always = draw_min_halt_steps(1000, 5, 1.0)
    assert always.min() == 2 and always.max() == 5
    assert (draw_min_halt_steps(100, 5, 0.0) == 0).all()
    assert (draw_min_halt_steps(10, 1, 1.0) == 0).all()  # one segment: nothing to explore


# ------------------------------------------------------------------------------- the model: halting
def test_act_runs_exactly_halt_max_steps_when_q_never_says_halt():
    model = tiny_model(halt_max_steps=3, act_training="all_segments").train()
    input_ids, labels = puzzles()
    output = model(input_ids, labels=labels, return_all_segments=True)  # HRM init: q_halt == q_continue
    assert output.steps.tolist() == [3, 3, 3, 3]
    assert output.all_logits.shape == (3, 4, 10, 12) and output.all_q_logits.shape == (3, 4, 2)
    torch.testing.assert_close(output.logits, output.all_logits[-1])


def test_q_head_halting_in_training_and_in_q_halt_evaluation():
    model = tiny_model(halt_max_steps=4)
    set_q_head(model, halt_bias=5.0)
    input_ids, _ = puzzles()
    with torch.no_grad():  # a training forward without labels runs all segments when it trains nothing
        assert model.train()(input_ids).steps.tolist() == [1, 1, 1, 1]
    assert model.eval()(input_ids).steps.tolist() == [4, 4, 4, 4]  # act_eval_mode="max_steps" ignores Q
    model.config.act_eval_mode = "q_halt"
    assert model(input_ids).steps.tolist() == [1, 1, 1, 1]


def test_act_never_exceeds_max_steps_and_halted_sequences_keep_their_logits():
    model = tiny_model(halt_max_steps=4, act_training="all_segments")
    input_ids, labels = puzzles(batch=8)
    split_halting(model, input_ids, segments=4)  # per-sequence decisions
    output = model(input_ids, labels=labels, return_all_segments=True)
    assert output.steps.min() >= 1 and output.steps.max() <= 4 and len(set(output.steps.tolist())) > 1
    for row, steps in enumerate(output.steps.tolist()):
        torch.testing.assert_close(output.logits[row], output.all_logits[steps - 1, row])
        q = output.all_q_logits[steps - 1, row]
        assert steps == 4 or q[0] > q[1]
        assert all(output.all_q_logits[s, row, 0] <= output.all_q_logits[s, row, 1] for s in range(steps - 1))


def test_exploration_sequences_never_halt_before_their_drawn_minimum():
    model = tiny_model(halt_max_steps=5, halt_exploration_prob=1.0).train()
    set_q_head(model, halt_bias=5.0)  # Q always wants to halt: the drawn minimum decides
    input_ids, _ = puzzles(batch=16)
    torch.manual_seed(123)
    minimum = draw_min_halt_steps(16, 5, 1.0)
    torch.manual_seed(123)
    with torch.no_grad():  # training-mode halting without labels: nothing is trained
        steps = model(input_ids).steps
    assert (minimum >= 2).all()
    assert torch.equal(steps, minimum)


def test_num_segments_sets_the_number_of_segments_at_evaluation():
    model = tiny_model(halt_max_steps=2).eval()
    input_ids, _ = puzzles()
    output = model(input_ids, num_segments=5, return_all_segments=True)
    assert output.steps.tolist() == [5] * 4 and output.all_logits.shape[0] == 5
    # segment k of a long run is the output of a k-segment run (the carry is all that links them)
    torch.testing.assert_close(model(input_ids, num_segments=2).logits, output.all_logits[1])
    with pytest.raises(ValueError, match="num_segments"):
        model(input_ids, num_segments=0)


# ------------------------------------------------------------------ the model: deep-supervision loss
def manual_segment(model, input_ids, carry):
    """One segment from the public modules: backbone from ``carry``, then the two heads."""
    outputs = model.model(input_ids, carry=carry, use_cache=False)
    z_H = outputs.last_hidden_state
    q = model.q_head(z_H.mean(1))
    return outputs.carry, model.lm_head(z_H), q[:, 0], q[:, 1]


def segment_loss(logits, q_halt, q_continue, labels, next_q, is_last):
    """HRM's loss of one segment for one batch of running sequences, summed over them."""
    scored = labels != -100
    token_ce = F.cross_entropy(logits.transpose(1, 2), labels, ignore_index=-100, reduction="none")
    lm = token_ce.sum(-1) / scored.sum(-1).clamp(min=1)
    correct = ((logits.argmax(-1) == labels) | ~scored).all(-1).float()
    next_halt, next_continue = next_q
    target = torch.sigmoid(next_halt if is_last else torch.maximum(next_halt, next_continue))
    q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, correct, reduction="none")
    q_continue_loss = F.binary_cross_entropy_with_logits(q_continue, target, reduction="none")
    return (lm + 0.5 * (q_halt_loss + q_continue_loss)).sum()


def split_halting(model, input_ids, segments: int) -> None:
    """Random Q weights and a halt bias in the widest gap among the central first-segment Q
    differences: some sequences halt at once, the others later, and no decision is near a tie."""
    set_q_head(model, weight_std=30.0, halt_bias=0.0, continue_bias=0.0)
    with torch.no_grad():
        q = model.eval()(input_ids, num_segments=segments, return_all_segments=True).all_q_logits
    differences = (q[0, :, 0] - q[0, :, 1]).sort().values
    central = differences[len(differences) // 4: 3 * len(differences) // 4 + 1]
    gap = int((central[1:] - central[:-1]).argmax())
    with torch.no_grad():
        model.q_head.bias[0] = -(central[gap] + central[gap + 1]) / 2
    model.train()


def test_loss_equals_the_sum_of_per_sequence_per_segment_losses_with_halting():
    model = tiny_model(halt_max_steps=4, act_training="all_segments")
    input_ids, labels = puzzles(batch=6)
    split_halting(model, input_ids, segments=4)
    output = model(input_ids, labels=labels)
    assert len(set(output.steps.tolist())) > 1, "the test needs sequences that halt at different segments"
    expected = 0.0
    with torch.no_grad():
        for row in range(6):  # each sequence alone, until its own halting rule fires
            ids, lab = input_ids[row:row + 1], labels[row:row + 1]
            carry, current = None, None
            for step in range(1, 5):
                carry, logits, q_halt, q_continue = current or manual_segment(model, ids, carry)
                following = manual_segment(model, ids, carry.detach())
                expected += segment_loss(logits, q_halt, q_continue, lab, following[2:], step == 4)
                if step == 4 or q_halt > q_continue:
                    assert output.steps[row] == step
                    break
                current = following
    torch.testing.assert_close(output.loss, expected / 6, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(output.loss, output.lm_loss + 0.5 * (output.q_halt_loss + output.q_continue_loss))


def test_gradient_is_the_sum_of_per_segment_gradients():
    model = tiny_model(halt_max_steps=3, bptt_steps=None, act_training="all_segments").train()
    set_q_head(model, weight_std=0.1, continue_bias=5.0)  # never halts: every segment counts
    input_ids, labels = puzzles()
    model(input_ids, labels=labels).loss.backward()
    full = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    carries = [None]
    with torch.no_grad():
        for _ in range(3):
            carries.append(manual_segment(model, input_ids, carries[-1])[0].detach())
        next_qs = [manual_segment(model, input_ids, carries[s + 1])[2:] for s in range(3)]
    for s in range(3):  # a fresh graph per segment, from the detached carry
        _, logits, q_halt, q_continue = manual_segment(model, input_ids, carries[s])
        (segment_loss(logits, q_halt, q_continue, labels, next_qs[s], s == 2) / 4).backward()
    for name, p in model.named_parameters():
        if name in full:
            torch.testing.assert_close(p.grad, full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_synthetic_gradient_boundary_keeps_the_loss_and_trains_its_predictor():
    detached = tiny_model(halt_max_steps=3, bptt_steps=None, act_training="all_segments").train()
    synthetic = tiny_model(halt_max_steps=3, bptt_steps=None, synthetic_gradients=True,
                           act_training="all_segments").train()
    synthetic.load_state_dict(detached.state_dict(), strict=False)
    input_ids, labels = puzzles()
    loss = detached(input_ids, labels=labels).loss
    loss_sg = synthetic(input_ids, labels=labels).loss
    torch.testing.assert_close(loss_sg, loss)
    loss_sg.backward()
    assert synthetic.synthetic_gradient.out.weight.grad.abs().sum() > 0  # regressed towards the true gradient


# ----------------------------------------------------------------------------- the model: HF glue
def test_q_head_init_survives_post_init_and_auto_from_config():
    model = AutoModelForTokenClassification.from_config(HierMambaConfig(**TINY))
    assert type(model) is HierMambaForTokenClassification
    assert torch.equal(model.q_head.weight, torch.zeros_like(model.q_head.weight))
    assert torch.equal(model.q_head.bias, torch.full((2,), -5.0))
    assert model.lm_head.weight.data_ptr() != model.model.embeddings.weight.data_ptr()  # not tied


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model = tiny_model(halt_max_steps=3).eval()
    set_q_head(model, weight_std=0.5, halt_bias=0.3, continue_bias=-0.2)  # not the init values
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForTokenClassification.from_pretrained(tmp_path).eval()
    input_ids, labels = puzzles()
    with torch.no_grad():
        before, after = model(input_ids, labels=labels), reloaded(input_ids, labels=labels)
    for key in ("logits", "q_halt_logits", "q_continue_logits", "steps", "loss"):
        assert torch.equal(before[key], after[key]), key


def test_position_embeddings_are_added_to_the_input_and_checked():
    plain = tiny_model(halt_max_steps=2).eval()
    positioned = tiny_model(halt_max_steps=2, position_embeddings=12).eval()
    missing, unexpected = positioned.load_state_dict(plain.state_dict(), strict=False)
    assert missing == ["position_embeddings.weight"] and unexpected == []
    input_ids, _ = puzzles()  # (b, 10)
    with torch.no_grad():
        positioned.position_embeddings.weight.zero_()  # HRM's sum (token + position) / sqrt(2), by hand:
        x = plain.get_input_embeddings()(input_ids) * 0.5 ** 0.5  # (b, 10, d)
        expected = plain.lm_head(plain.model(inputs_embeds=x, use_cache=False).last_hidden_state).float()
        torch.testing.assert_close(positioned(input_ids, num_segments=1).logits, expected, rtol=0, atol=0)
        positioned.position_embeddings.weight[3].fill_(1.0)  # only position 3 gets an offset
        x = plain.get_input_embeddings()(input_ids)  # (b, 10, d): the plain model gets the offset by hand
        x[:, 3] += 1.0
        x = x * 0.5 ** 0.5
        expected = plain.lm_head(plain.model(inputs_embeds=x, use_cache=False).last_hidden_state).float()
        torch.testing.assert_close(positioned(input_ids, num_segments=1).logits, expected)
    with pytest.raises(ValueError, match="position_embeddings=12"):
        positioned(torch.ones(1, 13, dtype=torch.long))
    with pytest.raises(ValueError, match="position_embeddings"):
        AutoModelForCausalLM.from_config(HierMambaConfig(**{**TINY, "bidirectional": False, "position_embeddings": 8}))


def test_right_padding_with_attention_mask_changes_nothing_for_the_real_tokens():
    model = tiny_model(halt_max_steps=2).eval()
    set_q_head(model, weight_std=1.0)  # the Q logits depend on the (masked) pooling
    input_ids, labels = puzzles(batch=1)
    padded = F.pad(input_ids, (0, 4))
    mask = (torch.arange(14) < 10).long()[None]
    with torch.no_grad():
        plain, masked = model(input_ids), model(padded, attention_mask=mask)
    torch.testing.assert_close(masked.logits[:, :10], plain.logits)
    torch.testing.assert_close(masked.q_halt_logits, plain.q_halt_logits)


def test_invalid_inputs_raise_clear_errors():
    model = tiny_model(use_cache=True)  # use_cache is irrelevant here, even with bidirectional=True
    input_ids, labels = puzzles()
    model.eval()(input_ids)
    with pytest.raises(ValueError, match="labels has shape"):
        model(input_ids, labels=labels[:, :5])
    bad = input_ids.clone()
    bad[1, 2] = 12
    with pytest.raises(ValueError, match=r"input_ids\[1, 2\] = 12"):
        model(bad)
    with pytest.raises(ValueError, match="labels"):
        model(input_ids, labels=torch.full_like(labels, -5))


def test_tiny_model_overfits_four_reversal_puzzles():
    torch.manual_seed(0)
    config = HierMambaConfig(**{**TINY, "halt_max_steps": 2, "loss_type": "stablemax"})
    model = HierMambaForTokenClassification(config).train()
    input_ids = torch.randint(1, 12, (4, 8))
    labels = input_ids.flip(1)  # needs every position to see the others: bidirectional
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(150):
        loss = model(input_ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        predictions = model(input_ids).logits.argmax(-1)
    assert (predictions == labels).all(-1).all(), (predictions, labels)  # all four exactly right (at ~70 steps)


# ------------------------------------------------------------ scripts/experiment.py, scripts/sudoku_baselines.py
# (the puzzle task and its evaluation live in hier_mamba.tasks: tests/test_tasks.py)
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(name: str):
    """Import scripts/<name>.py to test a function that only that script defines (scripts/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_time_budget_schedules_cosine_over_wall_clock_and_stops(monkeypatch):
    experiment = load_script("experiment")
    clock = [100.0]
    monkeypatch.setattr(experiment.time, "perf_counter", lambda: clock[0])
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.4)
    budget = experiment.TimeBudget(seconds=10.0, warmup_steps=4)
    state, control = SimpleNamespace(global_step=0), SimpleNamespace(should_training_stop=False)
    budget.on_train_begin(None, state, control)
    budget.on_step_begin(None, state, control, optimizer=optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.4 * 1 / 4)  # warmup step 1 of 4, cosine at 1
    state.global_step, clock[0] = 10, 105.0
    budget.on_step_begin(None, state, control, optimizer=optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.2)  # half the budget: cos(pi / 2) -> half the rate
    budget.on_step_end(None, state, control)
    assert not control.should_training_stop
    clock[0] = 110.5
    budget.on_step_begin(None, state, control, optimizer=optimizer)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.0)
    budget.on_step_end(None, state, control)
    assert control.should_training_stop


def test_sudoku_baselines_rules_on_generated_puzzles():
    from hier_mamba.data import sudoku

    baselines = load_script("sudoku_baselines")
    puzzle = sudoku.generate_puzzle(random.Random(0), 50, 54)
    solution = puzzle.solution.astype(np.int64)
    one_blank = solution.copy()
    one_blank[40] = 0
    assert baselines.candidates(one_blank, 40) == {int(solution[40])}  # row, column and box leave one digit
    solved = baselines.naked_singles(puzzle.puzzle.astype(np.int64), passes=None)
    assert np.array_equal(solved, solution)  # this puzzle (seed 0) falls to naked singles alone
    hits, p_exact = baselines.expected_scores(puzzle.puzzle, solved, solution)
    assert hits == (puzzle.puzzle == 0).sum() and p_exact == 1.0
    hits, p_exact = baselines.expected_scores(puzzle.puzzle, puzzle.puzzle, solution)  # guess among candidates
    assert 0 < hits < (puzzle.puzzle == 0).sum() + 1e-9 and 0 <= p_exact < 1
