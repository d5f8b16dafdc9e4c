"""Continue a prompt with a saved hier_mamba language model and the tokenizer saved beside it.

    python scripts/generate.py --model runs/lm_tiny/final --prompt 'The "while" statement' \
        [--max-new-tokens 300] [--greedy] [--temperature 0.8] [--top-k 20] [--seed 0] [--compile-decoding]

Generation runs on the model's recurrent cache: O(1) state per new token, whatever the length. A
model folder without a tokenizer (saved before tokenizers travelled with the model) is read with
the byte tokenizer.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import logging
from pathlib import Path

from transformers import AutoModelForCausalLM, set_seed

from hier_mamba.tasks.lm import sample
from hier_mamba.threads import fit_threads, threads_argument
from hier_mamba.tokenization import load_tokenizer

logger = logging.getLogger("generate")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, type=Path, help="folder written by save_pretrained")
    parser.add_argument("--prompt", required=True, help="text to continue")
    parser.add_argument("--max-new-tokens", type=int, default=300, help="tokens to generate (bytes, by default)")
    parser.add_argument("--greedy", action="store_true", help="take the most likely token instead of sampling")
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=threads_argument, help="torch CPU threads: N, or auto (the cores free now)")
    parser.add_argument("--compile-decoding", action="store_true",
                        help="decode through torch.compile (model.compile_decoding()): a one-off build (~20 s, ~4 s "
                             "from inductor's disk cache, needs a C++ compiler), then ~2.5x faster tokens on CPU; "
                             "pays off for long generations (docs/benchmarks.md section 2)")
    args = parser.parse_args(argv)
    fit_threads(args.threads)

    set_seed(args.seed)
    model = AutoModelForCausalLM.from_pretrained(args.model).eval()
    if args.compile_decoding:
        model.compile_decoding()
    has_tokenizer = (args.model / "tokenizer_config.json").is_file()
    if not has_tokenizer:
        logger.warning("%s holds no tokenizer: using the byte tokenizer", args.model)
    tokenizer = load_tokenizer(args.model if has_tokenizer else None)
    print(sample(model, args.prompt, tokenizer, max_new_tokens=args.max_new_tokens, greedy=args.greedy,
                 temperature=args.temperature, top_k=args.top_k))


if __name__ == "__main__":
    main()
