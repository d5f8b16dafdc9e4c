"""A few training steps of a tiny model on one process or many, for tests/test_distributed.py.

    torchrun --standalone --nproc_per_node 2 tests/distributed_train.py --out DIR [--global-batch 8]
        [--engines trainer fsdp2 deepspeed]

Each rank runs the engines on the same model and data and writes DIR/rank{R}.pt:
  "trainer":   ``HierMambaTrainer`` (accelerate; under torchrun on CPU that is DDP over gloo);
  "fsdp2":     torch's FSDP2, ``fully_shard`` on every ``_no_split_modules`` block and the root, with
               depth-wise gradient checkpointing, AdamW and gradient clipping, in a plain loop;
  "deepspeed": ``HierMambaTrainer`` with ``deepspeed=configs/deepspeed_zero2.json`` (ZeRO-2; needs the
               deepspeed package, whose CPU accelerator communicates over gloo).
Each result holds the training losses (averaged over ranks), the full (unsharded) state dict at the
end, and what wrapped the model. The test runs the same functions in one process as the reference.

The data set holds exactly one global batch of equal-length sequences, so every step sees all of it
whatever the sampler's order and however it is split across ranks: losses and updates are the same
for every world size up to summation order.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import distributed
from transformers import TrainingArguments

from hier_mamba import HierMambaConfig, HierMambaForCausalLM, HierMambaTrainer

DEEPSPEED_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "deepspeed_zero2.json"
SEQUENCE_LENGTH = 24
STEPS = 3
LEARNING_RATE = 1e-2


def fixed_batch(size: int, vocab_size: int, seed: int = 0) -> torch.Tensor:
    """``size`` random token sequences, (size, SEQUENCE_LENGTH) int64, the same from the same seed."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(1, vocab_size, (size, SEQUENCE_LENGTH), generator=generator)


class FixedBatch(torch.utils.data.Dataset):
    """The rows of :func:`fixed_batch` as causal-LM examples (labels = input_ids)."""

    def __init__(self, ids: torch.Tensor):
        self.ids = ids  # (size, l)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {"input_ids": self.ids[index], "labels": self.ids[index]}


def tiny_model() -> HierMambaForCausalLM:
    """1 H + 2 L blocks of width 32, full BPTT (every invocation carries gradient), seeded init."""
    config = HierMambaConfig(vocab_size=64, hidden_size=32, H_layers=1, L_layers=2, H_cycles=2, L_cycles=1,
                             state_size=8, head_dim=16, chunk_size=8, bptt_steps=None)
    torch.manual_seed(0)
    return HierMambaForCausalLM(config)


def full_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict on CPU: all-gathered from the shards under FSDP2, the local copy otherwise."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
    return {name: tensor.detach().cpu().clone() for name, tensor in state.items()}


def run_trainer(output_dir: Path, global_batch: int, world_size: int, deepspeed: Path | None = None) -> dict:
    """STEPS steps of HierMambaTrainer with global_batch / world_size examples per rank (under DeepSpeed
    with the ``deepspeed`` config file, if given)."""
    model = tiny_model()
    data = FixedBatch(fixed_batch(global_batch, model.config.vocab_size))
    args = TrainingArguments(
        output_dir=str(output_dir), max_steps=STEPS, per_device_train_batch_size=global_batch // world_size,
        learning_rate=LEARNING_RATE, weight_decay=0.1, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
        report_to="none", disable_tqdm=True, use_cpu=True, seed=0, ddp_find_unused_parameters=False,
        deepspeed=str(deepspeed) if deepspeed else None)
    trainer = HierMambaTrainer(model=model, args=args, train_dataset=data)
    trainer.train()
    losses = [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]  # averaged over ranks
    return {"losses": losses, "state": full_state_dict(trainer.model), "wrapper": type(trainer.model_wrapped).__name__}


def run_fsdp2(global_batch: int, rank: int, world_size: int) -> dict:
    """STEPS steps of AdamW on this rank's slice of the batch; with world_size > 1 the model is FSDP2-sharded."""
    from torch.distributed.fsdp import fully_shard

    # 1. The model, with checkpointed blocks; sharded one unit per _no_split_modules block, then the root.
    model = tiny_model()
    model.activation_checkpointing_enable()
    if world_size > 1 and not distributed.is_initialized():  # torchrun's environment names the peers
        distributed.init_process_group("gloo")
    blocks = [module for module in model.modules() if type(module).__name__ in model._no_split_modules]
    if world_size > 1:
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
    local_elements = sum(parameter.to_local().numel() if hasattr(parameter, "to_local") else parameter.numel()
                         for parameter in model.parameters())
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)

    # 2. This rank's rows of the global batch; the sharded backward averages gradients over ranks.
    per_rank = global_batch // world_size
    ids = fixed_batch(global_batch, model.config.vocab_size)[rank * per_rank:(rank + 1) * per_rank]  # (b/w, l)
    losses = []
    for _ in range(STEPS):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # the norm of the full gradient across shards
        optimizer.step()
        optimizer.zero_grad()
        reported = loss.detach().clone()
        if world_size > 1:
            distributed.all_reduce(reported, op=distributed.ReduceOp.AVG)
        losses.append(reported.item())
    checkpointed = [block.gradient_checkpointing for block in blocks]
    return {"losses": losses, "state": full_state_dict(model), "wrapper": type(model).__name__,
            "local_elements": local_elements, "checkpointed": checkpointed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--engines", nargs="+", choices=["trainer", "fsdp2", "deepspeed"], default=["trainer", "fsdp2"])
    args = parser.parse_args()
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    if args.global_batch % world_size:
        raise ValueError(f"--global-batch {args.global_batch} is not divisible by the world size {world_size}")
    torch.set_num_threads(1)  # one core per rank

    results = {"world_size": world_size}
    for engine in args.engines:
        if engine == "fsdp2":
            results[engine] = run_fsdp2(args.global_batch, rank, world_size)
        else:
            results[engine] = run_trainer(args.out / engine, args.global_batch, world_size,
                                          DEEPSPEED_CONFIG if engine == "deepspeed" else None)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(results, args.out / f"rank{rank}.pt")
    if distributed.is_initialized():
        distributed.destroy_process_group()


if __name__ == "__main__":
    main()
