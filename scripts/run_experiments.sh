#!/usr/bin/env bash
# The CPU runs behind docs/results.md (about 1.5 hours on a 2-core CPU; the GPU rows are
# scripts/run_experiments_gpu.sh) and, as phases by name, older runs: the architecture and position
# comparisons (docs/results/*_architectures.md, sudoku_no_positions.md) and the accuracies of
# docs/credit-assignment.md. Those were measured before the base configs took the input scale, the
# no-decay groups, one-segment training and grid scans, so they no longer reproduce the old numbers.
#   scripts/run_experiments.sh                      # the current phases: hierarchy, sudoku_fixes, maze_fixes
#   scripts/run_experiments.sh maze_credit_steps    # some phases, by name
# One torch thread per run, two runs at a time: under contention 2 threads per run are ~10x slower.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
run() {  # run NAME CONFIG GRID EXTRA_ARGS...: train the grid, then write the table and the plot
  local name=$1 config=$2 grid=$3
  shift 3
  python scripts/experiment.py --config "$config" --grid "$grid" --out "docs/results/$name.json" --parallel 2 "$@"
  python scripts/plot_results.py "docs/results/$name.json" --png "docs/img/$name.png" > "docs/results/$name.md"
}
hierarchy() {  # HierMamba vs flat vs looped, 900 s each; the Sudoku and maze grids run side by side, one run each
  run sudoku_hierarchy configs/exp_sudoku.yaml configs/grids/hierarchy.yaml --budget-s 900 --max-steps 1000000 \
    --parallel 1 --save-dir runs/models/sudoku &
  run maze_hierarchy configs/exp_maze_small.yaml configs/grids/hierarchy.yaml --budget-s 900 --max-steps 1000000 \
    --parallel 1 --save-dir runs/models/maze &
  wait; }
sudoku_fixes() { run sudoku_fixes configs/exp_sudoku.yaml configs/grids/fixes.yaml --budget-s 300 --max-steps 1000000; }
maze_fixes() { run maze_fixes configs/exp_maze_small.yaml configs/grids/fixes_maze.yaml --budget-s 300 --max-steps 1000000; }
maze_architectures() { run maze_architectures configs/exp_maze_small.yaml configs/grids/architectures.yaml \
  --budget-s 300 --max-steps 100000 --segments 1 2 4 8 16; }
sudoku_architectures() { run sudoku_architectures configs/exp_sudoku.yaml configs/grids/architectures.yaml \
  --budget-s 300 --max-steps 100000 --segments 1 2 4 8 16; }
sudoku_no_positions() { run sudoku_no_positions configs/exp_sudoku.yaml configs/grids/no_positions.yaml \
  --budget-s 300 --max-steps 100000 --segments 1 2 4 8 16; }
sudoku_credit_synthetic() { run sudoku_credit_synthetic_steps configs/exp_sudoku.yaml configs/grids/credit_synthetic.yaml \
  --max-steps 300 --segments 1 2 4 8; }
maze_credit_steps() { run maze_credit_steps configs/exp_maze_small.yaml configs/grids/credit.yaml \
  --max-steps 300 --segments 1 2 4 8; }
maze_credit_time() { run maze_credit_time configs/exp_maze_small.yaml configs/grids/credit.yaml \
  --budget-s 180 --max-steps 100000 --segments 1 2 4 8; }
sudoku_credit_steps() { run sudoku_credit_steps configs/exp_sudoku.yaml configs/grids/credit.yaml \
  --max-steps 300 --segments 1 2 4 8; }
sudoku_credit_time() { run sudoku_credit_time configs/exp_sudoku.yaml configs/grids/credit.yaml \
  --budget-s 180 --max-steps 100000 --segments 1 2 4 8; }
phases=("$@")
[ ${#phases[@]} -eq 0 ] && phases=(hierarchy sudoku_fixes maze_fixes)
for phase in "${phases[@]}"; do
  echo "=== $phase $(date -u +%H:%M:%S)"
  "$phase"
done
