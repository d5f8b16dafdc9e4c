"""Exact accuracy against test-time compute, segments x symmetric copies, from one run of the largest setting.

    python scripts/solver_curve.py --model models/sudoku-hard-hiermamba --config configs/hard/sudoku_hard.yaml \
        --limit 100 --segments 8 16 32 64 --copies 1 2 4 8 16 [--out curve.json]

Every test puzzle and its ``max(--copies) - 1`` symmetric copies run ``max(--segments)`` segments once,
keeping every segment's answer (``return_all_segments``), so each cell of the grid costs nothing extra:
for c copies and s segments (c x s segments per puzzle) it reports exact accuracy when the Q-head picks
among the first c copies at segment s (``solve(..., halt="fixed", copies=c, select="q")``), when it picks
the (copy, segment) answer with the highest halt margin among all c x s (``q_best_segment``), when it keeps
the whole answer most copies agree on (``select="plurality"``), when their
mapped-back probabilities are averaged (``select="vote"``), and the oracle (some copy is right: the
headroom a better picker could reach, not a result). Puzzles are rated by technique as in
evaluate_solver.py; ``more`` is the share of puzzles that need more than naked and hidden singles.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch loads OpenMP: idle threads sleep (hier_mamba/threads.py)

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForTokenClassification

import hier_mamba  # noqa: F401  (registers the Auto* classes)
from evaluate_solver import test_puzzles
from hier_mamba.data import sudoku
from hier_mamba.data.sudoku_rating import rate
from hier_mamba.solving import Symmetry, cell_probabilities, draw_symmetries, fill_blanks, plurality_pick
from hier_mamba.threads import fit_threads, threads_argument


@torch.no_grad()
def copy_answers(model, inputs: torch.Tensor, labels: torch.Tensor, symmetry: Symmetry, segments: list[int],
                 batch_size: int):
    """One symmetric copy of every puzzle through max(segments) segments.

    Returns probabilities (len(segments), n, 81, vocab) mapped back to the original puzzle at each listed
    segment count, and every segment's exact flag, Q-head halt logit and halt margin q_halt - q_continue
    (what ``halt="best"`` ranks), (max(segments), n) each.
    """
    probabilities, correct, q_halt, margin = [], [], [], []
    for start in range(0, len(inputs), batch_size):
        batch = symmetry.apply(inputs[start:start + batch_size])
        output = model(input_ids=batch, num_segments=max(segments), return_all_segments=True)
        probs = cell_probabilities(output.all_logits, model.config.loss_type)  # (s, b, 81, vocab)
        probs = torch.stack([symmetry.invert_probabilities(p) for p in probs])
        correct.append(exact(probs, inputs[start:start + batch_size], labels[start:start + batch_size]))
        probabilities.append(probs[torch.tensor(segments) - 1])  # (len(segments), b, 81, vocab)
        q_halt.append(output.all_q_logits[..., 0])  # (s, b)
        margin.append(output.all_q_logits[..., 0] - output.all_q_logits[..., 1])  # (s, b)
    return torch.cat(probabilities, 1), torch.cat(correct, 1), torch.cat(q_halt, 1), torch.cat(margin, 1)


def exact(probabilities: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(..., n, 81, vocab) probabilities -> (..., n) bool: every cell right, givens kept as written."""
    return (fill_blanks(inputs, probabilities, sudoku.BLANK_TOKEN) == labels).all(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a save_pretrained folder")
    parser.add_argument("--config", type=Path, help="run config whose held-out split is the test set")
    parser.add_argument("--csv", help="a Sudoku-Extreme-style CSV (source,question,answer,rating) instead")
    parser.add_argument("--limit", type=int, help="first N test puzzles")
    parser.add_argument("--segments", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--copies", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--seed", type=int, default=0, help="draws the symmetries")
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--offset", type=int, default=0, help="skip the first N test puzzles (split a run)")
    parser.add_argument("--out", type=Path, help="write the grid as JSON here")
    parser.add_argument("--merge", type=Path, nargs="+", help="only merge these grids of disjoint slices into --out")
    parser.add_argument("--threads", type=threads_argument, help="torch CPU threads: N, or auto")
    args = parser.parse_args()
    if args.merge:
        result = merge(args.merge)
        print_grid(result)
        print(markdown_table(result))
        if args.out:
            args.out.write_text(json.dumps(result, indent=1))
        return
    if not args.model or not (args.config or args.csv):
        raise SystemExit("give --model and --config (its held-out split) or --csv")
    if min(args.segments) < 1 or min(args.copies) < 1:
        raise SystemExit(f"--segments and --copies must be positive, got {args.segments} and {args.copies}")
    fit_threads(args.threads)
    model = AutoModelForTokenClassification.from_pretrained(args.model).eval()
    inputs, labels = test_puzzles(args)
    more = torch.tensor([rate(sudoku.from_tokens(row.numpy())).level == "more" for row in inputs])
    segments, copies = sorted(set(args.segments)), sorted(set(args.copies))

    # 1. Run each copy once through the largest segment count; keep what the grid needs.
    symmetries = draw_symmetries(model.config, max(copies), args.seed)
    vote_sum = None
    correct, q_halt, margin, answers, votes = [], [], [], [], {}
    start = time.perf_counter()
    for k, symmetry in enumerate(symmetries):
        probabilities, ok, q, q_margin = copy_answers(model, inputs, labels, symmetry, segments, args.batch_size)
        correct.append(ok)
        q_halt.append(q)
        margin.append(q_margin)
        answers.append(probabilities.argmax(-1))  # (len(segments), n, 81)
        vote_sum = probabilities if vote_sum is None else vote_sum + probabilities
        if k + 1 in copies:
            votes[k + 1] = exact(vote_sum, inputs, labels)
        print(f"copy {k + 1}/{len(symmetries)} done after {time.perf_counter() - start:.0f} s", flush=True)
    correct, q_halt, margin = torch.stack(correct), torch.stack(q_halt), torch.stack(margin)  # (copies, segs, n)
    answers = torch.stack(answers)  # (copies, len(segments), n, 81)

    # 2. The grid: Q-head pick (at the last segment, or over all segments), vote and oracle per (copies, segments).
    rows = []
    for c in copies:
        for i, s in enumerate(segments):
            last = q_halt[:c, s - 1].argmax(0)  # (n,) the copy the Q-head is surest of at segment s
            picked = correct[:c, s - 1].gather(0, last[None])[0]
            flat_margin = margin[:c, :s].flatten(0, 1)  # (c * s, n): every (copy, segment) answer so far
            any_segment = correct[:c, :s].flatten(0, 1).gather(0, flat_margin.argmax(0)[None])[0]
            agreed = correct[:c, s - 1].gather(0, plurality_pick(answers[:c, i], q_halt[:c, s - 1])[None])[0]
            oracle = correct[:c, s - 1].any(0)
            row = {"copies": c, "segments": s, "compute": c * s}
            for name, ok in (("q_pick", picked), ("q_best_segment", any_segment), ("plurality", agreed),
                             ("vote", votes[c][i]), ("oracle", oracle)):
                row[name] = float(ok.float().mean())
                row[f"{name}_more"] = float(ok[more].float().mean()) if more.any() else float("nan")
            rows.append(row)
    result = {"model": args.model, "test": str(args.csv or args.config), "offset": args.offset, "n": len(inputs),
              "n_more": int(more.sum()), "seed": args.seed, "seconds": round(time.perf_counter() - start, 1),
              "grid": rows}
    print_grid(result)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


def print_grid(result: dict) -> None:
    print(f"{result['n']} puzzles ({result['n_more']} need more than singles): exact accuracy")
    for row in result["grid"]:
        print(f"copies {row['copies']:3d} segments {row['segments']:4d} (compute {row['compute']:5d}): "
              f"Q-pick {row['q_pick']:6.1%} (more {row['q_pick_more']:6.1%})  "
              f"best segment {row['q_best_segment']:6.1%}  "
              f"plurality {row['plurality']:6.1%} (more {row['plurality_more']:6.1%})  vote {row['vote']:6.1%}  "
              f"oracle {row['oracle']:6.1%}")


def markdown_table(result: dict, keys: tuple[str, ...] = ("q_pick", "oracle")) -> str:
    """Copies (rows) x segments (columns), each cell the ``keys`` in % joined by " / " (for docs/)."""
    rows = result["grid"]
    segments = sorted({row["segments"] for row in rows})
    lines = ["| copies \\ segments | " + " | ".join(map(str, segments)) + " |", "| --- |" + " --- |" * len(segments)]
    for copies in sorted({row["copies"] for row in rows}):
        by_segments = {row["segments"]: row for row in rows if row["copies"] == copies}
        cells = [" / ".join(f"{100 * by_segments[s][key]:.0f}" for key in keys) for s in segments]
        lines.append(f"| {copies} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def merge(paths: list[Path]) -> dict:
    """Grids of disjoint puzzle slices (``--offset``/``--limit``, same model and settings) -> one grid over all."""
    parts = [json.loads(path.read_text()) for path in paths]
    n, n_more = sum(p["n"] for p in parts), sum(p["n_more"] for p in parts)
    if len({(p["model"], p["seed"], len(p["grid"])) for p in parts}) != 1:
        raise SystemExit(f"--merge: {paths} differ in model, seed or grid")
    rows = []
    for cells in zip(*(p["grid"] for p in parts)):
        row = dict(cells[0])
        for key in row:
            if key in ("copies", "segments", "compute"):
                continue
            weights = [p["n_more"] if key.endswith("_more") else p["n"] for p in parts]
            row[key] = sum(w * cell[key] for w, cell in zip(weights, cells)) / max(sum(weights), 1)
        rows.append(row)
    return {**parts[0], "offset": [p.get("offset", 0) for p in parts], "n": n, "n_more": n_more,
            "seconds": [p.get("seconds") for p in parts], "grid": rows}


if __name__ == "__main__":
    main()
