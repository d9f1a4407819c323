// Communicator (P1). Declared once; CMake links exactly one implementation: comm_stub.cpp
// (single process, the default) or comm_mpi.cpp (DSV3_MPI=ON). NCCL joins with the CUDA backend.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

namespace dsv3::dist {

void init(int* argc, char*** argv);  // idempotent
void finalize();
int rank();
int world_size();
void all_reduce_sum(float* data, size_t n);  // in place, every rank gets the sum
void barrier();
// Every rank contributes a byte buffer of any length; every rank gets all of them, indexed by
// rank. Sizes beyond 2 GiB are fine (sent in pieces). Used by `dsv3 curate` for global dedup.
std::vector<std::string> all_gather_bytes(const std::string& mine);
// `data` on `root` is copied to every rank (resized there).
void broadcast_bytes(std::string& data, int root);
const char* backend_name();  // "stub" | "mpi"

}  // namespace dsv3::dist
