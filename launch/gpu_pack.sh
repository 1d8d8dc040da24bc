#!/usr/bin/env bash
# Pack, here (PyPI reachable), every wheel the GPU node lacks, so that launch/gpu_check.sh
# installs them there with no network. The node: Python 3.12, x86-64, torch 2.11 for CUDA 13,
# the packages of launch/gpu_node_packages.txt, no package index. A run on it copies the
# working tree plus at most 8 named git-ignored folders, 64 MiB in all.
#
#   bash launch/gpu_pack.sh           # core phase: .gpu_carry/ (webdataset, braceexpand; ~0.1 MiB)
#   bash launch/gpu_pack.sh --dali    # the DALI phase: .gpu_dali/part1 … partN (≤ 55 MiB each;
#                                     # the core folder too when it is missing)
#   bash launch/gpu_pack.sh --check   # on the node (no network): which carried parts are there, intact
#
# The runs on the node (command; folders carried; limit):
#   Core phase, one run, ends within 7 minutes:
#     PYTHON=python3 bash launch/gpu_check.sh          carry: .gpu_carry           limit 480 s
#   DALI phase, N runs while the node stays warm (a carried folder stays on a warm node; the
#   pack prints N, 5 for DALI 2.4.0): one run per part, then the check itself with the last part:
#     bash launch/gpu_pack.sh --check                  carry: .gpu_dali/part1      limit 60 s
#     … the same for part2 … partN-1
#     PYTHON=python3 bash launch/gpu_check.sh --dali   carry: .gpu_dali/partN .gpu_carry   limit 420 s
#   A part carried in a run that failed is simply carried again; `--check` says what is missing.
#
# What goes in: each phase's packages with their dependencies, resolved by pip for cp312
# manylinux x86-64, minus what the node has. The core pins come from constraints.txt; DALI is
# nvidia-dali-cuda130 (the node's CUDA 13), DALI_VERSION (default 2.4.0). Each folder gets a
# SHA256SUMS that gpu_check.sh checks before installing anything.
# Environment: PYTHON (the pip to download with; default .venv/bin/python, else python3),
# CARRY (default .gpu_carry), DALI_CARRY (default .gpu_dali), DALI_VERSION; for tests,
# DALI_WHEELS (a folder of wheels to split instead of downloading) and GPU_PART_SIZE (split -b).
set -euo pipefail
cd "$(dirname "$0")/.."

MODE=core
case "${1:-}" in
  "") ;;
  --dali) MODE=dali ;;
  --check) MODE=check ;;
  *) echo "usage: bash launch/gpu_pack.sh [--dali | --check]" >&2; exit 2 ;;
esac
if [ -z "${PYTHON:-}" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
CARRY="${CARRY:-.gpu_carry}"
DALI_CARRY="${DALI_CARRY:-.gpu_dali}"
DALI_VERSION="${DALI_VERSION:-2.4.0}"
CORE_PACKAGES=(webdataset braceexpand)   # what the project imports and the node lacks
CORE_LIMIT=$((60 * 1024 * 1024))
PART_SIZE="${GPU_PART_SIZE:-55M}"        # with the ~1 MiB working tree, under a run's 64 MiB

die() { echo "gpu_pack: $*" >&2; exit 1; }
norm() { tr 'A-Z_.' 'a-z--'; }           # a distribution name as pip compares it
on_node() { grep -v '^#' launch/gpu_node_packages.txt | norm | grep -qxF "$(echo "$1" | norm)"; }

pin() {   # NAME -> NAME==VERSION from constraints.txt (the tested set)
  local line
  line="$(grep -i "^$1==" constraints.txt | head -1)" || die "constraints.txt pins no version of $1"
  echo "$line"
}

download() {   # DIR SPEC…: the wheels of SPEC… and their dependencies, for the node's Python
  local dir=$1
  shift
  "$PYTHON" -m pip download -q --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir" "$@" 2> >(grep -v "neither a file nor a directory" >&2) || die "pip download $* failed (no network, or no cp312 manylinux wheel)"
}

drop_node_packages() {   # DIR: remove the wheels of distributions the node has
  local w name
  for w in "$1"/*.whl; do
    name="$(basename "$w" | cut -d- -f1)"
    if on_node "$name"; then rm "$w"; fi
  done
}

pack_core() {
  local tmp specs=() p size
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  for p in "${CORE_PACKAGES[@]}"; do specs+=("$(pin "$p")"); done
  download "$tmp/w" "${specs[@]}"
  drop_node_packages "$tmp/w"
  (cd "$tmp/w" && sha256sum -- *.whl >SHA256SUMS)
  size=$(du -sb "$tmp/w" | cut -f1)
  (( size <= CORE_LIMIT )) || die "the core carry would be $size bytes, over 60 MiB"
  rm -rf "$CARRY.tmp" && mv "$tmp/w" "$CARRY.tmp" && rm -rf "$CARRY" && mv "$CARRY.tmp" "$CARRY"
  echo "core phase: $CARRY ($size bytes):"
  (cd "$CARRY" && ls -1 -- *.whl | sed 's/^/  /')
}

pack_dali() {
  local tmp n k part
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  if [ -n "${DALI_WHEELS:-}" ]; then
    mkdir "$tmp/w" && cp "$DALI_WHEELS"/*.whl "$tmp/w/"
  else
    download "$tmp/w" "nvidia-dali-cuda130==$DALI_VERSION"
  fi
  drop_node_packages "$tmp/w"
  (cd "$tmp/w" && sha256sum -- *.whl >SHA256SUMS && tar -cf ../dali-phase.tar -- *.whl SHA256SUMS)
  mkdir "$tmp/parts"
  (cd "$tmp/parts" && split -b "$PART_SIZE" -a 2 ../dali-phase.tar dali-phase.tar.part-)
  n=$(ls "$tmp/parts" | wc -l)
  rm -rf "$DALI_CARRY.tmp" && mkdir "$DALI_CARRY.tmp"
  k=0
  for part in $(ls "$tmp/parts" | sort); do
    k=$((k + 1))
    mkdir "$DALI_CARRY.tmp/part$k"
    mv "$tmp/parts/$part" "$DALI_CARRY.tmp/part$k/"
  done
  (cd "$DALI_CARRY.tmp" && sha256sum -- part*/dali-phase.tar.part-* >SHA256SUMS.parts \
     && (cd "$tmp" && sha256sum dali-phase.tar) >>SHA256SUMS.parts)
  for part in "$DALI_CARRY.tmp"/part*/; do cp "$DALI_CARRY.tmp/SHA256SUMS.parts" "$part/SHA256SUMS"; done
  rm "$DALI_CARRY.tmp/SHA256SUMS.parts"
  rm -rf "$DALI_CARRY" && mv "$DALI_CARRY.tmp" "$DALI_CARRY"
  echo "DALI phase: $DALI_CARRY, $n parts (carry one a run; the last with $CARRY):"
  (cd "$DALI_CARRY" && du -sh part* | sed 's/^/  /')
  sed 's/^/  /' <(cd "$tmp/w" && ls -1 -- *.whl)
}

check() {   # on the node: what has been carried so far, each file checked against its sum
  local sums found=0 total rc=0
  if [ -f "$CARRY/SHA256SUMS" ]; then
    (cd "$CARRY" && sha256sum -c --quiet SHA256SUMS) && echo "core: $CARRY intact" || rc=1
  else
    echo "core: $CARRY not here"
  fi
  sums="$(ls "$DALI_CARRY"/part*/SHA256SUMS 2>/dev/null | head -1 || true)"
  if [ -z "$sums" ]; then echo "dali: no part of $DALI_CARRY here"; return $rc; fi
  total=$(grep -c 'part-' "$sums")
  while read -r sum file; do
    case "$file" in *part-*) ;; *) continue ;; esac
    if [ ! -f "$DALI_CARRY/$file" ]; then echo "dali: $file missing"; continue; fi
    if echo "$sum  $DALI_CARRY/$file" | sha256sum -c --quiet - 2>/dev/null; then
      found=$((found + 1)); echo "dali: $file ok"
    else
      echo "dali: $file CORRUPT (carry it again)"; rc=1
    fi
  done <"$sums"
  echo "dali: $found of $total parts here"
  return $rc
}

case $MODE in
  core) pack_core ;;
  dali) [ -f "$CARRY/SHA256SUMS" ] || pack_core; pack_dali ;;
  check) check ;;
esac
