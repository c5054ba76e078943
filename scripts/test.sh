#!/usr/bin/env bash
# README's test command: make sure llama-server is installed and runs here (built once, about
# 5 minutes on 2 cores, then kept; see install_llama_server.sh), then run the whole test suite,
# real models and real loopback servers included. Extra arguments go to pytest.
#
#   bash scripts/test.sh                 # everything, as CI runs it
#   bash scripts/test.sh tests/test_remote.py -x
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
VENV="$VENV" bash scripts/install_llama_server.sh
exec "$VENV/bin/python" -m pytest -q "$@"
