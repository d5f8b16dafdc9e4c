"""transformers.Trainer trains the model (with depth-wise gradient checkpointing) and lowers the loss."""

import torch
from transformers import Trainer, TrainingArguments

from hier_mamba import HierMambaConfig, HierMambaForCausalLM


class RepeatingText(torch.utils.data.Dataset):
    """A short periodic byte pattern: learnable in a few dozen steps."""

    def __init__(self, length: int = 32, size: int = 64):
        pattern = torch.tensor(list(b"hier mamba "), dtype=torch.long)
        self.items = [pattern.roll(-i).repeat(length // len(pattern) + 1)[:length] for i in range(size)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, index):
        return {"input_ids": self.items[index], "labels": self.items[index]}


def test_trainer_with_gradient_checkpointing_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    config = HierMambaConfig(vocab_size=256, hidden_size=32, H_layers=1, L_layers=1, H_cycles=2, L_cycles=2,
                             state_size=8, head_dim=16, chunk_size=16)
    model = HierMambaForCausalLM(config)
    data = RepeatingText()
    args = TrainingArguments(output_dir=str(tmp_path), max_steps=40, per_device_train_batch_size=8,
                             learning_rate=3e-3, gradient_checkpointing=True, logging_steps=5, report_to=[],
                             save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0)
    batch = {k: torch.stack([data[i][k] for i in range(8)]) for k in ("input_ids", "labels")}
    with torch.no_grad():
        before = model(**batch).loss.item()
    trainer = Trainer(model=model, args=args, train_dataset=data)
    trainer.train()
    assert all(block.gradient_checkpointing for block in model.model.reasoner.L.layers)
    model.eval()
    with torch.no_grad():
        after = model(**batch).loss.item()
    assert after < 0.5 * before, (before, after)
