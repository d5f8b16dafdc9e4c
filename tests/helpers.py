"""Builders shared by several test modules (imported as ``helpers``: pytest puts tests/ on sys.path)."""

import importlib.util

import torch

from hier_mamba import HierMambaConfig, HierMambaForCausalLM

# The packages the CPU checks of mamba-ssm's GPU path need (pure-Python install: docs/gpu.md).
KERNEL_PACKAGES_MISSING = [name for name in ("triton", "einops", "mamba_ssm", "causal_conv1d")
                           if importlib.util.find_spec(name) is None]


def tiny(mixer="mamba2", **overrides) -> HierMambaConfig:
    """A tiny causal-LM config: 1 H + 2 L blocks, 2 x 2 cycles, width 32."""
    values = dict(vocab_size=50, hidden_size=32, H_layers=1, L_layers=2, H_cycles=2, L_cycles=2, mixer=mixer,
                  state_size=8, head_dim=16, chunk_size=8)
    values.update(overrides)
    return HierMambaConfig(**values)


def model_for(config, seed=0) -> HierMambaForCausalLM:
    """The model of ``config`` from ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return HierMambaForCausalLM(config).eval()


def sensitive_model(mixer) -> HierMambaForCausalLM:
    """A tiny LM whose logits react to every projection (adapter and hook tests)."""
    torch.manual_seed(0)
    config = HierMambaConfig(vocab_size=40, hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=1,
                             mixer=mixer, state_size=8, head_dim=16, chunk_size=4)
    model = HierMambaForCausalLM(config).eval()
    with torch.no_grad():  # at init B, C are ~0.02 |x| and out_proj small: dt barely moves the logits; amplify
        for name, parameter in model.named_parameters():
            if name.endswith(("x_proj.weight", "out_proj.weight")):
                parameter.mul_(25)
    return model


def projected_grads(outputs, inputs):
    """Gradients wrt ``inputs`` of a fixed random projection of ``outputs`` (the same weights on every call), so
    two implementations of one function can be compared through every output at once."""
    loss = sum((o * torch.randn(o.shape, generator=torch.Generator().manual_seed(i), dtype=o.dtype)).sum()
               for i, o in enumerate(outputs))
    return torch.autograd.grad(loss, inputs)
