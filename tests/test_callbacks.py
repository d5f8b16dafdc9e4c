"""Tests of hier_mamba/callbacks.py: the EMA of the weights against a hand computation, swapping, and the
wall-clock budget's learning-rate factor and stop, with a fake clock."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import TrainerControl, TrainerState

from hier_mamba import callbacks as callbacks_mod
from hier_mamba.callbacks import EMACallback, TimeBudget


def tiny_model() -> torch.nn.Module:
    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, -2.0]]))
        model.bias.copy_(torch.tensor([4.0]))
    model.bias.requires_grad_(False)  # frozen: not averaged
    return model


def step(callback, model, state, weight, global_step):
    with torch.no_grad():
        model.weight.copy_(torch.tensor([weight]))
    state.global_step = global_step
    callback.on_step_end(None, state, TrainerControl())


def test_ema_matches_hand_computation():
    model, state = tiny_model(), TrainerState()
    ema = EMACallback(decay=0.9)
    ema.on_train_begin(None, state, TrainerControl(), model=model)
    assert set(ema.shadow) == {"weight"}
    # Step 1: warm-up decay min(0.9, 2/11); step 200: 0.9 (201/210 > 0.9).
    step(ema, model, state, [3.0, 0.0], global_step=1)
    d1 = 2 / 11
    expected = [d1 * 1.0 + (1 - d1) * 3.0, d1 * -2.0 + (1 - d1) * 0.0]
    assert torch.allclose(ema.shadow["weight"], torch.tensor([expected]))
    step(ema, model, state, [5.0, 10.0], global_step=200)
    expected = [0.9 * expected[0] + 0.1 * 5.0, 0.9 * expected[1] + 0.1 * 10.0]
    assert torch.allclose(ema.shadow["weight"], torch.tensor([expected]))
    assert model.weight.tolist() == [[5.0, 10.0]]  # the live weights are untouched


def test_ema_swap_twice_restores_and_train_end_leaves_the_average():
    model, state = tiny_model(), TrainerState()
    ema = EMACallback(decay=0.5)
    ema.on_train_begin(None, state, TrainerControl(), model=model)
    step(ema, model, state, [3.0, 6.0], global_step=100)  # shadow = 0.5 * [1, -2] + 0.5 * [3, 6] = [2, 2]
    ema.swap()
    assert model.weight.tolist() == [[2.0, 2.0]]
    assert ema.shadow["weight"].tolist() == [[3.0, 6.0]]
    ema.swap()
    assert model.weight.tolist() == [[3.0, 6.0]]
    assert ema.shadow["weight"].tolist() == [[2.0, 2.0]]
    ema.on_train_end(None, state, TrainerControl())
    assert model.weight.tolist() == [[2.0, 2.0]]
    assert model.bias.tolist() == [4.0]


def test_ema_rejects_bad_decay():
    for decay in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError):
            EMACallback(decay)


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(callbacks_mod.time, "perf_counter", fake)
    return fake


def lr_after(budget, optimizer, state, clock, seconds, global_step):
    clock.now = 100.0 + seconds
    state.global_step = global_step
    budget.on_step_begin(None, state, TrainerControl(), optimizer=optimizer)
    return [group["lr"] for group in optimizer.param_groups]


def test_time_budget_lr_factor_and_stop(clock):
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1], "lr": 1.0}, {"params": params[1:], "lr": 0.5}])
    budget, state = TimeBudget(seconds=1000, warmup_steps=4, min_lr_ratio=0.1), TrainerState()
    budget.on_train_begin(None, state, TrainerControl())
    assert lr_after(budget, optimizer, state, clock, 0, 0) == pytest.approx([0.25, 0.125])  # warm-up 1/4
    assert lr_after(budget, optimizer, state, clock, 0, 3) == pytest.approx([1.0, 0.5])  # warm-up 4/4
    half = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))
    assert lr_after(budget, optimizer, state, clock, 500, 10) == pytest.approx([half, half / 2])
    assert lr_after(budget, optimizer, state, clock, 5000, 20) == pytest.approx([0.1, 0.05])  # floor after the end
    control = TrainerControl()
    clock.now = 100.0 + 999
    budget.on_step_end(None, state, control)
    assert not control.should_training_stop
    clock.now = 100.0 + 1001
    budget.on_step_end(None, state, control)
    assert control.should_training_stop


def test_time_budget_none_leaves_lr_alone(clock):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.3)
    budget, state, control = TimeBudget(seconds=None), TrainerState(), TrainerControl()
    budget.on_train_begin(None, state, control)
    assert lr_after(budget, optimizer, state, clock, 10**6, 5) == [0.3]
    budget.on_step_end(None, state, control)
    assert not control.should_training_stop
    with pytest.raises(ValueError):
        TimeBudget(seconds=0)
    with pytest.raises(ValueError):
        TimeBudget(seconds=10, min_lr_ratio=2.0)
