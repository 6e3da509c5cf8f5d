#!/usr/bin/env bash
# One row of the pixel-by-pixel table (experiments/RESULTS.md, "Pixel-by-pixel Fashion-MNIST"): train a config
# for its 400 updates (equal updates), classify the test split, then continue the same run until 600 s of
# training wall time in all (equal wall-clock) and, if it got further, classify the test split again (a row
# slower than that stops where it stands). Each result is an eval line with "data": "test" in metrics.jsonl.
#   bash experiments/pixels_row.sh CONFIG TASK SEED RUN_DIR    e.g. pixels_sab pixels-permuted 0 runs/pixels/sab-p-s0
set -euo pipefail
config=experiments/configs/$1.json task=$2 seed=$3 run=$4
wall=${PIXELS_WALL:-600}
sab-mips train --config "$config" --task "$task" --seed "$seed" --run-dir "$run" --threads 1 --no-progress
sab-mips eval --run "$run" --split test --threads 1
continued=$(sab-mips train --config "$config" --task "$task" --seed "$seed" --run-dir "$run" --threads 1 --no-progress \
  --resume --steps 1000000 --time-budget "$wall" | tee /dev/stderr | grep -o 'steps=[0-9]*' | head -n 1)
first=$(grep -o '"steps": [0-9]*' "$config" | grep -o '[0-9]*$')
if [ "$continued" != "steps=$first" ]; then
  sab-mips eval --run "$run" --split test --threads 1
fi
