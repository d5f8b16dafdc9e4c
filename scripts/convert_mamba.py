"""Convert a pretrained Mamba / Mamba2 checkpoint into a HierMambaForCausalLM checkpoint (warm start).

    python scripts/convert_mamba.py SRC DST --L-layers 12 [--H-cycles 1] [--L-cycles 1] [--set chunk_size=64 ...]

SRC: a transformers MambaForCausalLM / Mamba2ForCausalLM directory, a mamba_ssm MambaLMHeadModel directory
(config.json + pytorch_model.bin), or a hub name such as state-spaces/mamba-130m-hf (downloaded: needs the network).
With the default one H and one L cycle the result computes the source's logits; see hier_mamba/convert.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import json
import logging

from hier_mamba.convert import convert_mamba_checkpoint


def parse_setting(text: str) -> tuple[str, object]:
    """'name=value' with value read as JSON when it parses (64, null, true, [0, 1]), else as a string."""
    name, separator, value = text.partition("=")
    if not separator or not name:
        raise argparse.ArgumentTypeError(f"--set expects name=value, got {text!r}")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src", help="source checkpoint directory or hub model name")
    parser.add_argument("dst", help="output directory (save_pretrained)")
    parser.add_argument("--L-layers", type=int, required=True, help="the first this many blocks form L, the rest H")
    parser.add_argument("--H-cycles", type=int, default=1, help="1 keeps the source's function")
    parser.add_argument("--L-cycles", type=int, default=1, help="1 keeps the source's function")
    parser.add_argument("--set", type=parse_setting, action="append", default=[], metavar="NAME=VALUE",
                        help="any further HierMambaConfig field, e.g. chunk_size=64 or bptt_steps=null")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    model = convert_mamba_checkpoint(args.src, args.dst, L_layers=args.L_layers, H_cycles=args.H_cycles,
                                     L_cycles=args.L_cycles, **dict(args.set))
    config = model.config
    logging.info("wrote %s: %s, L %d + H %d blocks, %d x %d cycles, %.1fM parameters", args.dst, config.mixer,
                 config.L_layers, config.H_layers, config.H_cycles, config.L_cycles, model.num_parameters() / 1e6)


if __name__ == "__main__":
    main()
