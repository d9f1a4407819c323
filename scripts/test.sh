#!/usr/bin/env bash
# The second README command (and CI's): install what is missing, build, run every test.
# The build has Open MPI (install_deps.sh installs it; DSV3_MPI=ON makes its absence an error),
# so `ctest` runs the MPI tests (label mpi: the communicator on 4 ranks, curate on 2) with the
# rest. Also compiles the CUDA variant (no GPU needed) so that switch never rots.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
scripts/build.sh -DDSV3_MPI=ON
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="$PATH:/usr/local/cuda/bin"
  echo "== compiling the CUDA + MPI variant (build-cuda/)"
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_CUDA=ON -DDSV3_MPI=ON \
    -DDSV3_TESTS=ON >/dev/null
  ninja -C build-cuda dsv3 test_comm_mpi test_curate_mpi
else
  echo "== nvcc not found: skipping the CUDA compile check"
fi
(cd build && ctest --output-on-failure -j2 --timeout 900)
# Every parser of external input under libFuzzer with ASan/UBSan, a few seconds per target on the
# generated seeds and the committed crash inputs (fuzz/README.md).
echo "== fuzzing the parsers (clang, build-fuzz/)"
cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
ninja -C build-fuzz
(cd build-fuzz && ctest --output-on-failure -j2)
