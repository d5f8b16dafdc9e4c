"""transformers' own common tests (ModelTesterMixin, GenerationTesterMixin, ConfigTester) on HierMambaModel and
HierMambaForCausalLM, with a tester laid out like transformers' tests/models/mamba2 test file.

The mixins are not part of this repository: ``python tests/fetch_transformers_tests.py`` downloads them
(the transformers sdist, plus the repository files it lacks with ``--repository``) into build/transformers-tests.
Without that folder (or with HIER_MAMBA_TRANSFORMERS_TESTS pointing nowhere) this module skips. Skips below are
the ones transformers' Mamba2 test file makes, or name their reason. Run next to transformers' own Mamba2 test
file (same commit), the one test this model skips but Mamba2 passes is test_bc_cache_name_forward (it only runs
when the returned cache is exactly a DynamicCache, for the renamed cache argument; this model returns its
HierMambaCache, a Cache of linear-attention slots). The static-cache and fullgraph-compiled generate tests run
(``_can_compile_fullgraph = True``: generation with cache_implementation="static" keeps the states in transformers'
StaticCache, written in place; hier_mamba/cache_access.py); the compiled ones build inductor graphs: 9-18 s each
on this project's 2-core CPU with an empty inductor cache, about a second with a warm one.
"""

from __future__ import annotations

import os
import unittest
from unittest import mock
from pathlib import Path

import pytest
import torch
import transformers
from transformers.cache_utils import LinearAttentionCacheLayerMixin, StaticCache

from fetch_transformers_tests import import_downloaded  # tests/fetch_transformers_tests.py
from hier_mamba import HierMambaConfig, HierMambaForCausalLM, HierMambaModel
from hier_mamba.cache import HierMambaCache

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(os.environ.get("HIER_MAMBA_TRANSFORMERS_TESTS",
                            ROOT / "build" / "transformers-tests" / f"transformers-{transformers.__version__}" / "tests"))
if not (TESTS / "test_modeling_common.py").exists():
    pytest.skip(f"transformers' common tests not downloaded to {TESTS} (python tests/fetch_transformers_tests.py)",
                allow_module_level=True)


def _import(name: str):
    """Import a module of the downloaded tests (see fetch_transformers_tests.import_downloaded)."""
    return import_downloaded(TESTS, name)


try:
    common = _import("test_modeling_common")
    generation = _import("generation.test_utils")
    configuration = _import("test_configuration_common")
except Exception as error:  # a downloaded file importing something this environment lacks
    pytest.skip(f"transformers' common tests do not import: {type(error).__name__}: {error}", allow_module_level=True)

CONFIG_KWARGS_AVAILABLE = not getattr(_import("utils.test_configuration_utils"), "HIER_MAMBA_PLACEHOLDER", False)


class HierMambaModelTester:
    """Tiny configs and inputs, as transformers' Mamba2ModelTester builds them."""

    def __init__(self, parent, batch_size=4, seq_length=7, vocab_size=99, hidden_size=32, head_dim=16,
                 state_size=8, chunk_size=4, is_training=True, use_labels=True, mixer="mamba2"):
        self.parent = parent
        self.batch_size, self.seq_length, self.vocab_size = batch_size, seq_length, vocab_size
        self.hidden_size, self.head_dim, self.state_size, self.chunk_size = hidden_size, head_dim, state_size, chunk_size
        self.is_training, self.use_labels, self.mixer = is_training, use_labels, mixer
        self.pad_token_id = self.bos_token_id = self.eos_token_id = vocab_size - 1
        self.num_hidden_layers = self.get_config().num_hidden_layers

    def get_config(self) -> HierMambaConfig:
        return HierMambaConfig(
            vocab_size=self.vocab_size, hidden_size=self.hidden_size, head_dim=self.head_dim, mixer=self.mixer,
            state_size=self.state_size, chunk_size=self.chunk_size, H_layers=1, L_layers=1, H_cycles=1,
            L_cycles=1, use_cache=True, pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id,
            eos_token_id=self.eos_token_id, tie_word_embeddings=True,
        )

    def prepare_config_and_inputs(self):
        input_ids = common.ids_tensor([self.batch_size, self.seq_length], self.vocab_size)
        attention_mask = torch.ones(self.batch_size, self.seq_length, dtype=torch.long)
        attention_mask[0, :1] = 0  # only left padding is valid
        return self.get_config(), input_ids, attention_mask

    def prepare_config_and_inputs_for_common(self):
        config, input_ids, _ = self.prepare_config_and_inputs()
        return config, {"input_ids": input_ids}


class HierMambaModelTest(common.ModelTesterMixin, generation.GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (HierMambaModel, HierMambaForCausalLM)
    mixer = "mamba2"
    has_attentions = False  # no attention (as transformers' Mamba2 test)
    test_missing_keys = False
    test_torch_exportable = False  # the cycle loop is Python control flow over modules; not an export target yet
    # The test skips models whose source has no "# Copyright <year>" header of 2023 or later (transformers' old
    # models); this package's files have none, so it is asked to run (it does for transformers' Mamba2).
    test_can_init_all_missing_weights_before_2023 = True

    def setUp(self):
        # What transformers' auto mappings would hold if the model lived there: the tests read them to give the
        # causal LM labels and to leave the base model (no loss) out of the training tests.
        for mapping, name in ((common.MODEL_MAPPING_NAMES, "HierMambaModel"),
                              (common.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, "HierMambaForCausalLM")):
            patcher = mock.patch.dict(mapping, {"hier_mamba": name})
            patcher.start()
            self.addCleanup(patcher.stop)
        self.model_tester = HierMambaModelTester(self, mixer=self.mixer)
        # hidden_size=37 (transformers' usual odd width) needs a head_dim dividing expand * 37 = 74
        self.config_tester = configuration.ConfigTester(
            self, config_class=HierMambaConfig, hidden_size=37, head_dim=37,
            common_properties=["hidden_size", "num_hidden_layers"])

    def test_config(self):
        if not CONFIG_KWARGS_AVAILABLE:
            self.skipTest("tests/utils/test_configuration_utils.py not downloaded (config_common_kwargs)")
        self.config_tester.run_common_tests()

    @unittest.skip(reason="A large model would be necessary (and costly) for that (as transformers' Mamba2 test)")
    def test_multi_gpu_data_parallel_forward(self):
        pass

    # HierMambaCache's slots are transformers linear-attention cache layers of this package's class (MixerStateLayer):
    # the mixin's cache checks test ``type(layer) is LinearAttentionLayer`` and read any other class as an attention
    # layer (keys/values). The checks below are the mixin's linear-attention checks for that class; the state shapes
    # are overridden as transformers' Mamba2 test overrides them.
    def _get_conv_state_shape(self, batch_size: int, config):
        """(b, conv channels, conv_kernel - 1): the mixers keep the last w - 1 conv inputs."""
        groups = 2 * config.n_groups * config.state_size if config.mixer == "mamba2" else 0  # B and C
        channels = config.intermediate_size + groups
        return (batch_size, channels, config.conv_kernel - 1)

    def _get_recurrent_state_shape(self, batch_size: int, config):
        if config.mixer == "mamba2":
            return (batch_size, config.num_heads, config.head_dim, config.state_size)
        return (batch_size, config.intermediate_size, config.state_size)

    def _check_past_key_values_for_generate(self, batch_size, past_key_values, seq_length, config):
        # generate's default HierMambaCache, or the StaticCache cache_implementation="static" builds
        self.assertIsInstance(past_key_values, (HierMambaCache, StaticCache))
        config = config.get_text_config(decoder=True)
        self.assertEqual(config.num_hidden_layers, len(past_key_values))
        for layer in past_key_values.layers:
            self.assertIsInstance(layer, LinearAttentionCacheLayerMixin)
            self.assertEqual(layer.number_of_states, 1)
            self.assertEqual(layer.conv_states[0].shape, self._get_conv_state_shape(batch_size, config))
            self.assertEqual(layer.recurrent_states[0].shape, self._get_recurrent_state_shape(batch_size, config))

    def _check_caches_are_equal(self, cache1, cache2):
        self.assertIsInstance(cache1, HierMambaCache)
        self.assertIsInstance(cache2, HierMambaCache)
        self.assertEqual(len(cache1), len(cache2))
        for layer1, layer2 in zip(cache1.layers, cache2.layers):
            self.assertEqual(type(layer1), type(layer2))
            self.assertEqual(layer1.number_of_states, layer2.number_of_states)
            for i in range(layer1.number_of_states):
                torch.testing.assert_close(layer1.conv_states[i], layer2.conv_states[i])
                torch.testing.assert_close(layer1.recurrent_states[i], layer2.recurrent_states[i])


class HierMambaMamba1ModelTest(HierMambaModelTest):
    """The same tests with mamba1 mixers (another cache state shape, no dt_bias)."""

    mixer = "mamba1"
