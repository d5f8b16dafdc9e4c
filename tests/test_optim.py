"""Optimizer groups: no weight decay on the SSM dynamics (A_log, D, dt_bias), biases, norms, 1-D tensors."""

import torch
from transformers import Trainer, TrainingArguments

from hier_mamba import (HierMambaConfig, HierMambaForCausalLM, HierMambaForTokenClassification, HierMambaTrainer,
                        create_optimizer, optimizer_param_groups)
from hier_mamba.optim import decay_parameter_names

TINY = dict(vocab_size=32, hidden_size=32, H_layers=1, L_layers=1, H_cycles=1, L_cycles=1, state_size=8,
            head_dim=16, chunk_size=16, use_bias=True)
EXEMPT_SUFFIXES = ("A_log", ".D", "dt_bias", "bias", "norm.weight", "norm_f.weight", "H_init", "L_init")


def test_groups_exempt_dynamics_biases_and_norms_for_both_mixers():
    for mixer in ("mamba2", "mamba1"):
        model = HierMambaForCausalLM(HierMambaConfig(**TINY, mixer=mixer))
        decayed = set(decay_parameter_names(model))
        names = dict(model.named_parameters())
        for name in names:
            assert (name in decayed) != name.endswith(EXEMPT_SUFFIXES), (mixer, name)
        assert any(name.endswith("in_proj.weight") for name in decayed)
        assert "model.embeddings.weight" in decayed
        if mixer == "mamba1":  # its A_log is 2-D: exempt by name, not by the 1-D rule
            assert names["model.reasoner.L.layers.0.mixer.A_log"].ndim == 2
            assert "model.reasoner.L.layers.0.mixer.A_log" not in decayed
        groups = optimizer_param_groups(model, weight_decay=0.1)
        trainable = [p for p in names.values() if p.requires_grad]  # not the frozen H_init / L_init
        assert len(trainable) == len(names) - 2
        assert sum(len(g["params"]) for g in groups) == len(trainable)  # every trainable parameter once


def test_transformers_trainer_alone_would_decay_the_ssm_dynamics(tmp_path):
    """The defect this module fixes: Trainer's name patterns catch 'bias'/'norm' but not A_log or D."""
    model = HierMambaForCausalLM(HierMambaConfig(**TINY))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, weight_decay=0.1)
    plain = set(Trainer(model=model, args=args).get_decay_parameter_names(model))
    ours = set(HierMambaTrainer(model=model, args=args).get_decay_parameter_names(model))
    a_log = "model.reasoner.L.layers.0.mixer.A_log"
    assert a_log in plain and a_log not in ours
    assert "model.reasoner.L.norm_f.weight" in plain and "model.reasoner.L.norm_f.weight" not in ours


def test_weight_decay_moves_only_decayed_parameters(tmp_path):
    """With zero gradients, one AdamW step changes exactly the decayed weights (HierMambaTrainer and create_optimizer)."""
    model = HierMambaForTokenClassification(HierMambaConfig(**TINY, bidirectional=True, use_cache=False))
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, weight_decay=0.5,
                             learning_rate=0.1)
    decayed = set(decay_parameter_names(model))
    for optimizer in (HierMambaTrainer(model=model, args=args).create_optimizer(), create_optimizer(model, args)):
        before = {name: p.detach().clone() for name, p in model.named_parameters()}
        for p in model.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        for name, p in model.named_parameters():
            moved = not torch.equal(before[name], p.detach())
            assert moved == (name in decayed and bool(before[name].any())), name
