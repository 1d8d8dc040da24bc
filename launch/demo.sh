#!/usr/bin/env bash
# The main job on the embedded default data (the synthetic SAR set, `mini` preset):
# raw chips -> shards (+ verify, stats) -> joint and three-stage training (small variants)
# -> a table of top-1, balanced and head/middle/tail accuracy -> a report with plots.
# Every step is idempotent: a rerun reuses what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA="${DATA:-data/mini}"
RUNS="${RUNS:-runs/demo}"
$PY -m datasets synth "$DATA/raw" --preset mini --seed 0 --workers 2
$PY -m shards build "$DATA/raw/train_images" "$DATA/shards"
$PY -m shards build "$DATA/raw/test_images" "$DATA/shards" --split test --labels "$DATA/raw/test_labels.csv"
$PY -m shards verify "$DATA/shards"
$PY -m shards stats "$DATA/shards"
$PY -m trainer compare joint_mini three_stage_mini --seeds 1 --split test \
    --runs-root "$RUNS" "data.shards=$DATA/shards"
$PY -m trainer report "$RUNS/three_stage_mini-s0"
echo "report: $RUNS/three_stage_mini-s0/report/report.md"
