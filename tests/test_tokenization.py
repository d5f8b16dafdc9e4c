"""hier_mamba.tokenization: the byte tokenizer's ids, decoding, padding, and its save/load through transformers."""

import json
import random
import subprocess
import sys

import pytest
import torch
from transformers import AutoTokenizer, pipeline

from hier_mamba.tokenization import BYTE_PAD_ID, BYTE_VOCAB_SIZE, byte_tokenizer, load_tokenizer
from helpers import model_for, tiny

TEXTS = ["", "plain ASCII", "héllo wörld 😀", "Ā is U+0100, the stand-in of byte 0", "nul \x00 byte",
         "tab\tnew\nline"]


@pytest.mark.parametrize("text", TEXTS)
def test_ids_are_the_utf8_bytes_and_decode_back(text):
    tokenizer = byte_tokenizer()
    ids = tokenizer(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))  # no BOS/EOS, and "Ā" in the text is never the pad token
    assert tokenizer.decode(ids) == text


def test_invalid_utf8_decodes_as_python_replace():
    tokenizer, rng = byte_tokenizer(), random.Random(0)
    for _ in range(100):
        data = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 12)))
        assert tokenizer.decode(list(data)) == data.decode("utf-8", errors="replace"), data


def test_vocabulary_and_left_padding_with_byte_zero():
    tokenizer = byte_tokenizer()
    assert len(tokenizer) == BYTE_VOCAB_SIZE and tokenizer.pad_token_id == BYTE_PAD_ID
    assert tokenizer.bos_token_id is None and tokenizer.eos_token_id is None
    batch = tokenizer(["ab", "abcd"], padding=True, return_tensors="pt")
    assert batch["input_ids"].tolist() == [[0, 0, 97, 98], [97, 98, 99, 100]]
    assert batch["attention_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    assert tokenizer.decode([0, 104, 105], skip_special_tokens=True) == "hi"


def test_saved_tokenizer_loads_without_hier_mamba(tmp_path):
    byte_tokenizer().save_pretrained(tmp_path)
    assert "hier_mamba" not in (tmp_path / "tokenizer_config.json").read_text()
    code = ("import sys; from transformers import AutoTokenizer; t = AutoTokenizer.from_pretrained(sys.argv[1]); "
            "assert 'hier_mamba' not in sys.modules; print(t('Āa\\x00')['input_ids'], t.pad_token_id, len(t))")
    output = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert output.stdout.split() == ["[196,", "128,", "97,", "0]", "0", "256"]


def test_pipeline_and_auto_tokenizer_on_a_saved_model(tmp_path):
    model = model_for(tiny(vocab_size=BYTE_VOCAB_SIZE))
    model.save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path)
    assert tokenizer("Hi")["input_ids"] == [72, 105]
    prompt = torch.tensor([list(b"Hi")])
    expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, do_sample=False)
    generator = pipeline("text-generation", model=str(tmp_path))
    result = generator("Hi", max_new_tokens=6, do_sample=False)
    assert result[0]["generated_text"] == tokenizer.decode(expected[0])
    batched = generator(["Hi", "Hello"], max_new_tokens=6, do_sample=False, batch_size=2)  # left padding
    assert batched[0][0]["generated_text"] == result[0]["generated_text"]


def test_load_tokenizer_reads_a_local_directory_or_names_the_bad_path(tmp_path):
    assert len(load_tokenizer(None)) == BYTE_VOCAB_SIZE
    byte_tokenizer().save_pretrained(tmp_path / "tok")
    assert json.loads((tmp_path / "tok" / "tokenizer_config.json").read_text())["split_special_tokens"] is True
    assert load_tokenizer(tmp_path / "tok")("Ā")["input_ids"] == [196, 128]
    with pytest.raises(ValueError, match="'/no/such/dir' is not a local directory"):
        load_tokenizer("/no/such/dir")
