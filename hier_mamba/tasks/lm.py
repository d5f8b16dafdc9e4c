"""Causal language modelling on local text: the ``lm`` task.

By default the corpus is the text of CPython's own help topics (``pydoc_data.topics``, ~460 KB of
English prose and code about the Python language) and the tokenizer is the byte-level one of
:mod:`hier_mamba.tokenization` (token id = byte value), so nothing is downloaded. The run config's
``data`` section can name your own text and tokenizer instead. The model shifts ``labels`` itself,
so ``labels = input_ids``. Unless a held-out text or split is named, the last ``eval_fraction`` of the
token stream is held out.

data config keys (all optional):
    tokenizer        a local transformers tokenizer directory (default: the byte tokenizer)
    text_files       a file, a directory or a glob pattern, or a list of them (default: the help topics)
    text_glob        which files of a directory are read (default "**/*.txt")
    eval_text_files  held-out text, as text_files (default: the tail of the training text)
    dataset          a `datasets` dataset instead of text_files: a save_to_disk folder, a name or path,
                     or load_dataset's arguments as a mapping (needs `pip install datasets`)
    dataset_split    the dataset's training split (default "train")
    eval_split       the dataset's held-out split (default: the tail of the training split)
    text_column      the dataset's text column (default "text")
    encoding         of the text files (default "utf-8")
    separator        text between documents (files, topics: "\n\n"; dataset rows: "\n")
    block_size       tokens per training example (default 256)
    stride           offset between consecutive training blocks (default block_size: no overlap)
    eval_fraction    held-out tail of the token stream when no held-out text is named (default 0.05)
    prompt           text the demo continues (default 'The "for" statement')
    top_k            demo sampling: keep the k most likely tokens (default 20)
    temperature      demo sampling temperature (default 0.8)
    max_new_tokens   demo length in tokens (default 300)
    demo_eval_blocks held-out blocks the demo scores (default 64)
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from ..configuration import HierMambaConfig
from ..modeling import HierMambaForCausalLM
from ..tokenization import byte_tokenizer
from ..tokenization import load_tokenizer as load_tokenizer_directory
from . import text

DATA_KEYS = {"tokenizer", "text_files", "text_glob", "eval_text_files", "dataset", "dataset_split", "eval_split",
             "text_column", "encoding", "separator", "block_size", "stride", "eval_fraction", "prompt", "top_k",
             "temperature", "max_new_tokens", "demo_eval_blocks"}


class TokenBlocks(Dataset):
    """Fixed-length windows of a token stream: example i covers ids [i * stride, i * stride + block_size).

    ids: (n,) integer tensor (any integer dtype; examples come out as int64).
    """

    def __init__(self, ids: torch.Tensor, block_size: int, stride: int):
        if block_size < 2 or stride < 1:
            raise ValueError(f"block_size must be >= 2 and stride >= 1, got block_size={block_size}, stride={stride}")
        if len(ids) < block_size:
            raise ValueError(f"{len(ids)} tokens cannot fill one block of {block_size}")
        self.ids = ids
        self.block_size = block_size
        self.stride = stride
        self.count = (len(ids) - block_size) // stride + 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        start = index * self.stride
        ids = self.ids[start:start + self.block_size].long()  # (block_size,)
        return {"input_ids": ids, "labels": ids}


def _check_keys(data_cfg: dict) -> None:
    unknown = sorted(set(data_cfg) - DATA_KEYS)
    if unknown:
        raise ValueError(f"unknown data keys for task 'lm': {unknown}; accepted: {sorted(DATA_KEYS)}")
    if "text_files" in data_cfg and "dataset" in data_cfg:
        raise ValueError("data.text_files and data.dataset both name a corpus: keep one")


def load_tokenizer(data_cfg: dict) -> PreTrainedTokenizerBase:
    """The tokenizer of ``data_cfg["tokenizer"]`` (a local directory), else the byte tokenizer."""
    return load_tokenizer_directory(data_cfg.get("tokenizer"))


def build_model(model_cfg: dict, tokenizer: PreTrainedTokenizerBase | None = None) -> PreTrainedModel:
    """A freshly initialised HierMambaForCausalLM sized to ``tokenizer`` (default: the byte tokenizer).

    vocab_size defaults to ``len(tokenizer)``, and pad/bos/eos ids to the tokenizer's; the model
    config's own values win.
    """
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    settings = dict(model_cfg)
    settings.setdefault("vocab_size", len(tokenizer))
    if settings["vocab_size"] < len(tokenizer):
        raise ValueError(f"model.vocab_size={settings['vocab_size']} is smaller than the tokenizer's "
                         f"{len(tokenizer)} tokens")
    for name in ("pad_token_id", "bos_token_id", "eos_token_id"):
        if getattr(tokenizer, name) is not None:
            settings.setdefault(name, getattr(tokenizer, name))
    return HierMambaForCausalLM(HierMambaConfig(**settings))


def _corpus(data_cfg: dict, held_out: bool) -> text.Corpus | None:
    """The training corpus (``held_out=False``) or the named held-out one (None when none is named)."""
    files_key, split_key = ("eval_text_files", "eval_split") if held_out else ("text_files", "dataset_split")
    if "dataset" in data_cfg and (split_key in data_cfg or not held_out):
        return text.dataset_corpus(data_cfg["dataset"], split=data_cfg.get(split_key, "train"),
                                   text_column=data_cfg.get("text_column", "text"),
                                   separator=data_cfg.get("separator", "\n"))
    if files_key in data_cfg:
        return text.file_corpus(data_cfg[files_key], pattern=data_cfg.get("text_glob", "**/*.txt"),
                                encoding=data_cfg.get("encoding", "utf-8"), separator=data_cfg.get("separator", "\n\n"))
    return None if held_out else text.pydoc_corpus()


def build_datasets(data_cfg: dict, seed: int, tokenizer: PreTrainedTokenizerBase | None = None
                   ) -> tuple[TokenBlocks, TokenBlocks]:
    """(train, eval) blocks of the configured corpus, tokenized by ``tokenizer`` (default: load_tokenizer).

    Without a named held-out text or split, the stream's last ``eval_fraction`` is the eval set. The
    split is a fixed cut, so ``seed`` (shuffling happens in the Trainer) is unused. Eval blocks do
    not overlap.
    """
    # 1. Settings and tokenizer.
    _check_keys(data_cfg)
    block_size = int(data_cfg.get("block_size", 256))
    stride = int(data_cfg.get("stride", block_size))
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(data_cfg)
    # 2. Token streams: a named held-out corpus, or the tail of the training stream.
    train_ids = text.encode_documents(_corpus(data_cfg, held_out=False), tokenizer, desc="tokenizing train text")
    held_out = _corpus(data_cfg, held_out=True)
    if held_out is not None:
        eval_ids = text.encode_documents(held_out, tokenizer, desc="tokenizing held-out text")
    else:
        eval_fraction = float(data_cfg.get("eval_fraction", 0.05))
        if not 0 < eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
        cut = int(len(train_ids) * (1 - eval_fraction))
        train_ids, eval_ids = train_ids[:cut], train_ids[cut:]
    for name, ids in (("training", train_ids), ("held-out", eval_ids)):
        if len(ids) < block_size:
            raise ValueError(f"the {name} text has {len(ids)} tokens, fewer than one block of {block_size}: "
                             "lower data.block_size, or give more text (or a larger eval_fraction)")
    return TokenBlocks(train_ids, block_size, stride), TokenBlocks(eval_ids, block_size, block_size)


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Stack equal-length examples into (b, block_size) tensors."""
    return {key: torch.stack([example[key] for example in batch]) for key in batch[0]}


compute_metrics = None  # the Trainer's eval_loss (nats per token) is the metric; demo() reports bits per token


@torch.no_grad()
def bits_per_token(model: PreTrainedModel, dataset: Dataset, max_blocks: int, batch_size: int = 16) -> float:
    """Mean next-token cross-entropy over the first ``max_blocks`` blocks of ``dataset``, in bits."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    indices = list(range(min(max_blocks, len(dataset))))
    for start in range(0, len(indices), batch_size):
        batch = collate([dataset[i] for i in indices[start:start + batch_size]])
        batch = {key: value.to(device) for key, value in batch.items()}
        predicted = batch["labels"].shape[0] * (batch["labels"].shape[1] - 1)  # the first token has no target
        total += model(**batch, use_cache=False).loss.item() * predicted
        count += predicted
    return total / count / math.log(2)


def sample(model: PreTrainedModel, prompt: str, tokenizer: PreTrainedTokenizerBase | None = None,
           max_new_tokens: int = 300, greedy: bool = False, temperature: float = 0.8, top_k: int = 20) -> str:
    """Prompt + continuation, decoded by ``tokenizer`` (default: the byte tokenizer).

    Generation runs on the model's O(1) recurrent cache. The prompt is encoded without special
    tokens, as the training text was.
    """
    tokenizer = tokenizer if tokenizer is not None else byte_tokenizer()
    device = next(model.parameters()).device
    ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"].to(device)  # (1, l)
    options = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": top_k}
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            pad_token_id=model.config.pad_token_id, **options)
    return tokenizer.decode(output[0].tolist())


def demo(model: PreTrainedModel, eval_dataset: Dataset, data_cfg: dict,
         tokenizer: PreTrainedTokenizerBase | None = None) -> str:
    """Held-out loss (bits per byte with the byte tokenizer, else per token) and one sampled continuation."""
    model.eval()
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(data_cfg)
    unit = "token" if data_cfg.get("tokenizer") else "byte"
    bits = bits_per_token(model, eval_dataset, int(data_cfg.get("demo_eval_blocks", 64)))
    continuation = sample(model, data_cfg.get("prompt", 'The "for" statement'), tokenizer,
                          max_new_tokens=int(data_cfg.get("max_new_tokens", 300)),
                          temperature=float(data_cfg.get("temperature", 0.8)), top_k=int(data_cfg.get("top_k", 20)))
    rule = "-" * 72
    return (f"held-out loss: {bits:.3f} bits/{unit} ({bits * math.log(2):.3f} nats/{unit})\n"
            f"sample:\n{rule}\n{continuation}\n{rule}")
