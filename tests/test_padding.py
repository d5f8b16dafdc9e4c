"""Left padding: a padded row gives the logits of the row alone, with and without biases."""

import pytest
import torch

from hier_mamba import HierMambaConfig, HierMambaForCausalLM


def tiny(mixer, use_bias) -> HierMambaConfig:
    return HierMambaConfig(vocab_size=50, hidden_size=32, H_layers=1, L_layers=2, H_cycles=2, L_cycles=1,
                           mixer=mixer, state_size=8, head_dim=16, chunk_size=4, use_bias=use_bias)


@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("mixer", ["mamba1", "mamba2"])
def test_left_padded_rows_equal_rows_alone(mixer, use_bias):
    torch.manual_seed(0)
    model = HierMambaForCausalLM(tiny(mixer, use_bias)).eval()
    if use_bias:  # biases start at 0; make them matter
        with torch.no_grad():
            for name, parameter in model.named_parameters():
                if name.endswith("proj.bias"):
                    parameter.normal_(std=0.5)
    rows = [torch.randint(1, 50, (n,)) for n in (3, 7, 11)]
    width = 11
    ids = torch.stack([torch.cat([torch.zeros(width - len(r), dtype=torch.long), r]) for r in rows])
    mask = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in rows])[:, None]).long()
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        for index, row in enumerate(rows):
            alone = model(row[None]).logits[0]
            torch.testing.assert_close(batch[index, width - len(row):], alone, rtol=1e-5, atol=1e-5)
