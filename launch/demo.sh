#!/usr/bin/env bash
# The main job on the embedded default data: synthetic SAR set -> shards -> verify -> stats.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
DATA="${DATA:-data/mini}"
$PY -m datasets synth "$DATA/raw" --preset mini --seed 0
$PY -m shards build "$DATA/raw/train_images" "$DATA/shards"
$PY -m shards build "$DATA/raw/test_images" "$DATA/shards" --split test --labels "$DATA/raw/test_labels.csv"
$PY -m shards verify "$DATA/shards"
$PY -m shards stats "$DATA/shards"
