#!/usr/bin/env bash
# The runs behind docs/results.md and docs/credit-assignment.md (about 30 minutes on a 2-core CPU).
# One torch thread per run, two runs at a time: under contention 2 threads per run are ~10x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
segments="1 2 4 8 16"
python scripts/experiment.py --config configs/exp_maze_small.yaml --grid configs/grids/architectures.yaml \
  --out docs/results/maze_architectures.json --budget-s 150 --max-steps 5000 --segments $segments --parallel 2
python scripts/experiment.py --config configs/exp_maze_small.yaml --grid configs/grids/credit.yaml \
  --out docs/results/maze_credit.json --max-steps 100 --segments 1 2 4 8 --parallel 2
python scripts/experiment.py --config configs/exp_sudoku.yaml --grid configs/grids/architectures.yaml \
  --out docs/results/sudoku_architectures.json --budget-s 120 --max-steps 5000 --segments $segments --parallel 2
python scripts/experiment.py --config configs/exp_sudoku.yaml --grid configs/grids/credit.yaml \
  --out docs/results/sudoku_credit.json --max-steps 80 --segments 1 2 4 8 --parallel 2
for name in maze_architectures maze_credit sudoku_architectures sudoku_credit; do
  python scripts/plot_results.py docs/results/$name.json --png docs/img/$name.png > docs/results/$name.md
done
