#!/usr/bin/env bash
# The README's two commands: `scripts/quickstart.sh run` and `scripts/quickstart.sh test`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
case "${1:-}" in
  run)  shift; exec .venv/bin/python -m compress.run recipes/default.yaml "$@" ;;
  test) shift; exec .venv/bin/python -m pytest "$@" ;;
  *)    echo "usage: scripts/quickstart.sh run|test [extra args]" >&2; exit 2 ;;
esac
