#!/usr/bin/env bash
# The GPU check, written for one node: one H200, Python 3.12, torch 2.11 for CUDA 13, the
# packages of launch/gpu_node_packages.txt, no network; a run there carries at most 64 MiB and
# brings back at most 8 files from $OUT. launch/gpu_pack.sh packs what the node lacks and lists
# the exact node runs (command, carried folders) of each phase.
#
#   PYTHON=python3 bash launch/gpu_check.sh          # core phase (carry .gpu_carry): ends within 7 min
#   PYTHON=python3 bash launch/gpu_check.sh --dali   # DALI phase (after the parts of .gpu_dali)
#   bash launch/gpu_check.sh --cpu-smoke [--dali]    # the same steps, tiny, on the CPU (CI)
#
# Core phase steps, in order (the budget clips the last ones first):
#   install        the carried wheels (checksums checked) into $WORK/site, nothing from a network
#   data           the synthetic mini set and its shards, under $WORK
#   bench_eager    training images/s and MFU of Shake-Shake-26 2x32d, 56 px, bf16, batch 128
#                  and 512, eager (`python -m trainer bench gpu`, one configuration at a time)
#   loaders        images/s of the resident stream with stage-3 augmentation on the GPU, and of
#                  the shard reader (`python -m datasets bench --loader torch`)
#   resume_det     joint_mini with speed.deterministic: true, stopped by SIGUSR2 mid-run and
#                  resumed, against an uninterrupted run: bit-identical metrics and weights
#   latency        latency per chip at batch 1 and 256, with and without TTA (`bench latency`)
#   gpu_tests      the tests marked gpu
#   resume_nondet  the same preemption with the default speed settings (cuDNN autotuning): the
#                  test balanced accuracy within RESUME_TOLERANCE of the deterministic run
#   bench_compiled the trainer compiled at batch 512 (one compile; the bare loop not timed)
# DALI phase: install, dali_install (join the parts, check their sums, install), data,
# dali_tests, loaders (`--loader dali`), resume_dali (deterministic, data.loader=dali).
#
# Only summary.md, summary.json and logs.tar.gz are written to $OUT, all three rewritten after
# every step, so a run cut short still brings back every number measured before. summary.md
# gives each step as `ok`, `skipped (why)` or `FAILED (why)`. A failed step does not stop the
# next; each runs under a timeout clipped to what is left of the budget. Exit 1 when a step
# failed or timed out, else 0.
# Environment: PYTHON (default .venv/bin/python, else python3), OUT (default gpu_check_out),
# WORK (default /tmp/gpu_check), CARRY (.gpu_carry), DALI_CARRY (.gpu_dali), GPU_CHECK_BUDGET
# (seconds, default 400 core, 360 DALI, 1200 for the smoke), RESUME_TOLERANCE (default 0.06:
# runs that drift apart differ like runs of two seeds, about √2 × the 1.6-1.9-point seed-to-seed
# spread of balanced accuracy measured on the synthetic sets, so 0.06 is about 2.5 sigma).
set -euo pipefail
cd "$(dirname "$0")/.."

SMOKE=0
PHASE=core
for arg in "$@"; do
  case "$arg" in
    --cpu-smoke) SMOKE=1 ;;
    --dali) PHASE=dali ;;
    *) echo "usage: bash launch/gpu_check.sh [--cpu-smoke] [--dali]" >&2; exit 2 ;;
  esac
done
REPO="$(pwd)"
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
OUT="${OUT:-gpu_check_out}"
WORK="${WORK:-/tmp/gpu_check}"
mkdir -p "$OUT" "$WORK"
OUT="$(cd "$OUT" && pwd)"
WORK="$(cd "$WORK" && pwd)"
CARRY="$(realpath -m "${CARRY:-.gpu_carry}")"
DALI_CARRY="$(realpath -m "${DALI_CARRY:-.gpu_dali}")"
SITE="$WORK/site"
DATA="$WORK/data"
TOL="${RESUME_TOLERANCE:-0.06}"
if [ "$PHASE" = core ]; then BUDGET="${GPU_CHECK_BUDGET:-400}"; else BUDGET="${GPU_CHECK_BUDGET:-360}"; fi
STRETCH=1   # step limits are sized for the node; a shared CPU runner (the smoke) gets 4x

# Read once by CUDA libraries, at their first call: set before any Python starts.
export CUBLAS_WORKSPACE_CONFIG=:4096:8
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export TORCHINDUCTOR_CACHE_DIR="$WORK/inductor" TRITON_CACHE_DIR="$WORK/triton"
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"

if (( SMOKE )); then
  export CUDA_VISIBLE_DEVICES=""   # the smoke checks the CPU path, even where a GPU is present
  export OMP_NUM_THREADS=1         # tiny work: spare threads only spin (and CI shares its cores)
  export SAR_PREEMPT_TEST_DELAY=0.05   # slows each step a little, so the signal lands mid-run
  WORKERS=2
  TRAIN="model.depth=8 model.width=8 data.input_size=32 data.batch_size=64 data.num_workers=0
         data.dali_threads=2 data.tta=1 stages.0.sampler.epoch_size=256 stages.0.steps=24"
  LOG_EVERY=1; SIGNAL_AFTER=3
  BENCH="--seconds 0.5 --rounds 1 --batch-size 32 --workers 0 --dali-threads 1"
  LATENCY="--depth 8 --width 8 --size 32 --large-batch 16 --repeats 2"
  STRETCH=4; BUDGET="${GPU_CHECK_BUDGET:-1200}"
else
  WORKERS="$(nproc)"
  TRAIN="stages.0.steps=300"      # joint_mini: 300 steps of 64 on the mini set
  LOG_EVERY=10; SIGNAL_AFTER=8    # signalled after ~80 of 300 steps
  BENCH="--seconds 6 --rounds 2 --batch-size 256 --workers 8 --dali-threads 8"
  LATENCY="--large-batch 256 --repeats 20"
fi
# Speckle on, so the resumed runs also cover the GPU speckle sampler.
TRAIN="$TRAIN stages.0.augment.speckle=0.2"
export REPO PYTHON OUT WORK CARRY DALI_CARRY SITE DATA TOL SMOKE PHASE BUDGET WORKERS TRAIN LOG_EVERY \
  SIGNAL_AFTER BENCH LATENCY
rm -rf "$WORK/logs" "$WORK/results" "$WORK/notes" "$WORK/runs"
mkdir -p "$WORK/logs" "$WORK/results" "$WORK/notes" "$SITE"
: >"$WORK/steps.tsv"
rm -f "$OUT/summary.md" "$OUT/summary.json" "$OUT/logs.tar.gz"
FAILED=0

note() { echo "$*" >>"$WORK/notes/$STEP"; echo "note: $*"; }   # the step's why, for the summary
has_cuda() { "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; }

# -- the steps (each runs in its own bash under `timeout`; exit 3 = skipped, see its note) ----
install_wheels() {   # DIR: its wheels whose distribution this Python lacks, into $SITE (no index)
  local w name todo=()
  shopt -s nullglob
  for w in "$1"/*.whl; do
    name="$(basename "$w" | cut -d- -f1)"
    if "$PYTHON" -c 'import importlib.metadata as m, sys; print(sys.argv[1], m.version(sys.argv[1]), "already here")' \
        "$name" 2>/dev/null; then continue; fi
    todo+=("$w")
  done
  if (( ${#todo[@]} )); then
    "$PYTHON" -m pip install -q --no-index --no-deps --target "$SITE" "${todo[@]}"
    note "installed into $SITE: $(printf '%s\n' "${todo[@]}" | xargs -n1 basename | cut -d- -f1-2 | paste -sd ' ')"
  fi
  if [ -d "$SITE/nvidia" ]; then
    # nvidia/ is also the node's own CUDA wheels' folder, and some wheels make it a regular
    # package: the first on the path would hide the other. One package over both:
    echo "__path__ = __import__('pkgutil').extend_path(__path__, __name__)" >"$SITE/nvidia/__init__.py"
  fi
}

install_step() {
  set -euo pipefail
  if [ -f "$CARRY/SHA256SUMS" ]; then
    (cd "$CARRY" && sha256sum -c --quiet SHA256SUMS) || { echo "$CARRY: a wheel does not match SHA256SUMS"; exit 1; }
    install_wheels "$CARRY"
  else
    note "no $CARRY/SHA256SUMS (bash launch/gpu_pack.sh, then carry $CARRY); using what is installed"
  fi
  "$PYTHON" launch/gpu_check.py machine "$WORK"   # imports what the project imports; notes versions
}

dali_install_step() {   # join the parts carried in earlier runs, check every sum, install
  set -euo pipefail
  local sums dir="$WORK/dali" missing=() file sum
  sums="$(ls "$DALI_CARRY"/part*/SHA256SUMS 2>/dev/null | head -1 || true)"
  [ -n "$sums" ] || { echo "no part of $DALI_CARRY here: carry .gpu_dali/part1 … first (see launch/gpu_pack.sh)"; exit 1; }
  while read -r sum file; do
    case "$file" in *part-*) [ -f "$DALI_CARRY/$file" ] || missing+=("$file") ;; esac
  done <"$sums"
  (( ${#missing[@]} == 0 )) || { echo "parts not carried yet: ${missing[*]}"; exit 1; }
  rm -rf "$dir" && mkdir -p "$dir/wheels"
  (cd "$DALI_CARRY" && grep 'part-' "$sums" | sha256sum -c --quiet -) || { echo "a part does not match its sum"; exit 1; }
  cat $(grep 'part-' "$sums" | awk '{print $2}' | sort -t- -k3 | sed "s|^|$DALI_CARRY/|") >"$dir/dali-phase.tar"
  (cd "$dir" && grep ' dali-phase.tar$' "$sums" | sha256sum -c --quiet -) || { echo "the joined tar does not match its sum"; exit 1; }
  tar -xf "$dir/dali-phase.tar" -C "$dir/wheels"
  (cd "$dir/wheels" && sha256sum -c --quiet SHA256SUMS) || { echo "a DALI wheel does not match its sum"; exit 1; }
  note "$(grep -c 'part-' "$sums") parts joined and checked"
  install_wheels "$dir/wheels"
  if "$PYTHON" -c "import nvidia.dali" 2>/dev/null; then
    note "DALI $("$PYTHON" -c 'import nvidia.dali as d; print(d.__version__)') imports"
  else
    note "DALI does not import: the DALI steps skip"
  fi
}

data_step() {
  set -euo pipefail
  if [ -f "$DATA/shards/index.json" ] && grep -q '"test"' "$DATA/shards/index.json"; then
    note "reused $DATA/shards"; return 0
  fi
  rm -rf "$DATA"
  "$PYTHON" -m datasets synth "$DATA/raw" --preset mini --seed 0 --workers "$WORKERS"
  "$PYTHON" -m shards build "$DATA/raw/train_images" "$DATA/shards" --quiet --workers "$WORKERS"
  "$PYTHON" -m shards build "$DATA/raw/test_images" "$DATA/shards" --split test \
    --labels "$DATA/raw/test_labels.csv" --quiet --workers "$WORKERS"
}

pytest_step() {   # FILES…: under pytest; passing with every test skipped (no CUDA) = skipped
  set -uo pipefail
  local rc=0
  "$PYTHON" -m pytest -q -p no:cacheprovider -rs --basetemp "$WORK/pytest" "$@" | tee "$WORK/pytest.out" || rc=$?
  if (( rc == 0 )) && ! grep -qE "[0-9]+ passed" "$WORK/pytest.out"; then
    note "$(has_cuda && echo "every test skipped" || echo "no CUDA here: collected, every CUDA test skipped")"; exit 3
  fi
  exit $rc
}

gpu_tests_step() {
  pytest_step -m gpu $(grep -l "pytest.mark.gpu" tests/test_*.py)
}

dali_tests_step() {
  "$PYTHON" -c "import nvidia.dali" 2>/dev/null || { note "DALI does not import"; exit 3; }
  pytest_step tests/test_dali.py tests/test_dali_gpu.py tests/test_dali_channels.py
}

bench_step() {   # $1: eager | compiled
  set -euo pipefail
  has_cuda || { note "needs CUDA"; exit 3; }
  if [ "$1" = eager ]; then
    "$PYTHON" -m trainer bench gpu --compile off --batch 128 512 --steps 30 --repeats 3 --json
  else
    "$PYTHON" -m trainer bench gpu --compile on --bare off --batch 512 --steps 30 --repeats 3 --json
  fi
}

loaders_step() {
  set -euo pipefail
  local kind=torch
  [ "$PHASE" = dali ] && kind=dali
  "$PYTHON" -m datasets bench --shards "$DATA/shards" --loader "$kind" $BENCH
}

preempt_run() {   # NAME RUN ARGS…: a run sent SIGUSR2 after SIGNAL_AFTER logged steps; it must stop cleanly
  local name=$1 run=$2 pid rc=0 n=0
  shift 2
  "$PYTHON" -m trainer "$@" "run.dir=$run" &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    n=$(grep -c '"kind": "train"' "$run/history.jsonl" 2>/dev/null || true)
    (( ${n:-0} >= SIGNAL_AFTER )) && break
    sleep 0.05
  done
  kill -USR2 "$pid" 2>/dev/null || true
  wait "$pid" || rc=$?
  (( rc == 0 )) || { echo "the signalled run exited $rc"; return 1; }
  local step
  step="$("$PYTHON" -c 'import json, sys; p = json.load(open(sys.argv[1])); print("done" if p.get("done") else p["global_step"])' \
          "$run/checkpoints/last/progress.json" 2>/dev/null || echo "none")"
  case $step in
    done) echo "the run ended before the signal (it finished all its steps)"; return 1 ;;
    none) echo "the signalled run left no checkpoint"; return 1 ;;
  esac
  echo "(signalled after $n logged steps, checkpointed at step $step)" >"$WORK/results/$name.stop"
}

resume_step() {   # $1: det | nondet | dali
  set -euo pipefail
  local mode=$1 runs="$WORK/runs" ref
  local args=(--config joint_mini "data.shards=$DATA/shards" run.progress_bar=false "run.log_every=$LOG_EVERY" $TRAIN)
  case $mode in
    det) args+=(speed.deterministic=true data.loader=auto) ;;
    nondet) args+=(data.loader=auto) ;;
    dali) args+=(speed.deterministic=true data.loader=dali)
          "$PYTHON" -c "import nvidia.dali" 2>/dev/null || { note "DALI does not import"; exit 3; } ;;
  esac
  ref="$runs/reference_$mode"
  if [ "$mode" = nondet ]; then
    ref="$runs/reference_det"
    [ -f "$ref/metrics.json" ] || { note "needs the deterministic reference run of resume_det"; exit 3; }
  else
    "$PYTHON" -m trainer "${args[@]}" "run.dir=$ref"
  fi
  preempt_run "resume_$mode" "$runs/$mode" "${args[@]}"
  "$PYTHON" -m trainer resume "$runs/$mode"
  local judge=(--exact)
  [ "$mode" = nondet ] && judge=(--tolerance "$TOL")
  "$PYTHON" launch/gpu_check.py compare-runs "$ref" "$runs/$mode" --out "$WORK/results/resume_$mode.json" "${judge[@]}"
}

latency_step() {
  set -euo pipefail
  "$PYTHON" -m trainer bench latency --json $LATENCY
}

export -f note has_cuda install_wheels install_step dali_install_step data_step pytest_step gpu_tests_step \
  dali_tests_step bench_step loaders_step preempt_run resume_step latency_step

# -- the runner -----------------------------------------------------------------------------
report() {   # summary + log archive into $OUT (after every step); $1: the step to print
  export ELAPSED=$SECONDS
  "$PYTHON" launch/gpu_check.py summary "$WORK" "$OUT" ${1:+--print "$1"} \
    || echo "summary: could not be written" >&2
  tar -czf "$OUT/.logs.tar.gz.tmp" -C "$WORK" logs results notes steps.tsv 2>/dev/null \
    && mv "$OUT/.logs.tar.gz.tmp" "$OUT/logs.tar.gz"
}

step() {   # step NAME LIMIT_S COMMAND…: COMMAND (a function above) under a timeout, logged
  local name=$1 limit=$2 left rc=0 t0=$SECONDS status=ok
  shift 2
  limit=$(( limit * STRETCH ))
  left=$(( BUDGET - SECONDS - 10 ))   # 10 s kept for the summary
  if (( left < 15 )); then
    printf '%s\tskipped\t-\t0\tout of time: the budget of %s s is spent\n' "$name" "$BUDGET" >>"$WORK/steps.tsv"
    report "$name"; return 0
  fi
  (( limit > left )) && limit=$left
  echo "== $name (at most ${limit} s)"
  STEP=$name timeout --kill-after=10 "$limit" bash -c "$*" >"$WORK/logs/$name.log" 2>&1 || rc=$?
  case $rc in
    0) ;;
    3) status=skipped ;;
    124|137) status=timeout; FAILED=1 ;;
    *) status=failed; FAILED=1 ;;
  esac
  local why=""
  [ -f "$WORK/notes/$name" ] && why="$(paste -sd ';' "$WORK/notes/$name" | sed 's/;/; /g' | tr '\t' ' ')"
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$status" "$rc" "$(( SECONDS - t0 ))" "$why" >>"$WORK/steps.tsv"
  report "$name"
}

if [ "$PHASE" = core ]; then
  step install 60 install_step
  step data 90 data_step
  step bench_eager 80 bench_step eager
  step loaders 50 loaders_step
  step resume_det 90 resume_step det
  step latency 40 latency_step
  step gpu_tests 90 gpu_tests_step
  step resume_nondet 60 resume_step nondet
  step bench_compiled 240 bench_step compiled
else
  step install 60 install_step
  step dali_install 90 dali_install_step
  step data 90 data_step
  step dali_tests 120 dali_tests_step
  step loaders 60 loaders_step
  step resume_dali 120 resume_step dali
fi
echo "== done in $SECONDS s: $OUT/summary.md"
exit $FAILED
