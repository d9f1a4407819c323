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
  clang libclang-rt-dev libomp-dev   # fuzz/: clang, libFuzzer and sanitizer runtimes, OpenMP
  python3 python3-numpy python3-torch   # side-by-side PyTorch references in the tests
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
