"""compile_decoding: the torch.compile'd one-token step decodes exactly what the eager step decodes.

The tests trace with dynamo and run the captured graphs eagerly (backend="eager": seconds, not the minute an inductor
build of the C++ kernels takes on CPU); benchmarks/bench.py decode checks the inductor build against eager before timing.
"""

import pytest
import torch

from helpers import model_for, tiny  # tests/helpers.py


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_compiled_steps_equal_eager_steps(mixer):
    model = model_for(tiny(mixer))
    prompt = torch.randint(1, 50, (2, 6))
    eager = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                           output_scores=True)
    model.compile_decoding(backend="eager")
    compiled = model.generate(prompt, max_new_tokens=6, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                              output_scores=True)
    assert torch.equal(compiled.sequences, eager.sequences)
    for ours, reference in zip(compiled.scores, eager.scores):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    assert model.model.reasoner._compiled_step is not None
    model.compile_decoding(False)
    assert model.model.reasoner._compiled_step is None


def test_compiled_step_runs_the_compiled_function_and_keeps_hidden_states():
    model = model_for(tiny())
    ids = torch.randint(1, 50, (1, 9))
    with torch.no_grad():
        full = model(ids, output_hidden_states=True)
        cache = model(ids[:, :8], use_cache=True).cache
    calls = []

    def counting_backend(graph_module, example_inputs):
        calls.append(len(example_inputs))
        return graph_module.forward

    model.compile_decoding(backend=counting_backend)
    with torch.no_grad():
        step = model(ids[:, 8:], cache=cache, output_hidden_states=True)
    assert calls, "the cached one-token step did not go through torch.compile"
    torch.testing.assert_close(step.logits, full.logits[:, 8:], rtol=1e-4, atol=1e-5)
    assert len(step.hidden_states) == len(full.hidden_states)
    for ours, reference in zip(step.hidden_states, full.hidden_states):
        torch.testing.assert_close(ours, reference[:, 8:], rtol=1e-4, atol=1e-5)


def _row_major(t: torch.Tensor) -> bool:
    return t.stride() == torch.empty(t.shape).stride()


def test_cached_states_are_row_major_after_prefill_and_continuation():
    """A compiled step specializes on strides: prefill states laid out like the step's keep it to one compilation."""
    model = model_for(tiny())
    ids = torch.randint(1, 50, (1, 13))
    with torch.no_grad():
        cache = model(ids[:, :7], use_cache=True).cache
        assert all(_row_major(t) for layer in cache.layers for t in layer.state)
        model(ids[:, 7:], cache=cache)  # a continued prefill of 6 tokens
    assert all(_row_major(t) for layer in cache.layers for t in layer.state)


def test_a_deep_copy_of_a_compiled_model_decodes_with_its_own_weights():
    import copy

    model = model_for(tiny()).compile_decoding(backend="eager")
    clone = copy.deepcopy(model)
    with torch.no_grad():  # the copy's reasoner (what the compiled step runs) now differs from the original's
        for name, parameter in clone.model.reasoner.named_parameters():
            if name.endswith("out_proj.weight"):
                parameter.mul_(5)
    prompt = torch.randint(1, 50, (2, 6))
    settings = dict(max_new_tokens=5, do_sample=False, pad_token_id=0, return_dict_in_generate=True,
                    output_scores=True)
    compiled = clone.generate(prompt, **settings)
    eager = clone.compile_decoding(False).generate(prompt, **settings)
    assert torch.equal(compiled.sequences, eager.sequences)
    for ours, reference in zip(compiled.scores, eager.scores):
        torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-5)
    original = model.generate(prompt, **settings)  # still compiled, on its own weights
    assert not torch.allclose(original.scores[-1], compiled.scores[-1], rtol=1e-3, atol=1e-3)
