"""What transformers reads from a model: frozen deterministic initial states, num_hidden_layers,
hidden states, return_dict, forward signatures, generation kwargs, the Cache protocol."""

import pytest
import torch
from safetensors.torch import load_file, save_file

from hier_mamba import HierMambaForCausalLM
from helpers import model_for, tiny  # tests/helpers.py




def test_initial_states_are_frozen_and_the_same_on_every_construction(tmp_path):
    a, b = model_for(tiny(), seed=0), model_for(tiny(), seed=1)
    for name in ("H_init", "L_init"):
        first, second = getattr(a.model.reasoner, name), getattr(b.model.reasoner, name)
        assert isinstance(first, torch.nn.Parameter) and not first.requires_grad
        assert torch.equal(first, second)
    assert not torch.equal(a.model.reasoner.H_init, a.model.reasoner.L_init)
    # A checkpoint without them (as if saved before they existed) gets the same values on the meta-device path.
    a.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    assert "model.reasoner.H_init" in weights and "model.reasoner.L_init" in weights
    save_file({k: v for k, v in weights.items() if not k.endswith("_init")}, tmp_path / "model.safetensors",
              metadata={"format": "pt"})
    loaded = HierMambaForCausalLM.from_pretrained(tmp_path)
    assert torch.equal(loaded.model.reasoner.H_init, a.model.reasoner.H_init)
    assert torch.equal(loaded.model.reasoner.L_init, a.model.reasoner.L_init)


def test_initial_states_do_not_train():
    model = model_for(tiny()).train()
    before = model.model.reasoner.H_init.clone()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    ids = torch.randint(0, 50, (2, 8))
    model(ids, labels=ids).loss.backward()
    optimizer.step()
    assert model.model.reasoner.H_init.grad is None and torch.equal(model.model.reasoner.H_init, before)


@pytest.mark.parametrize("overrides,expected", [
    (dict(), 2 * (2 * 2 + 1)), (dict(H_cycles=3, L_cycles=1, H_layers=2, L_layers=1), 3 * (1 + 2)),
    (dict(architecture="looped", H_cycles=2, L_cycles=2), 6 * 2)])
def test_num_hidden_layers_counts_every_block_application(overrides, expected):
    config = tiny(**overrides)
    assert config.num_hidden_layers == expected
    model = model_for(config)
    with torch.no_grad():
        cache = model(torch.randint(0, 50, (1, 5)), use_cache=True).cache
    assert sum(len(states) for states in cache.states) == expected


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_hidden_states_are_every_block_output_and_end_with_z_H(mixer):
    config = tiny(mixer=mixer)
    model = model_for(config)
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
        plain = model(ids)
    assert plain.hidden_states is None
    assert len(out.hidden_states) == config.num_hidden_layers + 1
    assert all(h.shape == (2, 7, config.hidden_size) for h in out.hidden_states)
    torch.testing.assert_close(out.hidden_states[0], model.model.embeddings(ids) * config.embedding_multiplier)
    torch.testing.assert_close(out.hidden_states[-1], out.last_hidden_state)
    assert len({h.data_ptr() for h in out.hidden_states}) == len(out.hidden_states), "distinct tensors"
    torch.testing.assert_close(out.logits, plain.logits)
    # The decoding step returns the same count, one position each, equal to the full forward's last position.
    with torch.no_grad():
        cache = model(ids[:, :-1], use_cache=True).cache
        step = model(ids[:, -1:], cache=cache, output_hidden_states=True)
    assert len(step.hidden_states) == config.num_hidden_layers + 1
    for full, one in zip(out.hidden_states, step.hidden_states):
        torch.testing.assert_close(one, full[:, -1:], rtol=1e-4, atol=1e-4)


def test_return_dict_false_gives_tuples_from_argument_and_config():
    model = model_for(tiny())
    ids = torch.randint(0, 50, (1, 6))
    with torch.no_grad():
        reference = model(ids, labels=ids)
        as_tuple = model(ids, labels=ids, return_dict=False)
        assert isinstance(as_tuple, tuple)
        torch.testing.assert_close(as_tuple[0], reference.loss)
        torch.testing.assert_close(as_tuple[1], reference.logits)
        model.config.return_dict = False
        from_config = model(ids)
        base = model.model(ids)
    assert isinstance(from_config, tuple) and isinstance(base, tuple)
    torch.testing.assert_close(from_config[0], reference.logits)


def test_positional_arguments_are_ids_then_attention_mask_and_unknown_keywords_raise():
    model = model_for(tiny())
    ids = torch.randint(1, 50, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.long)
    mask[0, :3] = 0
    with torch.no_grad():
        positional = model(ids, mask).logits
        keyword = model(input_ids=ids, attention_mask=mask).logits
        unmasked = model(ids).logits
        torch.testing.assert_close(positional, keyword)
        assert not torch.allclose(positional[0, 3:], unmasked[0, 3:])
        model(ids, position_ids=torch.arange(6)[None], output_attentions=False)  # transformers plumbing, ignored
        with pytest.raises(TypeError, match="attention_masks"):
            model(ids, attention_masks=mask)
        with pytest.raises(TypeError, match="labelz"):
            model.model(ids, labelz=ids)


def test_prepare_inputs_for_generation_forwards_keywords_and_logits_to_keep():
    model = model_for(tiny())
    ids = torch.randint(1, 50, (2, 9))
    inputs = model.prepare_inputs_for_generation(ids, attention_mask=torch.ones_like(ids), use_cache=True,
                                                 logits_to_keep=1, output_hidden_states=True, custom_flag=3)
    assert inputs["logits_to_keep"] == 1 and inputs["output_hidden_states"] is True and inputs["custom_flag"] == 3
    seen = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: seen.append(tuple(out.shape)))
    model.generate(ids, max_new_tokens=3, do_sample=False, pad_token_id=0)
    hook.remove()
    assert seen == [(2, 1, 50)] * 3, "prefill computes logits for the last position only"


def test_setting_the_derived_num_hidden_layers_raises_naming_it():
    config = tiny()
    with pytest.raises(AttributeError, match="num_hidden_layers is derived from H_cycles, L_cycles"):
        config.num_hidden_layers = 3
    assert config.num_hidden_layers == 2 * (2 * 2 + 1)  # unchanged


def test_trainer_predictions_are_the_logits_without_the_hidden_state(tmp_path):
    from transformers import Trainer, TrainingArguments

    model = model_for(tiny())
    data = [{"input_ids": ids, "labels": ids} for ids in torch.randint(1, 50, (4, 6))]
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=2, report_to=[],
                             disable_tqdm=True, use_cpu=True)
    predictions = Trainer(model=model, args=args).predict(data).predictions
    # only the logits of all 4 rows: no (b, l, d) z_H and no cache piled up next to them
    assert not isinstance(predictions, tuple)
    assert predictions.shape == (4, 6, 50)


def test_the_shard_unit_is_named_for_this_package_and_the_fsdp_config_wraps_it():
    from pathlib import Path

    import yaml

    model = model_for(tiny())
    classes = {type(module).__name__ for module in model.modules()}
    assert set(model._no_split_modules) == {"HierMambaBlock"} and "HierMambaBlock" in classes
    assert "HierMambaStack" in classes and not {"Block", "Stack"} & classes  # no generic names in composite models
    fsdp = yaml.safe_load((Path(__file__).parents[1] / "configs" / "accelerate_fsdp2.yaml").read_text())
    assert fsdp["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"] == "HierMambaBlock"
