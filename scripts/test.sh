#!/usr/bin/env bash
# The second README command (and CI's): install what is missing, build, run every test.
# Also compiles the CUDA and MPI variants (no GPU needed) so those switches never rot.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="$PATH:/usr/local/cuda/bin"
  echo "== compiling the CUDA + MPI variant (build-cuda/)"
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_CUDA=ON -DDSV3_MPI=ON \
    -DDSV3_TESTS=ON >/dev/null
  ninja -C build-cuda dsv3 test_curate_mpi
  echo "== MPI tests (ctest -L mpi in build-cuda/)"
  (cd build-cuda && ctest -L mpi --output-on-failure --timeout 600)
else
  echo "== nvcc not found: skipping the CUDA compile check"
fi
cd build
ctest --output-on-failure -j2 --timeout 900
