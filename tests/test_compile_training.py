"""Compiled training: a training step of either mixer is one graph (``fullgraph=True``, no graph break) and gives
eager's loss and gradients; ``TrainingArguments(torch_compile=True)`` trains with HierMambaTrainer.

The cheap backends prove the properties: "eager" runs dynamo's capture (a graph break raises under fullgraph), and
"aot_eager" also traces the backward through AOTAutograd (every autograd.Function's backward included) without
inductor's code generation. An inductor build of the benchmark model takes minutes on CPU: marked slow.
"""

import pytest
import torch
from transformers import TrainingArguments

from hier_mamba import HierMambaConfig, HierMambaForCausalLM
from hier_mamba.optim import HierMambaTrainer

MIXERS = ["mamba2", "mamba1"]


def _model(mixer: str, **overrides) -> HierMambaForCausalLM:
    torch.manual_seed(0)
    values = dict(vocab_size=64, hidden_size=32, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1, mixer=mixer,
                  state_size=8, head_dim=16, chunk_size=8)
    values.update(overrides)
    return HierMambaForCausalLM(HierMambaConfig(**values)).train()


def _loss_and_grads(model, loss_fn, ids):
    model.zero_grad(set_to_none=True)
    loss = loss_fn(ids)
    loss.backward()
    return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mixer", MIXERS)
def test_training_step_has_no_graph_break(one_thread, mixer):
    model = _model(mixer, H_cycles=2, L_cycles=2)  # the one-step gradient: no-grad invocations before the last
    ids = torch.randint(0, 64, (2, 20))
    explanation = torch._dynamo.explain(lambda ids: model(input_ids=ids, labels=ids).loss)(ids)
    assert explanation.graph_break_count == 0, [reason.reason for reason in explanation.break_reasons]
    assert explanation.graph_count == 1


@pytest.mark.parametrize("mixer", MIXERS)
def test_compiled_training_step_gives_eager_loss_and_gradients(one_thread, mixer):
    model = _model(mixer)
    ids = torch.randint(0, 64, (2, 20))  # not a multiple of the chunk: padding inside the SSD

    def loss_fn(ids):
        return model(input_ids=ids, labels=ids).loss

    loss, grads = _loss_and_grads(model, loss_fn, ids)
    compiled_loss, compiled_grads = _loss_and_grads(model, torch.compile(loss_fn, fullgraph=True,
                                                                         backend="aot_eager"), ids)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-6, atol=1e-6)
    assert compiled_grads.keys() == grads.keys()
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)


class _Repeating(torch.utils.data.Dataset):
    def __init__(self, length: int = 16, size: int = 16):
        pattern = torch.tensor(list(b"hier mamba "), dtype=torch.long) % 64
        self.items = [pattern.roll(-i).repeat(length // len(pattern) + 1)[:length] for i in range(size)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return {"input_ids": self.items[index], "labels": self.items[index]}


def test_trainer_with_torch_compile_trains(one_thread, tmp_path):
    model = _model("mamba2")
    data = _Repeating()
    batch = {k: torch.stack([data[i][k] for i in range(4)]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        before = model(**batch).loss.item()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=6, per_device_train_batch_size=4, learning_rate=1e-2,
                             torch_compile=True, torch_compile_backend="aot_eager", report_to=[], save_strategy="no",
                             disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1)
    trainer = HierMambaTrainer(model=model, args=args, train_dataset=data)
    result = trainer.train()
    assert isinstance(trainer.model_wrapped, torch._dynamo.eval_frame.OptimizedModule) or \
        isinstance(trainer.model, torch._dynamo.eval_frame.OptimizedModule)
    assert torch.isfinite(torch.tensor(result.training_loss))
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < before, (before, after)


@pytest.mark.slow
@pytest.mark.parametrize("mixer", MIXERS)
def test_inductor_training_step_gives_eager_loss_and_gradients(one_thread, mixer):
    model = _model(mixer)
    ids = torch.randint(0, 64, (2, 20))

    def loss_fn(ids):
        return model(input_ids=ids, labels=ids).loss

    loss, grads = _loss_and_grads(model, loss_fn, ids)
    compiled_loss, compiled_grads = _loss_and_grads(model, torch.compile(loss_fn, fullgraph=True), ids)
    torch.testing.assert_close(compiled_loss, loss, rtol=1e-5, atol=1e-5)
    for name, grad in grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-4, atol=1e-5, msg=name)
