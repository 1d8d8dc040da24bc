#!/usr/bin/env bash
# Create .venv and install the project with the tested, pinned dependency set.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --upgrade pip
# DALI (the `dali` extra) has wheels for Linux x86-64 only; elsewhere the other loaders serve.
extras=dev
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] && extras=dev,dali
.venv/bin/pip install -q -c constraints.txt -e ".[$extras]"
echo "installed .[$extras] into .venv"

