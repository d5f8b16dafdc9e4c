"""peft LoRA on every projection of both mixers: the output changes, only adapter weights train (and get
gradients), merged == unmerged; on the depthwise conv (rank = channels, peft's limit for grouped convs)."""

import pytest
import torch

from helpers import sensitive_model  # tests/helpers.py

peft = pytest.importorskip("peft")

TARGETS = [("mamba1", "in_proj"), ("mamba1", "x_proj"), ("mamba1", "dt_proj"), ("mamba1", "out_proj"),
           ("mamba2", "in_proj"), ("mamba2", "out_proj")]


model_for = sensitive_model


def _adapt_and_train(mixer, lora_config):
    model = model_for(mixer)
    ids = torch.randint(0, 40, (2, 9))
    with torch.no_grad():
        before = model(ids).logits
    adapted = peft.get_peft_model(model, lora_config)
    with torch.no_grad():
        after = adapted(ids).logits
    adapted.train()
    adapted(input_ids=ids, labels=ids).loss.backward()
    trainable = {name: p for name, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    adapted.eval()
    return adapted, ids, before, after


@pytest.mark.parametrize("mixer,target", TARGETS)
def test_lora_on_a_projection_changes_trains_and_merges(mixer, target):
    adapted, ids, before, after = _adapt_and_train(
        mixer, peft.LoraConfig(r=2, target_modules=[target], init_lora_weights=False))
    assert (after - before).abs().max() > 1e-6
    with torch.no_grad():
        unmerged = adapted(ids).logits
        merged = adapted.merge_and_unload()(ids).logits
    torch.testing.assert_close(merged, unmerged, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mixer,channels", [("mamba1", 64), ("mamba2", 80)])
def test_lora_on_the_depthwise_conv_changes_and_trains(mixer, channels):
    _, _, before, after = _adapt_and_train(
        mixer, peft.LoraConfig(r=channels, target_modules=["conv1d"], init_lora_weights=False))
    assert (after - before).abs().max() > 1e-6
