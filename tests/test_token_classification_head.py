"""The puzzle head under AutoModelForTokenClassification: its classes are the vocabulary, nothing is tied."""

import pytest
import torch
from transformers import AutoModelForTokenClassification

from hier_mamba import HierMambaConfig, HierMambaForTokenClassification


def puzzle_config(**overrides) -> HierMambaConfig:
    values = dict(vocab_size=11, hidden_size=32, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1, state_size=8,
                  head_dim=16, chunk_size=8, bidirectional=True, halt_max_steps=2)
    values.update(overrides)
    return HierMambaConfig(**values)


def test_labels_are_the_vocabulary_and_nothing_is_tied(tmp_path):
    torch.manual_seed(0)
    model = AutoModelForTokenClassification.from_config(puzzle_config())
    assert type(model) is HierMambaForTokenClassification
    assert model.config.num_labels == 11 and model.config.id2label[10] == "10"
    assert model.config.tie_word_embeddings is False
    assert model.lm_head.weight.data_ptr() != model.model.embeddings.weight.data_ptr()
    with torch.no_grad():
        logits = model.eval()(torch.randint(1, 11, (2, 9)), num_segments=1).logits
    assert logits.shape[-1] == model.config.num_labels
    model.save_pretrained(tmp_path)
    loaded = AutoModelForTokenClassification.from_pretrained(tmp_path)
    assert loaded.config.num_labels == 11 and loaded.config.tie_word_embeddings is False


def test_a_num_labels_other_than_the_vocabulary_raises():
    with pytest.raises(ValueError, match="num_labels must equal vocab_size=11"):
        HierMambaForTokenClassification(puzzle_config(num_labels=3))


def test_positional_arguments_are_ids_then_attention_mask_as_in_transformers():
    torch.manual_seed(0)
    model = HierMambaForTokenClassification(puzzle_config()).eval()
    ids = torch.randint(1, 11, (2, 9))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    with torch.no_grad():
        positional = model(ids, mask).logits
        keyword = model(input_ids=ids, attention_mask=mask).logits
        unmasked = model(ids).logits
    torch.testing.assert_close(positional, keyword)
    assert not torch.allclose(positional[0], unmasked[0])  # the mask was read as a mask, not as labels


def test_return_dict_false_gives_a_tuple_and_unknown_keywords_raise():
    torch.manual_seed(0)
    model = HierMambaForTokenClassification(puzzle_config()).eval()
    ids = torch.randint(1, 11, (2, 9))
    with torch.no_grad():
        output = model(ids, labels=ids, num_segments=1)
        as_tuple = model(ids, labels=ids, num_segments=1, return_dict=False, position_ids=None)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], output.loss)
    torch.testing.assert_close(as_tuple[1], output.logits)
    with pytest.raises(TypeError, match="unexpected keyword argument 'segments'"):
        model(ids, segments=2)


def test_the_callers_config_is_not_changed():
    config = puzzle_config(tie_word_embeddings=True)
    before = config.to_dict()
    model = HierMambaForTokenClassification(config)
    assert config.to_dict() == before and config.num_labels == 2 and config.tie_word_embeddings is True
    assert model.config.num_labels == 11 and model.config.tie_word_embeddings is False
