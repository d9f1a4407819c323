#!/usr/bin/env bash
# Creates (idempotently) the virtual environment of the PyTorch 2.x peer that bench/bench_train.py
# runs bench/peer_deepseek.py in: .venv-peer/ at the repo root, with the newest torch 2.x wheel,
# numpy and Hugging Face transformers (bench/bench_infer.py's `generate` peer, which loads dsv3's
# HF export as DeepseekV3ForCausalLM) from PyPI, then checks that eager mode and torch.compile
# (inductor, which builds C++ with the system g++) both work on the CPU.
#
#   bench/setup_peer_venv.sh            # create or reuse; prints the venv's python on the last line
#   PEER_VENV=/some/dir bench/setup_peer_venv.sh
#   PEER_TORCH_INDEX=https://download.pytorch.org/whl/cpu bench/setup_peer_venv.sh   # CPU-only wheels
#   PEER_TORCH_SPEC='torch==2.5.1' bench/setup_peer_venv.sh                            # pin a version
#
# Plain PyPI's Linux torch wheel pulls the CUDA runtime wheels too (several GB): fine for a
# benchmark run by hand, never for CI (CI does not run this). The venv writes its own
# .gitignore ('*'), so git ignores it without a line in the repo's .gitignore.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${PEER_VENV:-$REPO/.venv-peer}"
SPEC="${PEER_TORCH_SPEC:-torch>=2,<3}"

# The pyenv interpreter (3.11), not Debian's /usr/bin/python3 (which carries PyTorch 1.13).
PY="${PEER_PYTHON:-}"
if [[ -z "$PY" ]]; then
  for cand in "$(command -v python3.11 || true)" "$(command -v python3 || true)"; do
    if [[ -n "$cand" && "$cand" != /usr/bin/python3* ]]; then PY="$cand"; break; fi
  done
fi
[[ -n "$PY" ]] || { echo "setup_peer_venv: no non-system python3 found (set PEER_PYTHON)" >&2; exit 1; }
command -v g++ >/dev/null || { echo "setup_peer_venv: g++ is needed by torch.compile (apt-get install g++)" >&2; exit 1; }

check() {
  "$VENV/bin/python" - <<'EOF'
import os, sys, tempfile
import numpy, torch, transformers
assert int(torch.__version__.split(".")[0]) >= 2, torch.__version__
from transformers import DeepseekV3ForCausalLM  # noqa: F401  (transformers >= 4.51)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", os.path.join(tempfile.gettempdir(), "dsv3-peer-inductor"))
lin = torch.nn.Linear(16, 16)
f = torch.compile(lambda x: torch.nn.functional.silu(lin(x)).sum())
x = torch.randn(4, 16)
y = f(x)
y.backward()
assert torch.allclose(y, torch.nn.functional.silu(lin(x)).sum(), rtol=1e-4, atol=1e-4)
print("torch %s, numpy %s, transformers %s, python %s: eager + torch.compile (inductor) OK"
      % (torch.__version__, numpy.__version__, transformers.__version__, sys.version.split()[0]))
EOF
}

if [[ -x "$VENV/bin/python" ]] && check 2>/dev/null; then
  echo "$VENV/bin/python"
  exit 0
fi

if [[ ! -x "$VENV/bin/python" ]]; then
  echo "setup_peer_venv: creating $VENV with $PY ($("$PY" --version 2>&1))" >&2
  "$PY" -m venv "$VENV"
fi
printf '*\n' > "$VENV/.gitignore"
"$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
if [[ -n "${PEER_TORCH_INDEX:-}" ]]; then
  "$VENV/bin/python" -m pip install --upgrade --index-url "$PEER_TORCH_INDEX" "$SPEC" >&2
else
  "$VENV/bin/python" -m pip install --upgrade "$SPEC" >&2
fi
"$VENV/bin/python" -m pip install --upgrade numpy "transformers>=4.51" safetensors >&2
check >&2
echo "$VENV/bin/python"
