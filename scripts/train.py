"""Train a hier_mamba model from a YAML config with transformers.Trainer, save it, reload it, show a sample.

    python scripts/train.py --config configs/lm_tiny.yaml [--max-steps N] [--output-dir DIR] [--resume]

The run config (task, seed, output_dir, model, data, training) is described in
hier_mamba/tasks/run.py; the tasks' data keys in hier_mamba/tasks/lm.py and puzzle.py.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import logging
from pathlib import Path

from hier_mamba.tasks import get_task
from hier_mamba.tasks.run import last_checkpoint, load_run_config, train_from_config
from hier_mamba.threads import fit_threads, threads_argument


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, type=Path, help="YAML run config (see configs/)")
    parser.add_argument("--max-steps", type=int, help="override training.max_steps")
    parser.add_argument("--output-dir", type=Path, help="override output_dir")
    parser.add_argument("--resume", action="store_true", help="continue from the last checkpoint in output_dir")
    parser.add_argument("--threads", type=threads_argument, help="torch CPU threads: N, or auto (the cores free now)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    fit_threads(args.threads)
    config = load_run_config(args.config)
    output_dir = args.output_dir or Path(config.get("output_dir", f"runs/{args.config.stem}"))
    if args.resume:
        try:
            last_checkpoint(output_dir)
        except FileNotFoundError as error:
            raise SystemExit(f"--resume: {error}") from error
    run = train_from_config(config, output_dir, max_steps=args.max_steps, resume=args.resume)
    if not run.trainer.is_world_process_zero():
        return
    print(f"trained {run.global_step} steps in {run.train_seconds:.0f} s; train loss {run.train_loss:.4f}; "
          + ", ".join(f"{key} {value:.4f}" for key, value in run.metrics.items() if isinstance(value, float)))
    print(f"saved to {run.final_dir}; reloaded with {run.auto_class}: identical logits")
    print(get_task(config["task"]).demo(run.reloaded, run.eval_dataset, config["data"], run.tokenizer))


if __name__ == "__main__":
    main()
