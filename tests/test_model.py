"""HierMambaForCausalLM: cache == full forward, generate, causality, gradient settings, round-trips."""

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM

from hier_mamba import HierMambaForCausalLM, HierMambaModel
from hier_mamba.reasoning import invocation_schedule
from helpers import model_for, tiny  # tests/helpers.py




@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_prefill_plus_steps_equals_full_forward(mixer):
    model = model_for(tiny(mixer))
    ids = torch.randint(0, 50, (2, 23))
    with torch.no_grad():
        full = model(ids, use_cache=False).logits
        prefill = model(ids[:, :11], use_cache=True)
        cache = prefill.cache
        steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(11, 20)]
        tail = model(ids[:, 20:], cache=cache).logits  # several new tokens at once
    torch.testing.assert_close(torch.cat([prefill.logits, *steps, tail], dim=1), full, rtol=1e-4, atol=1e-4)
    assert cache.get_seq_length() == 23


def test_cache_size_does_not_grow_with_length():
    model = model_for(tiny())
    with torch.no_grad():
        short = model(torch.randint(0, 50, (1, 8)), use_cache=True).cache
        long = model(torch.randint(0, 50, (1, 200)), use_cache=True).cache
        before = long.nbytes()
        model(torch.tensor([[3]]), cache=long)
    config = model.config
    assert short.nbytes() == long.nbytes() == before
    assert len(long.states) == config.num_invocations
    assert [len(s) for s in long.states] == [config.L_layers if k == "L" else config.H_layers
                                             for k in invocation_schedule(config)]


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_prefill_cache_storage_is_independent_of_length(mixer):
    """The bytes of the storages behind the cache (not of the views) are the same at l = 8 and l = 300."""
    model = model_for(tiny(mixer))
    with torch.no_grad():
        caches = [model(torch.randint(0, 50, (2, length)), use_cache=True).cache for length in (8, 300)]
    storage_bytes = []
    for cache in caches:
        tensors = [t for invocation in cache.states for state in invocation for t in state]
        assert all(t.untyped_storage().nbytes() == t.numel() * t.element_size() for t in tensors)
        storage_bytes.append(sum(t.untyped_storage().nbytes() for t in tensors))
    assert storage_bytes[0] == storage_bytes[1] == caches[1].nbytes()


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_greedy_generate_equals_argmax_of_full_recompute(mixer):
    model = model_for(tiny(mixer))
    prompt = torch.randint(1, 50, (2, 6))
    generated = model.generate(prompt, max_new_tokens=12, do_sample=False, pad_token_id=0)
    sequence = prompt
    with torch.no_grad():
        for _ in range(12):
            next_token = model(sequence, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, next_token], dim=1)
    assert torch.equal(generated, sequence)


def test_sampling_is_seeded_and_in_vocabulary():
    model = model_for(tiny())
    prompt = torch.randint(1, 50, (1, 4))
    torch.manual_seed(7)
    a = model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=10, pad_token_id=0)
    torch.manual_seed(7)
    b = model.generate(prompt, max_new_tokens=20, do_sample=True, top_k=10, pad_token_id=0)
    assert torch.equal(a, b) and a.shape == (1, 24) and int(a.max()) < 50


def test_left_padded_batch_generates_like_each_row_alone():
    model = model_for(tiny())
    rows = [torch.randint(1, 50, (n,)) for n in (3, 8)]
    width = max(len(r) for r in rows)
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(r)), torch.ones(len(r))]) for r in rows]).long()
    batch = model.generate(ids, attention_mask=mask, max_new_tokens=10, do_sample=False, pad_token_id=0)
    for row, (tokens, padded) in enumerate(zip(rows, batch)):
        alone = model.generate(tokens[None], max_new_tokens=10, do_sample=False, pad_token_id=0)[0]
        assert torch.equal(padded[width - len(tokens):], alone), f"row {row} differs when batched"


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_causality(mixer):
    model = model_for(tiny(mixer))
    ids = torch.randint(0, 50, (1, 20))
    changed = ids.clone()
    changed[0, 12] = (changed[0, 12] + 1) % 50
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


def test_bidirectional_model_sees_the_future_and_refuses_caches():
    config = tiny(bidirectional=True)
    torch.manual_seed(0)
    model = HierMambaModel(config).eval()
    ids = torch.randint(0, 50, (1, 20))
    changed = ids.clone()
    changed[0, 12] = (changed[0, 12] + 1) % 50
    with torch.no_grad():
        a = model(ids, use_cache=False).last_hidden_state
        b = model(changed, use_cache=False).last_hidden_state
        assert not torch.allclose(a[:, :12], b[:, :12])
        with pytest.raises(ValueError, match="bidirectional"):
            model(ids, use_cache=True)
    with pytest.raises(ValueError, match="bidirectional"):
        HierMambaForCausalLM(config)


def _grads(model, ids):
    model.zero_grad()
    model(ids, labels=ids).loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_gradient_checkpointing_gives_equal_grads():
    model = model_for(tiny()).train()
    ids = torch.randint(0, 50, (2, 16))
    plain = _grads(model, ids)
    model.gradient_checkpointing_enable()
    assert all(block.gradient_checkpointing for block in model.model.reasoner.H.layers)
    checkpointed = _grads(model, ids)
    assert plain.keys() == checkpointed.keys()
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)


def _recorded_invocations(model, ids) -> list[bool]:
    """For each stack invocation in order: does its output carry autograd history?"""
    seen = []
    hooks = [stack.register_forward_hook(lambda module, args, out: seen.append(out[0].requires_grad))
             for stack in (model.model.reasoner.H, model.model.reasoner.L)]
    logits = model(ids).logits
    for hook in hooks:
        hook.remove()
    return seen, logits


@pytest.mark.parametrize("bptt_steps,expected", [
    (2, [False] * 4 + [True] * 2), (4, [False] * 2 + [True] * 4), (None, [True] * 6), (1, [False] * 5 + [True]),
    ("one_step", [False] * 4 + [True] * 2), ("last_cycle", [False] * 3 + [True] * 3)])
def test_bptt_steps_selects_recorded_invocations_without_changing_forward(bptt_steps, expected):
    ids = torch.randint(0, 50, (1, 10))
    reference = model_for(tiny(bptt_steps=None)).train()
    model = model_for(tiny(bptt_steps=bptt_steps)).train()
    recorded, logits = _recorded_invocations(model, ids)
    assert recorded == expected
    with torch.no_grad():
        torch.testing.assert_close(logits, reference(ids).logits)


def test_checkpoint_cycles_gives_full_bptt_grads():
    ids = torch.randint(0, 50, (2, 12))
    full = _grads(model_for(tiny(bptt_steps=None, H_cycles=3)).train(), ids)
    checkpointed = _grads(model_for(tiny(bptt_steps=None, H_cycles=3, checkpoint_cycles=True)).train(), ids)
    for name in full:
        torch.testing.assert_close(checkpointed[name], full[name], rtol=1e-5, atol=1e-6, msg=name)


def test_one_step_gradient_differs_from_full_bptt():
    ids = torch.randint(0, 50, (2, 12))
    one_step = _grads(model_for(tiny(bptt_steps=2)).train(), ids)
    full = _grads(model_for(tiny(bptt_steps=None)).train(), ids)
    name = "model.embeddings.weight"
    assert not torch.allclose(one_step[name], full[name])


def test_the_lm_head_is_untied_by_default_and_stays_so_through_a_round_trip(tmp_path):
    model = model_for(tiny())
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embeddings.weight.data_ptr()
    head_std, d = model.lm_head.weight.std().item(), model.config.hidden_size
    assert abs(head_std * d ** 0.5 - 1) < 0.15, head_std  # HRM's LeCun-normal head, not Linear's normal(0.02)
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path)
    assert loaded.lm_head.weight.data_ptr() != loaded.model.embeddings.weight.data_ptr()
    torch.testing.assert_close(loaded.lm_head.weight, model.lm_head.weight, rtol=0, atol=0)
    assert not torch.equal(loaded.lm_head.weight, loaded.model.embeddings.weight)


def test_save_load_round_trip_and_auto_classes(tmp_path):
    model = model_for(tiny(mixer="mamba1", tie_word_embeddings=True))
    model.save_pretrained(tmp_path)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "hier_mamba"
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert type(loaded) is HierMambaForCausalLM
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embeddings.weight.data_ptr(), "tied head"
    ids = torch.randint(0, 50, (2, 9))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)
    base = AutoModel.from_config(model.config)
    assert type(base) is HierMambaModel
    assert loaded.get_input_embeddings() is loaded.model.embeddings and base.get_input_embeddings() is base.embeddings
    replacement = torch.nn.Embedding(50, model.config.hidden_size)
    loaded.set_input_embeddings(replacement)
    assert loaded.model.embeddings is replacement


def test_loss_ignores_minus_100_and_shifts():
    model = model_for(tiny())
    ids = torch.randint(0, 50, (1, 10))
    labels = ids.clone()
    labels[0, 5:] = -100
    with torch.no_grad():
        out = model(ids, labels=labels)
        expected = torch.nn.functional.cross_entropy(out.logits[0, :4], ids[0, 1:5])
    torch.testing.assert_close(out.loss, expected)


def test_bad_inputs_raise_clear_errors():
    model = model_for(tiny())
    with pytest.raises(ValueError, match=r"input_ids\[0, 2\] = 50 is outside the vocabulary"):
        model(torch.tensor([[1, 2, 50]]))
    with pytest.raises(ValueError, match="labels"):
        model(torch.tensor([[1, 2, 3]]), labels=torch.tensor([[1, 2, 77]]))
    with pytest.raises(ValueError, match="integer"):
        model(torch.tensor([[1.0, 2.0]]))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4))


@pytest.mark.parametrize("field,value", [
    ("mixer", "mamba3"), ("hidden_size", 0), ("H_cycles", -1), ("conv_kernel", 5), ("bptt_steps", 0),
    ("head_dim", 48), ("ssm_backend", "triton"), ("time_step_min", 0.0), ("bidirectional", "yes"),
    ("n_groups", 3), ("pad_token_id", 999), ("halt_exploration_prob", 1.5), ("loss_type", "mse"),
    ("position_embeddings", -1), ("position_embeddings", True), ("bptt_steps", "two_steps"),
    ("scale_embeddings", 1), ("no_act_continue", "yes"),
])
def test_config_validation_names_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        tiny(**{field: value})


def test_last_cycle_window_needs_the_hierarchy():
    with pytest.raises(ValueError, match="last_cycle"):
        tiny(architecture="looped", bptt_steps="last_cycle")
    assert tiny(architecture="looped", bptt_steps="one_step").recorded_invocations == 1


def test_from_pretrained_with_mismatched_sizes_keeps_the_loaded_out_proj_weights(tmp_path):
    model = model_for(tiny())
    model.save_pretrained(tmp_path)
    # another head size: each mixer's per-head A_log, D, dt_bias are drawn anew (so the mixer init runs on every
    # mixer), its out_proj (d, d_inner) keeps its shape and is loaded; it measured 1/sqrt(3) of the saved weights
    loaded = HierMambaForCausalLM.from_pretrained(tmp_path, head_dim=8, ignore_mismatched_sizes=True)
    assert loaded.model.reasoner.L.layers[0].mixer.A_log.shape == (8,)
    original = dict(model.named_parameters())
    for name, parameter in loaded.named_parameters():
        if "out_proj" in name:
            torch.testing.assert_close(parameter, original[name], rtol=0, atol=0, msg=name)
