"""Turn scripts/experiment.py JSON results into a markdown table and a PNG plot.

    python scripts/plot_results.py docs/results/maze_architectures.json --png docs/img/maze_architectures.png

Prints a markdown table (variant, parameters, training steps and seconds, final training loss,
exact, cell and target-cell accuracy at each number of test-time segments) to stdout; the PNG plots
exact, cell and target-cell accuracy (target: cells whose label differs from the input) against the
number of test-time segments, one line per variant. Target-cell accuracy is a recall: on mazes,
marking every open cell as path would score 100% there, and cell accuracy shows the precision side.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

METRICS = ("exact_accuracy", "cell_accuracy", "target_accuracy")


def markdown_table(record: dict) -> str:
    """One row per variant; accuracy columns as exact% / cell% / target-cell% per test-time segment count."""
    segments = list(record["results"][0]["accuracy"])
    header = ["variant", "params", "steps", "train s", "train loss"] + [f"{s} seg exact / cell / target" for s in segments]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for result in record["results"]:
        cells = [" / ".join(f"{100 * result['accuracy'][s][metric]:.1f}%" for metric in METRICS) for s in segments]
        lines.append("| " + " | ".join([result["name"], f"{result['parameters']:,}", str(result["train_steps"]),
                                        str(result["train_seconds"]), str(result["train_loss"]), *cells]) + " |")
    return "\n".join(lines)


def plot(record: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    for result in record["results"]:
        segments = [int(s) for s in result["accuracy"]]
        for axis, metric in zip(axes, METRICS):
            axis.plot(segments, [100 * v[metric] for v in result["accuracy"].values()], marker="o", label=result["name"])
    for axis, metric in zip(axes, ("exact accuracy (%)", "cell accuracy (%)", "target-cell accuracy (%)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("ACT segments at test time")
        axis.set_ylabel(metric)
        axis.grid(alpha=0.3)
    axes[-1].legend(fontsize=8)
    figure.suptitle(title)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="JSON written by scripts/experiment.py")
    parser.add_argument("--png", help="where to write the plot")
    args = parser.parse_args()
    record = json.loads(Path(args.results).read_text())
    print(markdown_table(record))
    if args.png:
        plot(record, Path(args.png), Path(args.results).stem.replace("_", " "))


if __name__ == "__main__":
    main()
