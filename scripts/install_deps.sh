#!/usr/bin/env bash
# Installs the Debian packages dsv3 needs, skipping those already present. Idempotent.
set -euo pipefail
sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
pkgs=(
  build-essential cmake ninja-build pkg-config
  ccache                   # scripts/test.sh: the CUDA tree's C++ files come from the CPU tree's
  libopenblas-openmp-dev   # BLAS for CPU GEMM; the OpenMP build cooperates with our threads
  libdnnl-dev              # oneDNN: bf16 GEMM (AVX512-BF16); its OpenMP runtime is our libgomp
  nlohmann-json3-dev zlib1g-dev
  libpcre2-dev             # the tokenizer's pre-tokenisation regexes (PCRE2 with JIT)
  libzstd-dev libutf8proc-dev libxxhash-dev   # dsv3 curate: .zst, NFC, dedup hashes
  libgtest-dev
  libopenmpi-dev openmpi-bin   # the MPI communicator (-DDSV3_MPI=ON)
  libcpp-httplib-dev       # dsv3 serve's HTTP server
  clang libclang-rt-dev libomp-dev   # fuzz/: clang, libFuzzer and sanitizer runtimes, OpenMP
  python3 python3-numpy python3-torch   # side-by-side PyTorch references in the tests
  python3-pip              # PyPI packages for the Python tests (below)
  curl                     # the server tests
  chromium python3-pil     # dsv3 report: rendered headless to PNG and inspected by a test
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# PyPI packages the Python tests import, for Debian's interpreter (ctest runs them with it; pip
# puts them in /usr/local, beside Debian's own; Debian packages none of them):
#   openai       the official client drives `dsv3 serve` (tests/python/test_server.py)
#   tensorboard  TensorBoard's own reader checks dsv3's event files (test_tensorboard.py)
#   gguf         llama.cpp's own Python package reads the GGUF export (test_gguf_export.py)
#   sacrebleu    the reference BLEU (13a tokenisation) for `dsv3 evaluate` (test_evaluate.py)
py_missing=()
for spec in "openai:openai>=1.0" "tensorboard:tensorboard" "gguf:gguf==0.19.0" "sacrebleu:sacrebleu==2.6.0"; do
  /usr/bin/python3 -c "import ${spec%%:*}" 2>/dev/null || py_missing+=("${spec#*:}")
done
if ((${#py_missing[@]})); then
  echo "installing from PyPI for /usr/bin/python3: ${py_missing[*]}"
  $sudo_cmd /usr/bin/python3 -m pip install -q --break-system-packages --root-user-action=ignore \
    "${py_missing[@]}"
fi
