"""Byte-level language modelling on an offline English corpus, as a task for scripts/train.py.

The corpus is the text of CPython's own help topics (``pydoc_data.topics``, ~460 KB of English
prose and code about the Python language), so nothing is downloaded. Tokens are the 256 byte
values; the model shifts ``labels`` itself, so ``labels = input_ids``. The last ``eval_fraction``
of the bytes is held out for evaluation.

data config keys (all optional):
    block_size     bytes per training example (default 256)
    stride         offset between consecutive training blocks (default block_size: no overlap)
    eval_fraction  held-out tail of the corpus (default 0.05)
    prompt         text the demo continues (default 'The "for" statement')
    top_k          demo sampling: keep the k most likely bytes (default 20)
    temperature    demo sampling temperature (default 0.8)
    max_new_tokens demo length in bytes (default 300)
    demo_eval_blocks  held-out blocks the demo scores in bits per byte (default 64)
"""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset
from transformers import PreTrainedModel

from hier_mamba import HierMambaConfig, HierMambaForCausalLM

VOCAB_SIZE = 256  # one token per byte value


def corpus_bytes() -> bytes:
    """The concatenated help topics of the running CPython, UTF-8 encoded."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[name] for name in sorted(topics)).encode("utf-8")


def encode(text: str) -> torch.Tensor:
    """Text -> (l,) byte ids."""
    return torch.tensor(list(text.encode("utf-8")), dtype=torch.long)


def decode(ids) -> str:
    """Byte ids -> text; invalid UTF-8 (a sample cut inside a character) becomes U+FFFD."""
    return bytes(int(i) for i in ids).decode("utf-8", errors="replace")


class ByteBlocks(Dataset):
    """Fixed-length windows of a byte string: example i covers bytes [i * stride, i * stride + block_size)."""

    def __init__(self, data: bytes, block_size: int, stride: int):
        if len(data) < block_size:
            raise ValueError(f"{len(data)} bytes cannot fill one block of {block_size}")
        self.data = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        self.block_size = block_size
        self.stride = stride
        self.count = (len(data) - block_size) // stride + 1

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        if not 0 <= index < self.count:
            raise IndexError(index)
        start = index * self.stride
        ids = self.data[start:start + self.block_size].long()  # (block_size,)
        return {"input_ids": ids, "labels": ids}


def build_model(model_cfg: dict) -> PreTrainedModel:
    """A freshly initialised HierMambaForCausalLM over the 256 byte values."""
    return HierMambaForCausalLM(HierMambaConfig(**{"vocab_size": VOCAB_SIZE, **model_cfg}))


def build_datasets(data_cfg: dict, seed: int) -> tuple[ByteBlocks, ByteBlocks]:
    """(train, eval) blocks: the corpus head for training, its last ``eval_fraction`` for evaluation.

    The split is a fixed cut of the text, so ``seed`` (shuffling happens in the Trainer) is unused.
    """
    block_size = int(data_cfg.get("block_size", 256))
    stride = int(data_cfg.get("stride", block_size))
    eval_fraction = float(data_cfg.get("eval_fraction", 0.05))
    if not 0 < eval_fraction < 1:
        raise ValueError(f"eval_fraction must be in (0, 1), got {eval_fraction}")
    data = corpus_bytes()
    cut = int(len(data) * (1 - eval_fraction))
    return ByteBlocks(data[:cut], block_size, stride), ByteBlocks(data[cut:], block_size, block_size)


def collate(batch: list[dict]) -> dict[str, torch.Tensor]:
    """Stack equal-length examples into (b, block_size) tensors."""
    return {key: torch.stack([example[key] for example in batch]) for key in batch[0]}


compute_metrics = None  # the Trainer's eval_loss (nats per byte) is the metric; demo() reports bits per byte


@torch.no_grad()
def bits_per_byte(model: PreTrainedModel, dataset: Dataset, max_blocks: int, batch_size: int = 16) -> float:
    """Mean next-byte cross-entropy over the first ``max_blocks`` blocks of ``dataset``, in bits."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    indices = list(range(min(max_blocks, len(dataset))))
    for start in range(0, len(indices), batch_size):
        batch = collate([dataset[i] for i in indices[start:start + batch_size]])
        batch = {key: value.to(device) for key, value in batch.items()}
        predicted = batch["labels"].shape[0] * (batch["labels"].shape[1] - 1)  # the first byte has no target
        total += model(**batch, use_cache=False).loss.item() * predicted
        count += predicted
    return total / count / math.log(2)


def sample(model: PreTrainedModel, prompt: str, max_new_tokens: int = 300, greedy: bool = False,
           temperature: float = 0.8, top_k: int = 20) -> str:
    """Prompt + continuation, decoded; generation runs on the model's O(1) recurrent cache."""
    device = next(model.parameters()).device
    ids = encode(prompt).unsqueeze(0).to(device)  # (1, l)
    options = {"do_sample": False} if greedy else {"do_sample": True, "temperature": temperature, "top_k": top_k}
    output = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens,
                            pad_token_id=model.config.pad_token_id, **options)
    return decode(output[0].tolist())


def demo(model: PreTrainedModel, eval_dataset: Dataset, data_cfg: dict) -> str:
    """Held-out bits per byte and one sampled continuation of the configured prompt."""
    model.eval()
    bpb = bits_per_byte(model, eval_dataset, int(data_cfg.get("demo_eval_blocks", 64)))
    text = sample(model, data_cfg.get("prompt", 'The "for" statement'),
                  max_new_tokens=int(data_cfg.get("max_new_tokens", 300)),
                  temperature=float(data_cfg.get("temperature", 0.8)), top_k=int(data_cfg.get("top_k", 20)))
    rule = "-" * 72
    return f"held-out loss: {bpb:.3f} bits/byte ({bpb * math.log(2):.3f} nats/byte)\nsample:\n{rule}\n{text}\n{rule}"
