"""How exact is a converted Mamba at full size? Random models of state-spaces/mamba-130m-hf's and mamba2-130m's
shapes (24 blocks, width 768; transformers' own initialisation), converted with L_layers=12: the converted model's
fp32 logits and transformers' fp32 logits, each against transformers in float64 (the exact function of the weights).

    python benchmarks/check_convert_precision.py [--length 128]

A few minutes on 2 CPU cores (the float64 reference runs transformers' slow torch path).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import copy

import torch
from transformers import Mamba2Config, Mamba2ForCausalLM, MambaConfig, MambaForCausalLM

from hier_mamba.convert import convert_mamba

SOURCES = {
    "mamba-130m shape": lambda: MambaForCausalLM(MambaConfig(num_hidden_layers=24, vocab_size=50280,
                                                             hidden_size=768)),
    "mamba2-130m shape": lambda: Mamba2ForCausalLM(Mamba2Config(
        num_hidden_layers=24, vocab_size=50288, hidden_size=768, num_heads=24, head_dim=64, state_size=128,
        n_groups=1, tie_word_embeddings=True)),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=128, help="tokens in the one test sequence")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    tokens = torch.randint(0, 50277, (1, args.length))
    print("| source | max abs logit | ours fp32 - transformers fp32 | ours fp32 - fp64 | transformers fp32 - fp64 "
          "| same argmax |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, build in SOURCES.items():
        source = build().eval()
        converted = convert_mamba(source, L_layers=12)
        with torch.no_grad():
            theirs = source(tokens).logits.double()
            ours = converted(tokens).logits.double()
            exact = copy.deepcopy(source).double()(tokens).logits
        print(f"| {name} | {exact.abs().max().item():.1f} | {(ours - theirs).abs().max().item():.1e} | "
              f"{(ours - exact).abs().max().item():.1e} | {(theirs - exact).abs().max().item():.1e} | "
              f"{torch.equal(ours.argmax(-1), theirs.argmax(-1))} |")


if __name__ == "__main__":
    main()
