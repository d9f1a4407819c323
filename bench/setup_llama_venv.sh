#!/usr/bin/env bash
# Creates (idempotently) the virtual environment bench/bench_gguf.py runs llama.cpp in:
# .venv-llama/ at the repo root with llama-cpp-python from PyPI, which compiles llama.cpp from
# source for this CPU (several minutes on 2 cores), plus numpy. A benchmark tool, never CI's.
#
#   bench/setup_llama_venv.sh               # create or reuse; prints the venv's python last
#   LLAMA_VENV=/some/dir bench/setup_llama_venv.sh
#   LLAMA_SPEC='llama-cpp-python==0.3.36' bench/setup_llama_venv.sh   # the version measured
#
# The venv writes its own .gitignore ('*').
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${LLAMA_VENV:-$REPO/.venv-llama}"
SPEC="${LLAMA_SPEC:-llama-cpp-python==0.3.36}"

# The pyenv interpreter (3.11), not Debian's /usr/bin/python3 (externally managed).
PY="${LLAMA_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in "$(command -v python3.11 || true)" "$(command -v python3 || true)"; do
    if [[ -n "$cand" && "$cand" != /usr/bin/python3* ]]; then PY="$cand"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "setup_llama_venv: no non-system python3 found (set LLAMA_PYTHON)" >&2; exit 1; }
for tool in cmake g++; do
  command -v "$tool" >/dev/null || { echo "setup_llama_venv: $tool is needed to build llama.cpp" >&2; exit 1; }
done

check() {
  "$VENV/bin/python" -c "import llama_cpp, numpy; print('llama-cpp-python', llama_cpp.__version__, 'numpy', numpy.__version__)"
}

if [[ -x "$VENV/bin/python" ]] && check >/dev/null 2>&1; then
  echo "$VENV/bin/python"
  exit 0
fi
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup_llama_venv: creating $VENV with $PY ($("$PY" --version 2>&1))" >&2
  "$PY" -m venv "$VENV"
fi
printf '*\n' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install --quiet --upgrade pip numpy >&2
# CPU build for this machine (GGML_NATIVE: -march=native, as dsv3 is built); 2 parallel jobs
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=ON}" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  "$VENV/bin/python" -m pip install --no-cache-dir "$SPEC" >&2
check >&2
echo "$VENV/bin/python"
