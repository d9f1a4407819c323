#!/usr/bin/env bash
# Installs the Debian packages dsv3 needs, skipping those already present. Idempotent.
set -euo pipefail
pkgs=(
  build-essential cmake ninja-build pkg-config
  libopenblas-openmp-dev   # BLAS for CPU GEMM; the OpenMP build cooperates with our threads
  libdnnl-dev              # oneDNN: bf16 GEMM (AVX512-BF16); its OpenMP runtime is our libgomp
  nlohmann-json3-dev zlib1g-dev
  libpcre2-dev             # the tokenizer's pre-tokenisation regexes (PCRE2 with JIT)
  libzstd-dev libutf8proc-dev libxxhash-dev   # dsv3 curate: .zst, NFC, dedup hashes
  libgtest-dev
  libopenmpi-dev openmpi-bin   # the MPI communicator (-DDSV3_MPI=ON)
  python3 python3-numpy python3-torch   # side-by-side PyTorch references in the tests
  libcpp-httplib-dev       # dsv3 serve's HTTP server
  curl python3-pip         # the server tests (curl, and pip for the openai client below)
)
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "installing: ${missing[*]}"
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# The server tests drive `dsv3 serve` with the official OpenAI Python client, under Debian's
# interpreter (the one ctest runs Python tests with); it is not packaged by Debian.
if ! /usr/bin/python3 -c "import openai" 2>/dev/null; then
  echo "installing the openai Python client for /usr/bin/python3"
  /usr/bin/python3 -m pip install --quiet --break-system-packages "openai>=1.0"
fi
