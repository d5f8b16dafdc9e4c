"""The mixers call conv1d / dt_proj as modules when something intercepts them (adapters, offload hooks,
forward hooks), on the scan and the step path alike."""

import pytest
import torch

from hier_mamba import HierMambaForCausalLM
from hier_mamba.mixers import intercepted
from helpers import sensitive_model  # tests/helpers.py

MODULES = {"mamba1": ["conv1d", "dt_proj", "in_proj", "x_proj", "out_proj"], "mamba2": ["conv1d", "in_proj", "out_proj"]}


model_for = sensitive_model


def _hook_all(model, name, hook):
    return [getattr(module, name).register_forward_hook(hook) for module in model.modules()
            if type(module).__name__.endswith("Mixer")]


def _prefill_and_steps(model, ids, split):
    with torch.no_grad():
        prefill = model(ids[:, :split], use_cache=True)
        steps = [model(ids[:, t:t + 1], cache=prefill.cache).logits for t in range(split, ids.shape[1])]
    return torch.cat([prefill.logits, *steps], dim=1)


@pytest.mark.parametrize("mixer,name", [(m, n) for m, names in MODULES.items() for n in names])
def test_a_hooked_module_changes_the_output_on_scan_and_step_paths(mixer, name):
    model = model_for(mixer)
    ids = torch.randint(0, 40, (2, 11))
    with torch.no_grad():
        plain = model(ids).logits
    # An identity hook switches conv1d / dt_proj to the module path: same numbers as the fast path.
    handles = _hook_all(model, name, lambda module, args, out: out)
    assert all(intercepted(getattr(m, name)) for m in model.modules() if type(m).__name__.endswith("Mixer"))
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, plain, rtol=1e-5, atol=1e-5)
    for handle in handles:
        handle.remove()
    # A hook that changes the module's output changes the logits, and prefill + steps still equal the full forward.
    handles = _hook_all(model, name, lambda module, args, out: out * 2 + 1)
    with torch.no_grad():
        hooked = model(ids).logits
    assert (hooked - plain).abs().max() > 1e-4  # 10x the identity path's tolerance
    torch.testing.assert_close(_prefill_and_steps(model, ids, 6), hooked, rtol=1e-4, atol=1e-4)
    for handle in handles:
        handle.remove()


def test_gradient_reaches_a_wrapped_conv_adapter():
    """A LoRA-like wrapper around conv1d (what peft does): only its weights train, and they get gradients."""

    class ScaledConv(torch.nn.Module):
        def __init__(self, conv):
            super().__init__()
            self.base, self.scale = conv, torch.nn.Parameter(torch.ones(conv.out_channels, 1))

        def forward(self, x):
            return self.base(x) * self.scale

    model = model_for("mamba2").train()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    for module in list(model.modules()):
        if type(module).__name__ == "Mamba2Mixer":
            module.conv1d = ScaledConv(module.conv1d)
    ids = torch.randint(0, 40, (2, 9))
    model(ids, labels=ids).loss.backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable)


def test_disk_offload_forward_and_generate_match(tmp_path):
    """accelerate's offload hooks load weights in each module's own forward: the decoding step must go through them."""
    pytest.importorskip("accelerate")
    model = model_for("mamba2")
    model.save_pretrained(tmp_path)
    offloaded = HierMambaForCausalLM.from_pretrained(tmp_path, device_map="auto", max_memory={"cpu": 20000},
                                                     offload_folder=tmp_path / "offload").eval()
    assert any(p.device.type == "meta" for p in offloaded.parameters()), "weights really are offloaded"
    ids = torch.randint(1, 40, (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(offloaded(ids).logits, model(ids).logits, rtol=1e-5, atol=1e-5)
    expected = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(offloaded.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), expected)


def test_decoding_runs_the_hooks_of_blocks_mixers_and_the_reasoner():
    """FSDP2's fully_shard and accelerate's hooks sit on these modules' forward: a cached step must call them."""
    model = model_for("mamba2")
    with torch.no_grad():
        cache = model(torch.randint(1, 40, (1, 5)), use_cache=True).cache
    called = []
    kinds = ("HierMambaBlock", "Mamba2Mixer", "HierarchicalReasoner")
    handles = [m.register_forward_pre_hook(lambda module, args, kwargs: called.append(type(module).__name__),
                                           with_kwargs=True)
               for m in model.modules() if type(m).__name__ in kinds]
    with torch.no_grad():
        model(torch.tensor([[7]]), cache=cache)
    for handle in handles:
        handle.remove()
    layers = model.config.num_hidden_layers
    assert called.count("HierMambaBlock") == layers and called.count("Mamba2Mixer") == layers
    assert called.count("HierarchicalReasoner") == 1


def test_fsdp2_fully_shard_trains_and_generates(tmp_path):
    """FSDP2 unshards a block's DTensor parameters in the block's forward hooks: decoding must go through them."""
    distributed = pytest.importorskip("torch.distributed")
    if not distributed.is_available() or not distributed.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available")
    from torch.distributed.fsdp import fully_shard

    from hier_mamba.blocks import HierMambaBlock

    reference = model_for("mamba2")
    model = model_for("mamba2")
    distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        for module in model.modules():
            if isinstance(module, HierMambaBlock):
                fully_shard(module)
        fully_shard(model)
        ids = torch.randint(1, 40, (2, 7))
        with torch.no_grad():
            torch.testing.assert_close(model(ids).logits, reference(ids).logits)
        expected = reference.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0)
        assert torch.equal(model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0), expected)
    finally:
        distributed.destroy_process_group()
