// Communicator (P1). Declared once; CMake links exactly one implementation: comm_stub.cpp
// (single process, the default) or comm_mpi.cpp (DSV3_MPI=ON). NCCL joins with the CUDA backend.
#pragma once
#include <cstddef>

namespace dsv3::dist {

void init(int* argc, char*** argv);  // idempotent
void finalize();
int rank();
int world_size();
void all_reduce_sum(float* data, size_t n);  // in place, every rank gets the sum
void barrier();
const char* backend_name();  // "stub" | "mpi"

}  // namespace dsv3::dist
