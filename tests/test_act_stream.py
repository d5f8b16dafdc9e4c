"""act_training="one_segment": HRM's training stream (act_stream.py) against HRM's loop written out by hand."""

import copy

import pytest
import torch
import torch.nn.functional as F
from transformers import Trainer, TrainerCallback, TrainingArguments

from hier_mamba import HierMambaConfig, HierMambaForTokenClassification, MissingLabelsError
from hier_mamba.reasoning import Carry

TINY = dict(vocab_size=12, hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=2, state_size=8,
            head_dim=16, chunk_size=16, bidirectional=True, halt_exploration_prob=0.0)


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def tiny_model(seed: int = 0, q_weight_std: float = 0.0, **overrides) -> HierMambaForTokenClassification:
    """A tiny puzzle model in training mode; ``q_weight_std`` > 0 gives Q decisions that differ per puzzle."""
    torch.manual_seed(seed)
    model = HierMambaForTokenClassification(HierMambaConfig(**{**TINY, **overrides})).train()
    if q_weight_std:
        with torch.no_grad():
            model.q_head.weight.normal_(std=q_weight_std)
            model.q_head.bias.zero_()
    return model


def make_batches(count: int, batch: int = 4, length: int = 10, seed: int = 0) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``count`` distinct (input_ids, labels) batches of (batch, length), some labels ignored."""
    generator = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(count):
        input_ids = torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)
        labels = torch.randint(0, TINY["vocab_size"], (batch, length), generator=generator)
        labels[0, :3] = -100
        batches.append((input_ids, labels))
    return batches


# -------------------------------------------------------------- HRM's training loop, written out by hand
def hrm_inner(model, input_ids, z_H, z_L):
    """HRM's inner model on this model's modules: one segment from (z_H, z_L).

    Returns the new carry (detached, as HRM's inner model returns it), logits (b, l, V), q_halt, q_continue (b,).
    """
    outputs = model.model(input_ids, carry=Carry(z_H, z_L), use_cache=False)
    z = outputs.last_hidden_state  # (b, l, d)
    q = model.q_head(z.mean(1))  # (b, 2)
    return outputs.carry.z_H.detach(), outputs.carry.z_L.detach(), model.lm_head(z), q[:, 0], q[:, 1]


def hrm_train(model, optimizer, batches, max_steps: int, exploration_prob: float) -> list[dict]:
    """pretrain.py's train_batch around HierarchicalReasoningModel_ACTV1.forward and ACTLossHead.

    One segment, one backward of loss / batch size and one optimizer step per batch. Returns, per
    step, the halted flags, step counts and the puzzles the slots held.
    """
    b, l = batches[0][0].shape
    H_init, L_init = model.model.reasoner.H_init, model.model.reasoner.L_init
    z_H, z_L = H_init.expand(b, l, -1), L_init.expand(b, l, -1)
    steps = torch.zeros(b, dtype=torch.long)
    halted = torch.ones(b, dtype=torch.bool)  # initial_carry: every slot halted
    current_ids, current_labels = torch.empty_like(batches[0][0]), torch.empty_like(batches[0][1])
    log = []
    for input_ids, labels in batches:
        # ACTV1.forward: halted slots restart from the initial states with the new batch's puzzle.
        z_H = torch.where(halted.view(-1, 1, 1), H_init, z_H)
        z_L = torch.where(halted.view(-1, 1, 1), L_init, z_L)
        steps = torch.where(halted, 0, steps)
        current_ids = torch.where(halted.view(-1, 1), input_ids, current_ids)
        current_labels = torch.where(halted.view(-1, 1), labels, current_labels)
        new_z_H, new_z_L, logits, q_halt, q_continue = hrm_inner(model, current_ids, z_H, z_L)
        with torch.no_grad():
            steps = steps + 1
            is_last_step = steps >= max_steps
            halted = is_last_step
            if max_steps > 1:
                halted = halted | (q_halt > q_continue)
                min_halt_steps = ((torch.rand_like(q_halt) < exploration_prob)
                                  * torch.randint_like(steps, low=2, high=max_steps + 1))
                halted = halted & (steps >= min_halt_steps)
                next_halt, next_continue = hrm_inner(model, current_ids, new_z_H, new_z_L)[3:]
                target = torch.sigmoid(torch.where(is_last_step, next_halt, torch.maximum(next_halt, next_continue)))
        # ACTLossHead
        mask = current_labels != -100
        counts = mask.sum(-1)
        seq_is_correct = (mask & (logits.argmax(-1) == current_labels)).sum(-1) == counts
        token_loss = F.cross_entropy(logits.reshape(b * l, -1), current_labels.reshape(-1), ignore_index=-100,
                                     reduction="none").view(b, l)
        lm_loss = (token_loss / counts.clamp_min(1).unsqueeze(-1)).sum()
        q_halt_loss = F.binary_cross_entropy_with_logits(q_halt, seq_is_correct.float(), reduction="sum")
        q_continue_loss = (F.binary_cross_entropy_with_logits(q_continue, target, reduction="sum")
                           if max_steps > 1 else 0)
        ((1 / b) * (lm_loss + 0.5 * (q_halt_loss + q_continue_loss))).backward()
        optimizer.step()
        optimizer.zero_grad()
        z_H, z_L = new_z_H, new_z_L
        log.append(dict(halted=halted.clone(), steps=steps.clone(), input_ids=current_ids.clone()))
    return log


OPTIMIZERS = {"sgd": lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9),
              "adam": lambda params: torch.optim.AdamW(params, lr=3e-3, weight_decay=0.1)}


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_one_segment_training_matches_the_hand_written_hrm_loop(optimizer):
    max_steps, exploration, batches = 3, 0.5, make_batches(8)
    reference = tiny_model(q_weight_std=0.5, halt_max_steps=max_steps, halt_exploration_prob=exploration)
    model = tiny_model(q_weight_std=0.5, halt_max_steps=max_steps, halt_exploration_prob=exploration)
    torch.manual_seed(7)
    expected = hrm_train(reference, OPTIMIZERS[optimizer](reference.parameters()), batches, max_steps, exploration)
    torch.manual_seed(7)
    opt = OPTIMIZERS[optimizer](model.parameters())
    for step, (input_ids, labels) in enumerate(batches):
        output = model(input_ids, labels=labels)
        output.loss.backward()
        opt.step()
        opt.zero_grad()
        assert torch.equal(output.halted, expected[step]["halted"]), step
        assert torch.equal(output.steps, expected[step]["steps"]), step
        assert torch.equal(model.act_stream.state.input_ids, expected[step]["input_ids"]), step
    # the run must exercise what it tests: early halts by Q, replacements, and puzzles kept across steps
    halted, steps = torch.stack([e["halted"] for e in expected]), torch.stack([e["steps"] for e in expected])
    assert (halted & (steps < max_steps)).any(), "no sequence halted before the last step"
    assert (halted[:-1] & (steps[1:] == 1)).sum() >= 4, "too few halted slots took a new puzzle"
    assert (steps == max_steps).any() and (steps == 2).any()
    for (name, actual), wanted in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(model.lm_head.weight, tiny_model().lm_head.weight)  # it did train


def split_first_segment(model, input_ids) -> None:
    """Set the Q-head so that about half the puzzles halt after their first segment, none near a tie."""
    with torch.no_grad():
        model.q_head.weight.normal_(std=1.0)
        model.q_head.bias.zero_()
        output = model.eval()(input_ids, num_segments=1)
        q = output.q_halt_logits - output.q_continue_logits  # (b,)
        middle = q.sort().values[len(q) // 2 - 1: len(q) // 2 + 1].mean()
        model.q_head.bias[0] = -middle  # halt where q_halt - q_continue was above the median
    model.train()


def test_halted_slots_take_the_new_puzzle_and_restart_running_slots_keep_theirs():
    model = tiny_model(halt_max_steps=3)
    (first, first_labels), (second, second_labels) = make_batches(2, batch=6)
    split_first_segment(model, first)
    halted = model(first, labels=first_labels).halted  # no optimizer step: the weights stay fixed
    assert 0 < halted.sum() < 6, halted
    output = model(second, labels=second_labels)
    state = model.act_stream.state
    rows = halted.view(-1, 1)
    assert torch.equal(state.input_ids, torch.where(rows, second, first))
    assert torch.equal(state.labels, torch.where(rows, second_labels, first_labels))
    assert torch.equal(output.steps, torch.where(halted, 1, 2))
    model.eval()
    with torch.no_grad():  # a replaced slot is a fresh puzzle's first segment; a kept one its second
        fresh, kept = model(second, num_segments=1), model(first, num_segments=2)
        torch.testing.assert_close(output.logits, torch.where(rows[..., None], fresh.logits, kept.logits))
        one = model.model(second, use_cache=False).carry
        two = model.model(first, carry=model.model(first, use_cache=False).carry, use_cache=False).carry
    torch.testing.assert_close(state.carry.z_H, torch.where(rows[..., None], one.z_H, two.z_H))
    torch.testing.assert_close(state.carry.z_L, torch.where(rows[..., None], one.z_L, two.z_L))


def test_each_step_runs_one_recorded_segment_from_the_previous_steps_detached_carry():
    model = tiny_model(q_weight_std=0.5, halt_max_steps=2)
    calls, kept_rows, restarted_rows = [], 0, 0
    model.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(dict(carry_in=kwargs["carry"], grad=torch.is_grad_enabled())),
        with_kwargs=True)
    model.model.register_forward_hook(lambda module, args, output: calls[-1].update(carry_out=output.carry))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for step, (input_ids, labels) in enumerate(make_batches(5)):
        calls.clear()
        output = model(input_ids, labels=labels)
        output.loss.backward()  # would fail if the carry still led into the previous step's freed graph
        optimizer.step()
        optimizer.zero_grad()
        assert [call["grad"] for call in calls] == [True, False]  # one recorded segment + the target's segment
        main, target = calls
        assert main["carry_out"].z_H.requires_grad and not model.act_stream.state.carry.z_H.requires_grad
        assert torch.equal(target["carry_in"].z_H, main["carry_out"].z_H.detach())  # the target continues it
        if step:
            carry_in, kept = main["carry_in"], ~previous_halted
            assert not carry_in.z_H.requires_grad and not carry_in.z_L.requires_grad
            assert torch.equal(carry_in.z_H[kept], previous_out.z_H[kept].detach())
            assert torch.equal(carry_in.z_L[kept], previous_out.z_L[kept].detach())
            assert torch.equal(carry_in.z_H[~kept], model.model.reasoner.H_init.expand_as(carry_in.z_H)[~kept])
            kept_rows, restarted_rows = kept_rows + int(kept.sum()), restarted_rows + int((~kept).sum())
        previous_out, previous_halted = main["carry_out"], output.halted
    assert kept_rows and restarted_rows, (kept_rows, restarted_rows)


def test_single_segment_halts_every_step_and_trains_no_q_continue():
    model = tiny_model(halt_max_steps=1)
    calls = []
    model.model.register_forward_hook(lambda *args: calls.append(1))
    for input_ids, labels in make_batches(2):
        output = model(input_ids, labels=labels)
        assert output.halted.all() and (output.steps == 1).all()
    assert len(calls) == 2 and output.q_continue_loss == 0  # HRM: no target segment when M_max = 1
    torch.testing.assert_close(output.loss, output.lm_loss + 0.5 * output.q_halt_loss)


@pytest.mark.parametrize("act_training", ["one_segment", "all_segments"])
def test_no_act_continue_halts_on_q_halt_alone_and_runs_no_target_segment(act_training):
    """TRM's no_ACT_continue: halt iff q_halt > 0, no q_continue loss, one backbone call per segment."""
    model = tiny_model(q_weight_std=0.5, halt_max_steps=3, no_act_continue=True, act_training=act_training)
    input_ids, labels = make_batches(1)[0]
    with torch.no_grad():  # centre the halt logits on this batch so that some slots halt and some do not
        model.q_head.bias[0] -= model.eval()(input_ids, num_segments=1).q_halt_logits.median() + 1e-3
    calls = []
    model.model.register_forward_hook(lambda *args: calls.append(1))
    output = model.train()(input_ids, labels=labels)
    segments = 1 if act_training == "one_segment" else int(output.steps.max())
    assert len(calls) == segments and output.q_continue_loss == 0 and (output.q_continue_logits == 0).all()
    torch.testing.assert_close(output.loss, output.lm_loss + 0.5 * output.q_halt_loss)
    if act_training == "one_segment":  # step 1 of 3: only Q can halt, and it halts exactly the q_halt > 0 slots
        assert torch.equal(output.halted, output.q_halt_logits > 0)
        assert 0 < int(output.halted.sum()) < len(output.halted)


def test_stream_is_runtime_state_restarted_by_reset_load_and_a_new_batch_shape():
    model = tiny_model(halt_max_steps=4)
    (input_ids, labels), (other, other_labels) = make_batches(2)
    model(input_ids, labels=labels)
    assert model(other, labels=other_labels).steps.tolist() == [2, 2, 2, 2]  # Q never halts at the HRM init
    assert not any("stream" in key for key in model.state_dict())
    with torch.no_grad():
        model.eval()(input_ids, labels=labels)  # evaluation neither uses nor changes the stream
    assert model.train()(other, labels=other_labels).steps.tolist() == [3, 3, 3, 3]
    model.reset_training_carry()
    output = model(other, labels=other_labels)
    assert output.steps.tolist() == [1, 1, 1, 1] and torch.equal(model.act_stream.state.input_ids, other)
    model.load_state_dict(model.state_dict())
    assert model.act_stream.state is None
    model(input_ids, labels=labels)
    assert model(input_ids[:2], labels=labels[:2]).steps.tolist() == [1, 1]  # another batch size: fresh slots


def test_options_that_need_all_segments_raise_in_one_segment_training():
    input_ids, labels = make_batches(1)[0]
    for overrides in (dict(h_memory_size=2), dict(synthetic_gradients=True)):
        with pytest.raises(ValueError, match="act_training='all_segments'"):
            tiny_model(**overrides)(input_ids, labels=labels)
    with pytest.raises(ValueError, match="num_segments"):
        tiny_model()(input_ids, labels=labels, num_segments=2)
    assert tiny_model(h_memory_size=2, act_training="all_segments")(input_ids, labels=labels).loss.isfinite()


def test_act_training_is_validated_and_saved(tmp_path):
    assert HierMambaConfig().act_training == "one_segment"
    with pytest.raises(ValueError, match=r"act_training must be one of .*'all_segment'"):
        HierMambaConfig(act_training="all_segment")
    HierMambaConfig(act_training="all_segments").save_pretrained(tmp_path)
    assert HierMambaConfig.from_pretrained(tmp_path).act_training == "all_segments"


# ------------------------------------------------------------------------------ Trainer and resume
class Puzzles(torch.utils.data.Dataset):
    def __init__(self, count: int = 24):
        self.items = [pair for batch in make_batches(count // 4, seed=3) for pair in zip(*batch)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return {"input_ids": self.items[index][0], "labels": self.items[index][1]}


class AtStep(TrainerCallback):
    """At the end of global step ``step``: restart the model's stream, or stop training."""

    def __init__(self, step: int, action: str):
        self.step, self.action = step, action

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            if self.action == "reset":
                model.reset_training_carry()
            else:
                control.should_training_stop = True


def train(model, output_dir, callback, resume_from=None):
    args = TrainingArguments(output_dir=str(output_dir), max_steps=6, per_device_train_batch_size=4,
                             learning_rate=3e-3, lr_scheduler_type="constant", save_strategy="steps", save_steps=3,
                             report_to=[], disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1)
    trainer = Trainer(model=model, args=args, train_dataset=Puzzles(), callbacks=[callback])
    trainer.train(resume_from_checkpoint=resume_from)
    return trainer


def test_trainer_resume_continues_as_an_uninterrupted_run_that_restarts_the_stream(tmp_path):
    overrides = dict(q_weight_std=0.5, halt_max_steps=3, halt_exploration_prob=0.5)
    uninterrupted = tiny_model(**overrides)
    trainer = train(uninterrupted, tmp_path / "a", AtStep(3, "reset"))
    assert trainer.state.global_step == 6
    assert all(torch.isfinite(torch.tensor(log["loss"])) for log in trainer.state.log_history if "loss" in log)
    interrupted = tiny_model(**overrides)
    train(interrupted, tmp_path / "b", AtStep(3, "stop"))
    resumed = tiny_model(seed=1, **overrides)  # other initial weights: the checkpoint must replace them
    trainer = train(resumed, tmp_path / "c", AtStep(0, "none"), resume_from=tmp_path / "b" / "checkpoint-3")
    assert trainer.state.global_step == 6
    for (name, actual), wanted in zip(resumed.named_parameters(), uninterrupted.parameters()):
        torch.testing.assert_close(actual, wanted, rtol=1e-5, atol=1e-6, msg=name)


# -------------------------------------------------------------- the stream's contracts with its callers
def test_a_batch_of_another_padded_length_continues_the_stream():
    model = tiny_model(halt_max_steps=8)  # Q never halts at HRM's init: every puzzle runs all 8 segments
    lengths = [10, 11, 10, 12, 10]
    batches = [make_batches(1, length=length, seed=seed)[0] for seed, length in enumerate(lengths)]
    steps = [model(input_ids, labels=labels).steps.tolist() for input_ids, labels in batches]
    assert steps == [[s] * 4 for s in range(1, 6)]  # segment 5 of the first puzzles, not 1 five times
    state = model.act_stream.state
    first_ids, first_labels = batches[0]
    # padded to 12 at step 4; back at 10 now that a batch of 10 came and only padding needed the rest
    assert torch.equal(state.input_ids, first_ids) and torch.equal(state.labels, first_labels)
    assert state.attention_mask.bool().all()
    model.eval()
    with torch.no_grad():  # the padded puzzles' segments are those of the unpadded puzzles
        unpadded = model(first_ids, num_segments=5).logits  # (4, 10, vocab)
    model.train()
    with torch.no_grad():
        padded = model(*batches[1][:1], labels=batches[1][1]).logits  # segment 6, not kept (no gradient)
    model.eval()
    with torch.no_grad():
        six = model(first_ids, num_segments=6).logits
    torch.testing.assert_close(padded[:, :10], six, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(six, unpadded)


def test_columns_only_padding_needs_are_dropped_once_their_puzzles_halted():
    model = tiny_model(halt_max_steps=2)  # every puzzle halts after its second segment
    for length in (12, 12, 10):
        input_ids, labels = make_batches(1, length=length)[0]
        output = model(input_ids, labels=labels)
    assert output.logits.shape[1] == 10 and model.act_stream.state.input_ids.shape == (4, 10)
    assert output.steps.tolist() == [1, 1, 1, 1]


def test_another_batch_size_restarts_the_stream_with_a_warning(caplog):
    model = tiny_model(halt_max_steps=4)
    input_ids, labels = make_batches(1)[0]
    model(input_ids, labels=labels)
    with caplog.at_level("WARNING", logger="hier_mamba.act_stream"):
        assert model(input_ids[:2], labels=labels[:2]).steps.tolist() == [1, 1]
    assert "ACT training stream restarted" in caplog.text and "batch of 2 puzzles" in caplog.text


def test_a_training_forward_without_gradient_leaves_the_stream_as_it_was():
    model = tiny_model(halt_max_steps=4)
    (input_ids, labels), (other, other_labels) = make_batches(2)
    model(input_ids, labels=labels)
    kept = model.act_stream.state
    with torch.no_grad():
        peek = model(other, labels=other_labels)
    assert model.act_stream.state is kept and peek.steps.tolist() == [2, 2, 2, 2] and peek.loss.isfinite()
    kept_step = model(other, labels=other_labels)  # the same step, now kept
    assert kept_step.steps.tolist() == [2, 2, 2, 2] and model.act_stream.state is not kept
    torch.testing.assert_close(kept_step.logits, peek.logits)


@pytest.mark.parametrize("act_training", ["one_segment", "all_segments"])
def test_a_training_forward_without_labels_raises_a_named_error(act_training):
    model = tiny_model(act_training=act_training)
    input_ids, _ = make_batches(1)[0]
    with pytest.raises(MissingLabelsError, match="deep supervision"):
        model(input_ids)
    assert model.act_stream.state is None


def test_trainer_that_pops_labels_fails_with_the_named_error(tmp_path):
    model = tiny_model()
    data = [{"input_ids": ids, "labels": labels} for ids, labels in zip(*make_batches(1, batch=8)[0])]
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=1, per_device_train_batch_size=4, report_to=[],
                             label_smoothing_factor=0.1, save_strategy="no", disable_tqdm=True, use_cpu=True)
    with pytest.raises(MissingLabelsError):
        Trainer(model=model, args=args, train_dataset=data).train()


def test_data_parallel_replicas_continue_the_stream_of_their_device():
    model = tiny_model(halt_max_steps=4)
    input_ids, labels = make_batches(1)[0]
    for step in (1, 2):  # DataParallel makes new replicas at every forward; they share the model's stream
        replica = model._replicate_for_data_parallel()
        assert replica.act_stream is model.act_stream
        assert replica(input_ids, labels=labels).steps.tolist() == [step] * 4
    assert list(model.act_stream.states) == [input_ids.device]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device (a GPU next to the CPU)")
def test_streams_of_two_devices_do_not_mix():
    model = tiny_model(halt_max_steps=4)
    on_gpu = copy.deepcopy(model).cuda()
    on_gpu.act_stream = model.act_stream  # as DataParallel's replicas share it, each on its device
    (a, a_labels), (b, b_labels) = make_batches(2, batch=4)
    b, b_labels = b[:2], b_labels[:2]  # another part of the batch on the other device
    for step in (1, 2, 3):
        assert model(a, labels=a_labels).steps.tolist() == [step] * 4
        assert on_gpu(b.cuda(), labels=b_labels.cuda()).steps.tolist() == [step] * 2
    assert torch.equal(model.act_stream.states[torch.device("cpu")].input_ids, a)


def test_the_stream_needs_only_the_segment_interface_of_the_model():
    """act_stream talks to the model through SegmentModel (config, embed_inputs, initial_carry, run_segment):
    an object with only those runs it, and act_stream does not import the model's module."""
    import ast
    from pathlib import Path

    from hier_mamba.act_stream import ACTStream

    model = tiny_model(halt_max_steps=4)

    class OnlyTheInterface:
        config = model.config
        embed_inputs = staticmethod(model.embed_inputs)
        initial_carry = staticmethod(model.initial_carry)
        run_segment = staticmethod(model.run_segment)

    stream = ACTStream()
    input_ids, labels = make_batches(1)[0]
    for step in (1, 2):
        assert stream.step(OnlyTheInterface(), input_ids, labels, None).state.steps.tolist() == [step] * 4
    source = Path(__file__).parents[1] / "hier_mamba" / "act_stream.py"
    imported = {node.module for node in ast.walk(ast.parse(source.read_text())) if isinstance(node, ast.ImportFrom)}
    assert not any("modeling" in (name or "") for name in imported), imported
