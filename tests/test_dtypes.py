"""A_log, D and the dt bias (Mamba2's dt_bias, Mamba1's dt_proj.bias) stay fp32 under a bf16 model (from_pretrained;
.to keeps A_log, D, dt_bias), and bf16 autocast trains."""

import re

import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForCausalLM, HierMambaModel
from hier_mamba.modeling import FP32_PARAMETER_PATTERNS


def tiny(mixer) -> HierMambaConfig:
    return HierMambaConfig(vocab_size=40, hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=1,
                           mixer=mixer, state_size=8, head_dim=16, chunk_size=8)


def _dtypes(model) -> dict[str, torch.dtype]:
    return {name: parameter.dtype for name, parameter in model.named_parameters()}


def _assert_mixed(model, low: torch.dtype) -> None:
    dtypes = _dtypes(model)
    kept = {name for name in dtypes if any(re.search(pattern, name) for pattern in FP32_PARAMETER_PATTERNS)}
    assert kept, "the model has fp32-kept parameters"
    assert all(dtypes[name] == torch.float32 for name in kept), {n: dtypes[n] for n in kept}
    assert all(dtype == low for name, dtype in dtypes.items() if name not in kept)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_from_pretrained_bf16_keeps_ssm_parameters_fp32(mixer, tmp_path):
    torch.manual_seed(0)
    model = HierMambaForCausalLM(tiny(mixer))
    model.save_pretrained(tmp_path)
    loaded = HierMambaForCausalLM.from_pretrained(tmp_path, dtype=torch.bfloat16)
    _assert_mixed(loaded, torch.bfloat16)
    original = dict(model.named_parameters())
    for name, parameter in loaded.named_parameters():
        if parameter.dtype == torch.float32:
            assert torch.equal(parameter, original[name]), f"{name} lost precision"
    with torch.no_grad():
        assert torch.isfinite(loaded(torch.randint(0, 40, (2, 12))).logits).all()


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_keep_in_fp32_patterns_each_find_a_parameter(mixer):
    """Every pattern in _keep_in_fp32_modules_strict finds a parameter (transformers' common test wraps each in
    (?:^|\\.)...(?:\\.|$)); mamba1 has no dt_bias, mamba2 no dt_proj."""
    for model in (HierMambaModel(tiny(mixer)), HierMambaForCausalLM(tiny(mixer))):
        names = [name for name, _ in model.named_parameters()]
        assert model._keep_in_fp32_modules_strict
        for pattern in model._keep_in_fp32_modules_strict:
            assert any(re.search(rf"(?:^|\.){pattern}(?:\.|$)", name) for name in names), pattern
    expected = {"A_log", "D", "dt_bias"} if mixer == "mamba2" else {"A_log", "D", "dt_proj.bias"}
    kept = {name.split("mixer.")[-1] for name in names
            if any(re.search(pattern, name) for pattern in model._keep_in_fp32_modules_strict)}
    assert kept == expected


def test_fp32_patterns_match_whole_names_only():
    def kept(name):
        return any(re.search(pattern, name) for pattern in FP32_PARAMETER_PATTERNS)

    assert kept("model.reasoner.L.layers.0.mixer.D") and kept("model.reasoner.H.layers.1.grid_mixers.col.0.A_log")
    assert kept("model.reasoner.L.layers.0.mixer.dt_proj.bias")
    for other in ("model.Decoder.weight", "model.reasoner.L.layers.0.mixer.D_extra", "head.DA_log",
                  "model.reasoner.L.layers.0.mixer.dt_proj.weight", "model.x.out_proj.bias", "Dt_bias"):
        assert not kept(other), other


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_to_low_precision_keeps_ssm_parameters_fp32_and_double_is_honoured(low):
    torch.manual_seed(0)
    model = HierMambaForCausalLM(tiny("mamba2"))
    reference = {name: parameter.detach().clone() for name, parameter in model.named_parameters()}
    model.to(low)
    _assert_mixed(model, low)
    for name, parameter in model.named_parameters():
        if parameter.dtype == torch.float32:
            assert torch.equal(parameter, reference[name])
    model.double()
    assert set(_dtypes(model).values()) == {torch.float64}


def test_bf16_autocast_training_stays_finite():
    torch.manual_seed(0)
    model = HierMambaForCausalLM(tiny("mamba2")).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    ids = torch.randint(0, 40, (4, 16))
    losses = []
    for _ in range(200):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses)))
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert losses[-1] < 0.5 * losses[0], "the memorisation loss fell"


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_a_model_built_under_a_low_default_dtype_creates_its_fp32_parameters_in_fp32(mixer):
    """transformers' contract for _keep_in_fp32_modules_strict (its common test builds the model under fp16)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.float16)
    try:
        model = HierMambaForCausalLM(tiny(mixer))
    finally:
        torch.set_default_dtype(default)
    _assert_mixed(model, torch.float16)
