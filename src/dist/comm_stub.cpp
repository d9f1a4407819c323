// Single-process communicator: rank 0 of 1; reductions are the identity.
#include "dist/comm.h"

namespace dsv3::dist {
void init(int*, char***) {}
void finalize() {}
int rank() { return 0; }
int world_size() { return 1; }
void all_reduce_sum(float*, size_t) {}
void barrier() {}
std::vector<std::string> all_gather_bytes(const std::string& mine) { return {mine}; }
void broadcast_bytes(std::string&, int) {}
const char* backend_name() { return "stub"; }
}  // namespace dsv3::dist
