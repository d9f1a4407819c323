#!/usr/bin/env bash
# Fills .gpu-deps/ (git-ignored) with the Debian packages of the libraries dsv3 links, for a GPU
# machine without a package registry: run it here, carry .gpu-deps along with the tree, and
# scripts/gpu_check.sh unpacks them into a private prefix (dpkg -x, never into /) when the
# machine lacks a library. Downloads only (apt-get download): installs nothing here.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .gpu-deps
grep -qx '/.gpu-deps/' .git/info/exclude 2>/dev/null || echo '/.gpu-deps/' >> .git/info/exclude
pkgs=(
  libopenblas-openmp-dev libopenblas0-openmp libopenblas-dev
  libdnnl-dev libdnnl2
  nlohmann-json3-dev zlib1g-dev
  libpcre2-dev libpcre2-8-0 libpcre2-16-0 libpcre2-32-0 libpcre2-posix3
  libzstd-dev libutf8proc-dev libutf8proc2 libxxhash-dev libxxhash0
  libgtest-dev
  libopenmpi-dev libopenmpi3 openmpi-bin openmpi-common libhwloc15 libevent-core-2.1-7
  libevent-pthreads-2.1-7 libpmix2 libfabric1 libucx0 libpsm2-2 libibverbs1 librdmacm1 libnl-3-200
  libnl-route-3-200 libmunge2 libjson-c5 libcap2 libnuma1
)
cd .gpu-deps
for p in "${pkgs[@]}"; do
  apt-get download "$p" >/dev/null 2>&1 || echo "note: $p not downloadable here (another name on this release?)"
done
du -sh . && ls
