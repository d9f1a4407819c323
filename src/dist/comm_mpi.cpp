// Open MPI communicator. Data-parallel training over it arrives with the parallelism issue; the
// foundation only needs the seam to build and a correct all-reduce.
#include <mpi.h>

#include <algorithm>

#include "core/check.h"
#include "dist/comm.h"

namespace dsv3::dist {

static bool we_initialised = false;

void init(int* argc, char*** argv) {
  int inited = 0;
  MPI_Initialized(&inited);
  if (!inited) {
    DSV3_CHECK(MPI_Init(argc, argv) == MPI_SUCCESS, "MPI_Init failed");
    we_initialised = true;
  }
}
void finalize() {
  if (we_initialised) MPI_Finalize();
  we_initialised = false;
}
int rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}
void all_reduce_sum(float* data, size_t n) {
  const size_t chunk = size_t(1) << 30;  // MPI counts are int
  for (size_t off = 0; off < n; off += chunk) {
    int count = int(std::min(chunk, n - off));
    DSV3_CHECK(MPI_Allreduce(MPI_IN_PLACE, data + off, count, MPI_FLOAT, MPI_SUM,
                             MPI_COMM_WORLD) == MPI_SUCCESS,
               "MPI_Allreduce failed");
  }
}
void barrier() { MPI_Barrier(MPI_COMM_WORLD); }

void broadcast_bytes(std::string& data, int root) {
  unsigned long long n = data.size();
  DSV3_CHECK(MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, root, MPI_COMM_WORLD) == MPI_SUCCESS,
             "MPI_Bcast failed");
  data.resize(size_t(n));
  const size_t chunk = size_t(1) << 30;  // MPI counts are int
  for (size_t off = 0; off < n; off += chunk) {
    const int count = int(std::min<size_t>(chunk, size_t(n) - off));
    DSV3_CHECK(MPI_Bcast(data.data() + off, count, MPI_BYTE, root, MPI_COMM_WORLD) ==
                   MPI_SUCCESS,
               "MPI_Bcast failed");
  }
}

std::vector<std::string> all_gather_bytes(const std::string& mine) {
  // One broadcast per rank: simple, any size, and the volume is what an all-gather moves anyway.
  const int n = world_size(), me = rank();
  std::vector<std::string> all(static_cast<size_t>(n));
  for (int r = 0; r < n; r++) {
    if (r == me) all[size_t(r)] = mine;
    broadcast_bytes(all[size_t(r)], r);
  }
  return all;
}
const char* backend_name() { return "mpi"; }

}  // namespace dsv3::dist
