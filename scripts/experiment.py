"""Run a grid of model variants on a puzzle task under one training budget and tabulate accuracy.

    python scripts/experiment.py --config configs/maze_tiny.yaml --grid configs/grids/architectures.yaml \
        --out docs/results/maze_architectures.json [--budget-s 180] [--max-steps N] [--parallel 2]

The grid YAML maps a variant name to overrides of the base config's `model:` (and optionally
`training:`) sections, plus an optional `seed` (the model's init and data order; the puzzles stay
fixed) and `optimizer_groups` ("hier_mamba", the default, or "trainer": transformers' own weight-decay
filter). Every variant trains with HF Trainer on the same data and budget (a wall clock limit and/or a
step limit), then is evaluated on the test split at several numbers of ACT segments. Results
(accuracy, parameters, steps done, seconds, peak RSS) go to a JSON file; use
scripts/plot_results.py to turn them into tables and PNGs.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import copy
import json
import multiprocessing
import resource
import sys
import time
from pathlib import Path

import torch
import yaml
from transformers import Trainer, TrainingArguments, set_seed

from hier_mamba import HierMambaTrainer  # Trainer without weight decay on A_log, D, dt_bias, norms, biases
from hier_mamba.callbacks import TimeBudget  # cosine learning rate over a wall-clock budget
from hier_mamba.tasks import puzzle as task_puzzle



# A variant's `optimizer_groups`: "hier_mamba" exempts A_log, D, dt_bias, norms and biases from weight decay
# (hier_mamba/optim.py); "trainer" is transformers.Trainer's own name filter (decays A_log and D: the ablation).
TRAINERS = {"hier_mamba": HierMambaTrainer, "trainer": Trainer}


@torch.no_grad()
def accuracy_at_segments(model, dataset, segments: list[int], batch_size: int = 100) -> dict[int, dict[str, float]]:
    """Accuracy on ``dataset`` when running each number of segments.

    exact: whole puzzle right; cell: all labelled cells; target: only the cells whose label differs
    from the input (Sudoku blanks, maze path cells) -- copying the input scores 0 there.
    """
    model.eval()
    results = {}
    for count in segments:
        totals = dict(cell=0, cell_n=0, target=0, target_n=0, exact=0, exact_n=0)
        for start in range(0, len(dataset), batch_size):
            batch = task_puzzle.collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
            labels = batch["labels"]
            predicted = model(input_ids=batch["input_ids"].to(model.device), num_segments=count).logits.argmax(-1).cpu()
            scored = labels != -100
            target = scored & (labels != batch["input_ids"])
            right = predicted == labels
            totals["cell"] += int((right & scored).sum())
            totals["cell_n"] += int(scored.sum())
            totals["target"] += int((right & target).sum())
            totals["target_n"] += int(target.sum())
            totals["exact"] += int((right | ~scored).all(-1).sum())
            totals["exact_n"] += len(labels)
        results[count] = {name: totals[name] / max(totals[name + "_n"], 1) for name in ("exact", "cell", "target")}
        results[count] = {f"{name}_accuracy": value for name, value in results[count].items()}
    return results


def run_variant(name: str, base: dict, overrides: dict, budget_s: float | None, max_steps: int | None,
                segments: list[int], threads: int, save_dir: str | None = None, device: str = "cpu") -> dict:
    """Train one variant and evaluate it. Runs in its own process when --parallel > 1."""
    torch.set_num_threads(threads)
    config = copy.deepcopy(base)
    config["model"].update(overrides.get("model", {}))
    config["training"].update(overrides.get("training", {}))
    if max_steps is not None:
        config["training"]["max_steps"] = max_steps
    seed = overrides.get("seed", config.get("seed", 0))  # the model's init and the data order; the puzzles stay
    set_seed(seed)
    train_set, test_set = task_puzzle.build_datasets(config["data"], config.get("seed", 0))
    set_seed(seed)
    model = task_puzzle.build_model(config["model"])
    warmup_steps = config["training"].get("warmup_steps", 0)
    if budget_s is not None:  # TimeBudget owns the schedule: cosine over the wall-clock budget
        config["training"].update(lr_scheduler_type="constant", warmup_steps=0)
    training = {**config["training"], "save_strategy": "no", "eval_strategy": "no", "report_to": [],
                "disable_tqdm": True, "use_cpu": device == "cpu", "seed": seed}
    args = TrainingArguments(output_dir=f"/tmp/hier_mamba_experiment/{name}", **training)
    trainer_class = TRAINERS[overrides.get("optimizer_groups", "hier_mamba")]
    trainer = trainer_class(model=model, args=args, train_dataset=train_set, data_collator=task_puzzle.collate,
                            callbacks=[TimeBudget(budget_s, warmup_steps)])
    start = time.perf_counter()
    output = trainer.train()
    seconds = time.perf_counter() - start
    if save_dir is not None:  # the trained model, loadable with from_pretrained
        model.save_pretrained(Path(save_dir) / name)
    return {
        "name": name,
        "overrides": overrides,
        "parameters": sum(p.numel() for p in model.parameters()),
        "train_steps": trainer.state.global_step,
        "train_seconds": round(seconds, 1),
        "train_loss": round(output.training_loss, 4),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "accuracy": accuracy_at_segments(model, test_set, segments),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="base YAML (task, model, data, training, seed)")
    parser.add_argument("--grid", required=True, help="YAML: variant name -> {model: {...}, training: {...}}")
    parser.add_argument("--out", required=True, help="JSON file for the results")
    parser.add_argument("--budget-s", type=float, default=None, help="wall-clock training budget per variant")
    parser.add_argument("--max-steps", type=int, default=None, help="training steps per variant")
    parser.add_argument("--segments", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--parallel", type=int, default=1, help="variants trained at once (one thread each)")
    parser.add_argument("--save-dir", default=None, help="save each trained variant to SAVE_DIR/NAME")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where to train and evaluate")
    args = parser.parse_args()
    base = yaml.safe_load(Path(args.config).read_text())
    grid = yaml.safe_load(Path(args.grid).read_text())
    jobs = [(name, base, overrides or {}, args.budget_s, args.max_steps, args.segments,
             1 if args.parallel > 1 else torch.get_num_threads(), args.save_dir, args.device) for name, overrides in grid.items()]
    record = {"config": args.config, "grid": args.grid, "budget_s": args.budget_s, "max_steps": args.max_steps,
              "device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
              "command": " ".join(sys.argv), "torch": torch.__version__, "results": []}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with multiprocessing.get_context("spawn").Pool(max(args.parallel, 1), maxtasksperchild=1) as pool:  # fresh RSS per run
        for result in pool.imap(_run_job, jobs):  # in grid order; the JSON is rewritten after every variant
            record["results"].append(result)
            Path(args.out).write_text(json.dumps(record, indent=2))
            accuracy = ", ".join(f"{k} seg: {v['exact_accuracy']:.3f} exact / {v['target_accuracy']:.3f} target"
                                 for k, v in result["accuracy"].items())
            print(f"{result['name']:>24}  params={result['parameters']}  steps={result['train_steps']}  {accuracy}",
                  flush=True)


def _run_job(job: tuple) -> dict:
    """Pool.imap passes one argument: unpack the job tuple for run_variant."""
    return run_variant(*job)


if __name__ == "__main__":
    main()
