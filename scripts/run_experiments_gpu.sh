#!/usr/bin/env bash
# The GPU rows of docs/results.md: configs/grids/gpu.yaml on Sudoku and mazes, all six runs at once on
# one GPU (pure-PyTorch ops: each small model is kernel-launch bound, so they share the GPU), each run
# under the same wall-clock budget, then evaluated and saved.
#
#   [PYTHON=python3] scripts/run_experiments_gpu.sh OUT_DIR [BUDGET_S] [DEVICE]   (DEVICE: cuda, or cpu to dry-run)
set -uo pipefail
out=${1:?usage: scripts/run_experiments_gpu.sh OUT_DIR [BUDGET_S] [DEVICE]}
budget=${2:-270}
device=${3:-cuda}
mkdir -p "$out"
for task in sudoku maze; do
  config=configs/exp_${task}.yaml
  [ "$task" = maze ] && config=configs/exp_maze_small.yaml
  OMP_NUM_THREADS=1 "${PYTHON:-python}" scripts/experiment.py --config "$config" --grid configs/grids/gpu.yaml \
    --out "$out/${task}_gpu.json" --budget-s "$budget" --max-steps 1000000 --parallel 3 --device "$device" \
    --save-dir "$out/models_$task" > "$out/${task}_gpu.log" 2>&1 &
done
wait
grep -h "params=" "$out"/*_gpu.log
