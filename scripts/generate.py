"""Continue a prompt with a saved byte-level hier_mamba language model.

    python scripts/generate.py --model runs/lm_tiny/final --prompt 'The "while" statement' \
        [--max-new-tokens 300] [--greedy] [--temperature 0.8] [--top-k 20] [--seed 0]

Generation runs on the model's recurrent cache: O(1) state per new byte, whatever the length.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from transformers import AutoModelForCausalLM, set_seed

import hier_mamba  # noqa: F401  (registers the Auto* classes)

sys.path.insert(0, str(Path(__file__).resolve().parent))  # task_lm lives beside this script

from task_lm import sample  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument("--prompt", required=True, help="text to continue (UTF-8, one token per byte)")
    parser.add_argument("--max-new-tokens", type=int, default=300, help="bytes to generate")
    parser.add_argument("--greedy", action="store_true", help="take the most likely byte instead of sampling")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    print(sample(model, args.prompt, max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                 temperature=args.temperature, top_k=args.top_k))


if __name__ == "__main__":
    main()
