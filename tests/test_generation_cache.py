"""HierMambaCache as a transformers Cache: continuation, embeddings, beams, multi-token continuation."""

import pytest
import torch
from transformers import StaticCache
from transformers.cache_utils import Cache, DynamicCache

from hier_mamba import HierMambaConfig, HierMambaForCausalLM
from hier_mamba.cache import HierMambaCache


def tiny(mixer="mamba2") -> HierMambaConfig:
    return HierMambaConfig(vocab_size=50, hidden_size=32, H_layers=1, L_layers=2, H_cycles=2, L_cycles=1,
                           mixer=mixer, state_size=8, head_dim=16, chunk_size=4)


def model_for(mixer="mamba2") -> HierMambaForCausalLM:
    torch.manual_seed(0)
    return HierMambaForCausalLM(tiny(mixer)).eval()


def test_cache_is_a_linear_transformers_cache():
    model = model_for()
    with torch.no_grad():
        cache = model(torch.randint(0, 50, (2, 5)), use_cache=True).cache
    assert isinstance(cache, Cache)
    assert len(cache) == model.config.num_hidden_layers and all(cache.is_linear)
    assert not cache.is_compileable and not cache.is_croppable
    assert not isinstance(cache, DynamicCache)  # no attention key/value machinery: a plain Cache of state slots
    with pytest.raises(NotImplementedError, match="not attention keys/values"):
        cache.update(torch.zeros(2, 1, 5, 4), torch.zeros(2, 1, 5, 4), 0)
    assert cache.get_seq_length() == 5
    # one recurrent ("linear_attention") layer type per slot, as Mamba2Config declares; derived, not saved
    assert model.config.layer_types == ["linear_attention"] * len(cache)
    assert "layer_types" not in model.config.to_dict()


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_generate_continues_from_a_returned_cache(mixer):
    model = model_for(mixer)
    prompt = torch.randint(1, 50, (2, 6))
    whole = model.generate(prompt, max_new_tokens=8, do_sample=False, pad_token_id=0)
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0,
                           return_dict_in_generate=True)
    # The cache has absorbed the prompt and 3 of the 4 new tokens (the last one was sampled, not yet fed).
    assert first.cache.get_seq_length() == 6 + 3
    rest = model.generate(first.sequences, cache=first.cache, max_new_tokens=4, do_sample=False, pad_token_id=0)
    assert torch.equal(rest, whole)


def test_generate_from_inputs_embeds_with_a_cache():
    model = model_for()
    prompt = torch.randint(1, 50, (1, 7))
    embeds = model.get_input_embeddings()(prompt)
    reference = model.generate(prompt, max_new_tokens=5, do_sample=False, pad_token_id=0)[:, 7:]
    with torch.no_grad():
        cache = model(inputs_embeds=embeds[:, :4], use_cache=True).cache
    generated = model.generate(inputs_embeds=embeds, cache=cache, max_new_tokens=5, do_sample=False, pad_token_id=0)
    assert torch.equal(generated[:, -5:], reference)


def test_beam_search_reorders_the_cache_like_a_full_recompute():
    model = model_for()
    prompt = torch.randint(1, 50, (2, 5))
    beams = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0,
                           return_dict_in_generate=True, output_scores=True)
    uncached = model.generate(prompt, max_new_tokens=6, num_beams=3, do_sample=False, pad_token_id=0,
                              use_cache=False, return_dict_in_generate=True, output_scores=True)
    assert torch.equal(beams.sequences, uncached.sequences)
    torch.testing.assert_close(beams.sequences_scores, uncached.sequences_scores, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_multi_token_continuation_is_the_parallel_scan_and_honours_the_mask(mixer):
    model = model_for(mixer)
    ids = torch.randint(1, 50, (2, 19))
    with torch.no_grad():
        full = model(ids).logits
        cache = model(ids[:, :6], use_cache=True).cache
        calls = []
        hook = model.model.reasoner.L.register_forward_hook(lambda *args: calls.append(1))
        tail = model(ids[:, 6:], cache=cache).logits  # 13 tokens at once: whole-sequence scans, not 13 steps
        hook.remove()
    torch.testing.assert_close(tail, full[:, 6:], rtol=1e-4, atol=1e-4)
    assert len(calls) == model.config.H_cycles * model.config.L_cycles and cache.get_seq_length() == 19
    # A left-padded prompt continued with several tokens equals the unpadded row continued.
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids[:1, :6]], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 6 + 13)], dim=1).long()
    with torch.no_grad():
        cache = model(padded, attention_mask=mask[:, :9], use_cache=True).cache
        tail_padded = model(ids[:1, 6:], attention_mask=mask, cache=cache).logits
    torch.testing.assert_close(tail_padded, full[:1, 6:], rtol=1e-4, atol=1e-4)


def test_cache_storage_stays_constant_over_generation():
    model = model_for()
    out = model.generate(torch.randint(1, 50, (1, 4)), max_new_tokens=2, do_sample=False, pad_token_id=0,
                         return_dict_in_generate=True)
    before = out.cache.nbytes()
    longer = model.generate(out.sequences, cache=out.cache, max_new_tokens=20, do_sample=False, pad_token_id=0,
                            return_dict_in_generate=True)
    assert longer.cache.nbytes() == before


@pytest.mark.parametrize("options", [dict(do_sample=False), dict(do_sample=True, top_k=5),
                                     dict(num_beams=2, do_sample=False), dict(num_beams=2, do_sample=True)])
def test_generate_returns_hidden_states_per_step(options):
    """What transformers' GenerationTesterMixin checks: greedy, sample, beam and beam-sample with hidden states."""
    model = model_for()
    prompt = torch.randint(1, 50, (2, 5))
    torch.manual_seed(0)
    out = model.generate(prompt, max_new_tokens=3, pad_token_id=0, return_dict_in_generate=True,
                         output_hidden_states=True, output_scores=True, **options)
    rows = 2 * options.get("num_beams", 1)
    assert len(out.hidden_states) == 3
    for step, per_layer in enumerate(out.hidden_states):
        assert len(per_layer) == model.config.num_hidden_layers + 1
        length = 5 if step == 0 else 1
        assert all(h.shape == (rows, length, model.config.hidden_size) for h in per_layer)


@pytest.mark.parametrize("implementation", [None, "static"])
def test_chunked_prefill_generates_what_one_prefill_generates(implementation):
    model = model_for("mamba2")
    prompt = torch.randint(1, 50, (2, 37))  # chunks of 16, 16 and 5
    mask = torch.ones_like(prompt)
    mask[0, :3] = 0  # left padding: the mask is sliced with the chunks
    settings = dict(attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0,
                    return_dict_in_generate=True, output_scores=True, cache_implementation=implementation)
    whole = model.generate(prompt, **settings)
    chunked = model.generate(prompt, prefill_chunk_size=16, **settings)
    assert torch.equal(chunked.sequences, whole.sequences)
    for score, expected in zip(chunked.scores, whole.scores):
        torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-5)
    expected_type = HierMambaCache if implementation is None else StaticCache
    assert type(chunked.cache) is expected_type
    if implementation is None or hasattr(chunked.cache.layers[0], "cumulative_length_linear"):
        assert int(chunked.cache.get_seq_length()) == 37 + 4


def test_chunked_prefill_feeds_each_token_once():
    model = model_for("mamba1")
    prompt = torch.randint(1, 50, (1, 20))
    fed = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: fed.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]), with_kwargs=True)
    model.generate(prompt, max_new_tokens=3, do_sample=False, pad_token_id=0, prefill_chunk_size=8)
    assert fed == [8, 8, 4, 1, 1]  # the prompt in chunks, then one token per decoding step


def test_an_empty_cache_is_filled_by_the_first_forward():
    model = model_for("mamba2")
    ids = torch.randint(1, 50, (2, 9))
    empty = HierMambaCache(layers_per_invocation=[2, 1, 2, 1])  # H_cycles=2, L_cycles=1: L, H, L, H
    assert empty.get_seq_length() == 0 and len(empty) == model.config.num_hidden_layers
    with torch.no_grad():
        full = model(ids).logits
        first = model(ids[:, :4], cache=empty).logits
        rest = model(ids[:, 4:], cache=empty).logits
    torch.testing.assert_close(torch.cat([first, rest], dim=1), full, rtol=1e-4, atol=1e-5)
    assert empty.get_seq_length() == 9


@pytest.mark.parametrize("implementation", [None, "static"])
def test_a_continuation_may_pass_only_the_new_tokens_with_the_full_mask(implementation):
    """transformers' contract for a restart from a cache: input_ids are the whole sequence, or only its new tokens
    with an attention mask that covers the whole sequence; either way each token is fed once."""
    model = model_for("mamba2")
    prompt, extra = torch.randint(1, 50, (2, 6)), torch.randint(1, 50, (2, 3))
    first = model.generate(prompt, max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                           cache_implementation=implementation)
    if not hasattr(first.cache, "seen_tokens") and not hasattr(first.cache.layers[0], "cumulative_length_linear"):
        pytest.skip("this transformers release's linear-attention layers keep no token count")
    sequence = torch.cat([first.sequences, extra], dim=1)  # 6 + 4 generated + 3 of the user's
    whole = model.generate(sequence, max_new_tokens=4, do_sample=False, pad_token_id=0,
                           return_dict_in_generate=True, output_scores=True)
    fed = []
    model.model.register_forward_pre_hook(lambda module, args, kwargs: fed.append(
        (kwargs.get("input_ids") if kwargs.get("input_ids") is not None else args[0]).shape[1]), with_kwargs=True)
    seen = int(first.cache.get_seq_length())  # 9: the last generated token was not fed yet
    rest = model.generate(sequence[:, seen:], attention_mask=torch.ones_like(sequence), cache=first.cache,
                          max_new_tokens=4, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                          output_scores=True)
    assert fed == [13 - seen, 1, 1, 1]
    assert torch.equal(rest.sequences[:, -4:], whole.sequences[:, -4:])
    for score, expected in zip(rest.scores, whole.scores):
        torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-5)
