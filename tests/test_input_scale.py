"""The input embedding reaches the stacks at the scale of the states (HRM's sqrt(d) scheme), and the
default model learns as fast as transformers' Mamba2 of similar size on a task that needs the input."""

import math

import pytest
import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, Trainer, TrainingArguments

from hier_mamba import HierMambaConfig, HierMambaForCausalLM, HierMambaForTokenClassification

SMALL = dict(vocab_size=64, hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=2,
             state_size=8, head_dim=16, chunk_size=16)


class Successor(torch.utils.data.Dataset):
    """Sequences whose next token is always the current one + 1 (mod vocab): only the input tells it."""

    def __init__(self, vocab: int = 64, length: int = 24, size: int = 256):
        generator = torch.Generator().manual_seed(1)
        starts = torch.randint(0, vocab, (size, 1), generator=generator)
        self.items = (starts + torch.arange(length)) % vocab  # (size, length)

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return {"input_ids": self.items[index], "labels": self.items[index]}


def loss_drop(model, tmp_path, steps: int = 32) -> float:
    """final / initial loss on a fixed batch after ``steps`` Trainer steps (lower is faster learning)."""
    data = Successor()
    batch = {k: torch.stack([data[i][k] for i in range(32)]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        before = model(**batch).loss.item()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=steps, per_device_train_batch_size=16,
                             learning_rate=3e-3, report_to=[], save_strategy="no", disable_tqdm=True,
                             use_cpu=True, seed=0)
    Trainer(model=model, args=args, train_dataset=data).train()
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    return after / before


def test_injected_input_has_the_scale_of_the_states():
    torch.manual_seed(0)
    model = HierMambaForCausalLM(HierMambaConfig(**SMALL))
    ids = torch.arange(64).view(4, 16)
    x = model.model._scale_input(model.model.embeddings(ids))  # (4, 16, d): what the stacks receive
    rms_x = x.pow(2).mean(-1).sqrt().mean().item()
    rms_init = model.model.reasoner.L_init.pow(2).mean().sqrt().item()
    assert 0.7 < rms_x < 1.4 and 0.7 < rms_init < 1.4, (rms_x, rms_init)
    old = HierMambaForCausalLM(HierMambaConfig(**SMALL, scale_embeddings=False))
    rms_old = old.model.embeddings(ids).pow(2).mean(-1).sqrt().mean().item()
    assert rms_old < 0.05, rms_old  # the drowned input of before: ~0.02


def test_inputs_embeds_get_the_same_scale_as_input_ids():
    torch.manual_seed(0)
    model = HierMambaForCausalLM(HierMambaConfig(**SMALL)).eval()
    ids = torch.randint(0, 64, (2, 9))
    with torch.no_grad():
        by_ids = model(input_ids=ids).logits
        by_embeds = model(inputs_embeds=model.get_input_embeddings()(ids)).logits
    torch.testing.assert_close(by_ids, by_embeds, rtol=0, atol=0)


def test_puzzle_head_sums_token_and_position_at_unit_scale():
    torch.manual_seed(0)
    config = HierMambaConfig(**{**SMALL, "bidirectional": True, "use_cache": False, "position_embeddings": 16})
    model = HierMambaForTokenClassification(config)
    std = model.position_embeddings.weight.std().item()
    assert math.isclose(std, 1 / math.sqrt(32), rel_tol=0.15), std
    assert math.isclose(model.lm_head.weight.std().item(), 1 / math.sqrt(32), rel_tol=0.15)


@pytest.mark.parametrize("architecture", ["hrm", "looped"])
def test_default_config_learns_the_successor_task_as_fast_as_transformers_mamba2(tmp_path, architecture):
    torch.manual_seed(0)
    extra = {"H_cycles": 1, "L_cycles": 1} if architecture == "looped" else {}
    ours = HierMambaForCausalLM(HierMambaConfig(**{**SMALL, **extra, "architecture": architecture}))
    torch.manual_seed(0)
    reference = Mamba2ForCausalLM(Mamba2Config(vocab_size=64, hidden_size=32, num_hidden_layers=2, state_size=8,
                                               head_dim=16, num_heads=4, n_groups=1, chunk_size=16, expand=2))
    ours_drop = loss_drop(ours, tmp_path / "ours")
    reference_drop = loss_drop(reference, tmp_path / "reference")
    assert reference_drop < 0.6, reference_drop  # the task is learnable in 32 steps
    assert ours_drop <= reference_drop * 1.05, (ours_drop, reference_drop)
