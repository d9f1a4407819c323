#!/usr/bin/env bash
# The second README command (and CI's): install what is missing, build, run every test.
# The build has Open MPI (install_deps.sh installs it; DSV3_MPI=ON makes its absence an error),
# so `ctest` runs the MPI tests (label mpi: the communicator on 4 ranks, curate on 2) with the
# rest. Also builds the CUDA + MPI + NCCL variant (build-cuda/: every .cu file with
# warnings as errors, the CLI and the test binaries that include CUDA code) so that switch never rots, and runs what it
# can run without a GPU (label cuda_nogpu); the GPU itself is scripts/gpu_check.sh's (docs/cuda.md).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install_deps.sh
launcher=()
if command -v ccache >/dev/null 2>&1; then  # the CUDA tree's C++ files are the CPU tree's
  launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
fi
scripts/build.sh -DDSV3_MPI=ON "${launcher[@]}"
if command -v nvcc >/dev/null 2>&1 || [ -x /usr/local/cuda/bin/nvcc ]; then
  export PATH="$PATH:/usr/local/cuda/bin"
  echo "== building the CUDA + MPI (+ NCCL) variant (build-cuda/)"
  cmake -S . -B build-cuda -G Ninja -DCMAKE_BUILD_TYPE=Release -DDSV3_CUDA=ON -DDSV3_MPI=ON \
    -DDSV3_TESTS=ON "${launcher[@]}" >/dev/null
  # Only what differs from the CPU tree: dsv3lib with every .cu file, the CLI (cuda_nogpu runs
  # it) and the test binaries that include CUDA code; the other test and bench binaries are the
  # CPU tree's sources relinked, and relinking them here cost CI minutes for no new check.
  ninja -C build-cuda dsv3 test_op_harness test_cuda_host test_cuda_gpu
  (cd build-cuda && ctest -L cuda_nogpu --output-on-failure)
  echo "== CUDA kernels on a GPU: no GPU visible here, not run (scripts/gpu_check.sh runs them;"
  echo "   the CPU build above ran every kernel on the SIMT emulator: test_cuda_emulated)"
else
  echo "== nvcc not found: skipping the CUDA build"
fi
(cd build && ctest --output-on-failure -j2 --timeout 900)
# Every parser of external input under libFuzzer with ASan/UBSan, a few seconds per target on the
# generated seeds and the committed crash inputs (fuzz/README.md).
echo "== fuzzing the parsers (clang, build-fuzz/)"
cmake -S fuzz -B build-fuzz -G Ninja -DCMAKE_CXX_COMPILER=clang++ >/dev/null
ninja -C build-fuzz
(cd build-fuzz && ctest --output-on-failure -j2)
