"""hier_mamba.tasks.run (scripts/train.py's library): a run saves the tokenizer with every checkpoint and the
final model, which then load through AutoTokenizer and pipeline("text-generation"); a config may name its own
tokenizer; --resume continues from the last checkpoint; init_from starts from a saved (e.g. converted) model."""

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, trainers
import torch
from transformers import (AutoModelForCausalLM, AutoTokenizer, Mamba2Config, Mamba2ForCausalLM, PreTrainedTokenizerFast,
                          pipeline)

from hier_mamba.convert import convert_mamba_checkpoint
from hier_mamba.tasks import lm
from hier_mamba.tasks.run import build_model, last_checkpoint, load_run_config, train_from_config

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py

MODEL = dict(hidden_size=32, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1, state_size=8, head_dim=16,
             chunk_size=8)
TRAINING = dict(max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=8, learning_rate=1e-3,
                save_strategy="steps", save_steps=2, eval_strategy="no", logging_steps=1, disable_tqdm=True,
                use_cpu=True)
TEXT = "the quick brown fox jumps over the lazy dog\n" * 40


def run_config(tmp_path, **data) -> dict:
    (tmp_path / "corpus").mkdir(exist_ok=True)
    (tmp_path / "corpus" / "fox.txt").write_text(TEXT)
    data = {"text_files": str(tmp_path / "corpus"), "block_size": 32, "eval_fraction": 0.2, "max_new_tokens": 8,
            "demo_eval_blocks": 2, **data}
    return {"task": "lm", "seed": 0, "model": dict(MODEL), "data": data, "training": dict(TRAINING)}


def test_byte_tokenizer_travels_with_checkpoints_and_the_final_model(tmp_path):
    run = train_from_config(run_config(tmp_path), tmp_path / "out")
    assert run.global_step == 2 and run.reloaded.config.vocab_size == 256
    for folder in (tmp_path / "out" / "checkpoint-2", run.final_dir):
        tokenizer = AutoTokenizer.from_pretrained(folder)
        assert tokenizer("fox Ā")["input_ids"] == list("fox Ā".encode()) and tokenizer.pad_token_id == 0
    model = AutoModelForCausalLM.from_pretrained(run.final_dir)
    ids = tokenizer("the quick", return_tensors="pt")["input_ids"]
    expected = model.generate(ids, attention_mask=ids.new_ones(ids.shape), max_new_tokens=5, do_sample=False)
    generated = pipeline("text-generation", model=str(run.final_dir))("the quick", max_new_tokens=5, do_sample=False)
    assert generated[0]["generated_text"] == tokenizer.decode(expected[0])
    assert "bits/byte" in lm.demo(run.reloaded, run.eval_dataset, run_config(tmp_path)["data"])


def test_a_run_config_names_its_own_tokenizer(tmp_path):
    # 1. A word-level tokenizer trained on the corpus, saved as any transformers tokenizer folder.
    backend = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.train_from_iterator([TEXT], trainers.WordLevelTrainer(special_tokens=["[PAD]", "[UNK]", "[EOS]"]))
    words = PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    words.save_pretrained(tmp_path / "words")
    # 2. The run sizes the model to it and saves it with the model.
    config = run_config(tmp_path, tokenizer=str(tmp_path / "words"), block_size=8, prompt="the quick")
    run = train_from_config(config, tmp_path / "out")
    assert run.reloaded.config.vocab_size == len(words) == 11  # 8 words + 3 specials
    assert (run.reloaded.config.pad_token_id, run.reloaded.config.eos_token_id) == (0, 2)
    saved = AutoTokenizer.from_pretrained(run.final_dir)
    assert saved.get_vocab() == words.get_vocab() and saved.eos_token == "[EOS]"
    text = pipeline("text-generation", model=str(run.final_dir))("the lazy", max_new_tokens=3, do_sample=False)
    assert text[0]["generated_text"].startswith("the lazy")
    demo = lm.demo(run.reloaded, run.eval_dataset, config["data"], run.tokenizer)
    assert "bits/token" in demo


def test_resume_continues_from_the_last_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint-\\* folder in"):
        last_checkpoint(tmp_path / "out")
    config = run_config(tmp_path)
    train_from_config(config, tmp_path / "out")
    resumed = train_from_config(config, tmp_path / "out", max_steps=3, resume=True)
    assert resumed.global_step == 3


def test_run_config_errors_name_the_bad_value(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: poetry\n")
    with pytest.raises(ValueError, match="task must be one of \\['lm', 'maze', 'sudoku'\\], got 'poetry'"):
        load_run_config(path)
    path.write_text("task: lm\ndata: [1, 2]\n")
    with pytest.raises(ValueError, match="data must be a mapping"):
        load_run_config(path)
    path.write_text(f"task: lm\ninit_from: {tmp_path / 'nowhere'}\n")
    with pytest.raises(ValueError, match="init_from=.*nowhere.* is not a save_pretrained folder"):
        load_run_config(path)


def test_a_run_starts_from_a_converted_mamba_with_raised_cycles(tmp_path):
    # 1. A tiny random transformers Mamba2 over bytes, converted (2 layers: 1 in L, 1 in H).
    torch.manual_seed(0)
    source = Mamba2ForCausalLM(Mamba2Config(vocab_size=256, hidden_size=32, state_size=8, num_hidden_layers=2,
                                            head_dim=16, num_heads=4, n_groups=1, chunk_size=8, eos_token_id=None))
    source.save_pretrained(tmp_path / "mamba2")
    convert_mamba_checkpoint(tmp_path / "mamba2", tmp_path / "hier", L_layers=1)
    # 2. init_from loads those weights; the model section raises the cycles.
    config = run_config(tmp_path)
    config.update(init_from=str(tmp_path / "hier"), model={"H_cycles": 2, "L_cycles": 2})
    model = build_model(config, lm.load_tokenizer(config["data"]))
    assert (model.config.H_cycles, model.config.L_cycles, model.config.L_layers) == (2, 2, 1)
    assert torch.equal(model.lm_head.weight, source.lm_head.weight)
    # 3. It trains and the final model keeps the raised cycles.
    run = train_from_config(config, tmp_path / "out")
    assert run.global_step == 2 and run.reloaded.config.H_cycles == 2
    assert not torch.equal(run.reloaded.lm_head.weight, source.lm_head.weight)
