"""transformers' own caches (cache_access.py): generate(cache_implementation="static") decodes what the default
HierMambaCache decodes, the StaticCache's tensors are written in place, and the decoding forward compiles as one
graph (fullgraph=True) that later generations reuse without recompiling.

The graph-count test traces with dynamo and runs the captured graph eagerly (a counting backend: seconds); one test
(marked slow: ~20 s on a 2-core CPU with an empty inductor cache) builds it with inductor, as generate does on a GPU
and as transformers' own GenerationTesterMixin does (tests/test_transformers_common.py, downloaded tests).
"""

import pytest
import torch
from transformers import CompileConfig, DynamicCache, StaticCache
from transformers.cache_utils import Cache, DynamicLayer

from helpers import model_for, tiny  # tests/helpers.py
from hier_mamba.cache import HierMambaCache


def _generate(model, prompt, mask, **kwargs):
    return model.generate(prompt, attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0,
                          return_dict_in_generate=True, output_scores=True, **kwargs)


def _prompt(batch=2, length=7):
    torch.manual_seed(1)
    prompt = torch.randint(1, 50, (batch, length))
    mask = torch.ones_like(prompt)
    mask[0, :2] = 0  # left padding
    return prompt, mask


def _assert_same_generation(ours, reference):
    assert torch.equal(ours.sequences, reference.sequences)
    for score, expected in zip(ours.scores, reference.scores):
        torch.testing.assert_close(score, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mixer", ["mamba2", "mamba1"])
@pytest.mark.parametrize("implementation", ["static", "dynamic"])
def test_transformers_cache_generates_what_the_default_cache_generates(mixer, implementation):
    model = model_for(tiny(mixer))
    prompt, mask = _prompt()
    default = _generate(model, prompt, mask)
    ours = _generate(model, prompt, mask, cache_implementation=implementation)
    assert isinstance(default.past_key_values, HierMambaCache)
    assert type(ours.past_key_values) is (StaticCache if implementation == "static" else DynamicCache)
    _assert_same_generation(ours, default)
    # the final states agree slot by slot
    for layer, expected in zip(ours.past_key_values.layers, default.past_key_values.layers):
        torch.testing.assert_close(layer.conv_states[0], expected.conv_states[0])
        torch.testing.assert_close(layer.recurrent_states[0], expected.recurrent_states[0])


def test_static_cache_is_written_in_place_and_steps_match_the_full_forward():
    model = model_for(tiny())
    ids = torch.randint(1, 50, (2, 10))
    cache = StaticCache(config=model.config, max_cache_len=10)
    with torch.no_grad():
        full = model(ids).logits
        prefill = model(ids[:, :7], cache=cache, use_cache=True)
        addresses = [(layer.conv_states[0].data_ptr(), layer.recurrent_states[0].data_ptr()) for layer in cache.layers]
        steps = [model(ids[:, t:t + 1], cache=cache).logits for t in range(7, 10)]
    assert prefill.cache is cache
    assert addresses == [(layer.conv_states[0].data_ptr(), layer.recurrent_states[0].data_ptr())
                         for layer in cache.layers]
    torch.testing.assert_close(torch.cat([prefill.logits] + steps, dim=1), full, rtol=1e-4, atol=1e-5)


def test_static_cache_continued_prefill_matches_the_full_forward():
    model = model_for(tiny("mamba1"))
    ids = torch.randint(1, 50, (1, 12))
    cache = StaticCache(config=model.config, max_cache_len=12)
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :5], cache=cache).logits
        second = model(ids[:, 5:], cache=cache).logits  # several new tokens: the scans from the cached states
    torch.testing.assert_close(torch.cat([first, second], dim=1), full, rtol=1e-4, atol=1e-5)


def test_compiled_decoding_with_a_static_cache_is_one_graph_reused_across_generations():
    model = model_for(tiny())
    prompt, mask = _prompt()
    eager = _generate(model, prompt, mask)
    graphs = []

    def counting_backend(graph_module, example_inputs, **options):  # options: CompileConfig's mode
        graphs.append(graph_module)
        return graph_module.forward

    torch._dynamo.reset()
    config = CompileConfig(fullgraph=True, dynamic=False, backend=counting_backend)
    config._compile_all_devices = True  # generate compiles on CPU only when told to (as transformers' tests do)
    try:
        first = _generate(model, prompt, mask, cache_implementation="static", compile_config=config)
        second = _generate(model, prompt, mask, cache_implementation="static", compile_config=config)
    finally:
        torch._dynamo.reset()
    assert hasattr(model, "_compiled_call")
    assert len(graphs) == 1, f"{len(graphs)} graphs: the decoding forward broke or recompiled"
    _assert_same_generation(first, eager)
    _assert_same_generation(second, eager)


def _counts_tokens(cache) -> bool:
    """Whether this transformers release's linear-attention layers count absorbed tokens (5.25 does, 5.20 does not)."""
    return hasattr(cache.layers[0], "cumulative_length_linear")


@pytest.mark.parametrize("implementation", ["static", "dynamic"])
def test_a_transformers_cache_counts_the_tokens_it_absorbed(implementation):
    model = model_for(tiny())
    prompt, mask = _prompt(batch=1)
    used = _generate(model, prompt, mask, cache_implementation=implementation).past_key_values
    if not _counts_tokens(used):
        pytest.skip("this transformers release's linear-attention layers keep no token count")
    # the 7-token prompt and 5 of the 6 new tokens (the last one was sampled, not fed)
    assert [int(layer.get_seq_length()) for layer in used.layers] == [7 + 5] * len(used.layers)
    assert int(used.get_seq_length()) == 12
    used.reset()
    assert int(used.get_seq_length()) == 0


def test_a_transformers_cache_that_holds_states_continues_a_generation():
    model = model_for(tiny())
    prompt, _ = _prompt(batch=1)
    whole = model.generate(prompt, max_new_tokens=9, do_sample=False, pad_token_id=0)
    first = _generate(model, prompt, torch.ones_like(prompt), cache_implementation="static")
    used = first.past_key_values
    if not _counts_tokens(used):  # older transformers: the new part of the input is unknown, so a named error
        with pytest.raises(ValueError, match="do not count the tokens they absorbed"):
            model.generate(first.sequences, cache=used, max_new_tokens=3, do_sample=False, pad_token_id=0)
        return
    rest = model.generate(first.sequences, cache=used, max_new_tokens=3, do_sample=False, pad_token_id=0)
    assert torch.equal(rest, whole)  # nothing re-fed: the continuation decodes what one generation decodes
    assert int(used.get_seq_length()) == whole.shape[1] - 1


def test_a_cache_of_another_layout_is_rejected_by_name():
    model = model_for(tiny())
    ids = torch.randint(1, 50, (1, 4))
    other = tiny(H_cycles=1)  # fewer invocations: fewer slots
    with pytest.raises(ValueError, match=r"cache has \d+ layers, this model needs"):
        model(ids, cache=StaticCache(config=other, max_cache_len=4))
    attention = Cache(layers=[DynamicLayer() for _ in range(model.config.num_hidden_layers)])
    with pytest.raises(ValueError, match="linear-attention cache layers"):
        model(ids, cache=attention)


@pytest.mark.slow  # an inductor build of the decoding graph: 22 s measured (2 cores, empty inductor cache)
def test_inductor_compiled_decoding_with_a_static_cache_generates_what_eager_generates():
    model = model_for(tiny())
    prompt, mask = _prompt()
    eager = _generate(model, prompt, mask)
    torch._dynamo.reset()
    config = CompileConfig(fullgraph=True, dynamic=False)  # inductor, as generate compiles on a GPU
    config._compile_all_devices = True
    try:
        compiled = _generate(model, prompt, mask, cache_implementation="static", compile_config=config)
    finally:
        torch._dynamo.reset()
    assert hasattr(model, "_compiled_call")
    _assert_same_generation(compiled, eager)
