"""The byte-level tokenizer of hier_mamba's language models: token id = byte value.

The model's vocabulary is the 256 byte values of UTF-8 text (``HierMambaConfig.vocab_size = 256``),
with id 0 (the NUL byte) doubling as the padding id (``pad_token_id = 0``); there is no BOS, EOS or
unknown token. This module builds that mapping as a `tokenizers` library tokenizer wrapped in
transformers' fast tokenizer, so ``save_pretrained`` writes a ``tokenizer.json`` that
``AutoTokenizer.from_pretrained`` and ``pipeline("text-generation", model=path)`` load without
importing hier_mamba (and that any `tokenizers` binding can read).

How the bytes become ids: the GPT-2 ``ByteLevel`` pre-tokenizer maps each byte to a printable
character (byte 0 -> ``"Ā"``, byte 32 -> ``"Ġ"``, ``"a"`` -> ``"a"``), and a BPE model with no merges
maps each of those 256 characters to its byte value. The ``ByteLevel`` decoder maps back and
replaces invalid UTF-8 (a sample cut inside a character) with U+FFFD.

The padding token is the character of byte 0, ``"Ā"``. ``split_special_tokens=True`` makes the
tokenizer encode a literal ``"Ā"`` (U+0100) in the text as its two UTF-8 bytes, never as padding.
"""

from __future__ import annotations

from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast
from transformers.convert_slow_tokenizer import bytes_to_unicode

BYTE_VOCAB_SIZE = 256  # one token per byte value
BYTE_PAD_ID = 0  # the NUL byte, HierMambaConfig's default pad_token_id


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """A fresh byte-level fast tokenizer: ``tokenizer(text).input_ids == list(text.encode("utf-8"))``.

    Padding is on the left: a recurrent model that generates continues from the last real token.
    """
    # 1. The 256 printable stand-ins of the bytes, id = byte value.
    byte_to_char = bytes_to_unicode()
    vocab = {byte_to_char[byte]: byte for byte in range(BYTE_VOCAB_SIZE)}
    # 2. Bytes -> stand-ins -> ids (no merges), and back.
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # 3. The transformers wrapper: padding with byte 0, never matched inside the text.
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token=byte_to_char[BYTE_PAD_ID],
                                   split_special_tokens=True, padding_side="left")


def load_tokenizer(path: str | Path | None = None) -> PreTrainedTokenizerBase:
    """The byte tokenizer (``path=None``) or the transformers tokenizer saved in the local directory ``path``."""
    if path is None:
        return byte_tokenizer()
    directory = Path(path).expanduser()
    if not directory.is_dir():
        raise ValueError(f"tokenizer {str(path)!r} is not a local directory (one written by save_pretrained)")
    return AutoTokenizer.from_pretrained(directory)
