// Linked when the build has no NCCL communicator (DSV3_NCCL: needs CUDA, MPI and NCCL).
#include "core/check.h"
#include "dist/comm_nccl.h"

namespace dsv3::dist {

struct NcclComm::Impl {};

namespace {
[[noreturn]] void unavailable() {
  fail("this dsv3 was built without NCCL: configure with -DDSV3_CUDA=ON and Open MPI installed "
       "(NCCL is found beside the CUDA toolkit, or set -DDSV3_NCCL=ON to require it)");
}
}  // namespace

NcclComm NcclComm::create(const Comm&) { unavailable(); }
int NcclComm::rank() const { unavailable(); }
int NcclComm::size() const { unavailable(); }
void NcclComm::all_reduce(void*, size_t, DType, ReduceOp, void*) const { unavailable(); }
void NcclComm::reduce_scatter(const void*, void*, size_t, DType, ReduceOp, void*) const { unavailable(); }
void NcclComm::all_gather(const void*, void*, size_t, DType, void*) const { unavailable(); }
void NcclComm::all_to_all(const void*, void*, size_t, DType, void*) const { unavailable(); }
void NcclComm::all_to_allv(const void*, Pieces, void*, Pieces, DType, void*) const { unavailable(); }
void NcclComm::broadcast(void*, size_t, DType, int, void*) const { unavailable(); }
void NcclComm::send(const void*, size_t, DType, int, void*) const { unavailable(); }
void NcclComm::recv(void*, size_t, DType, int, void*) const { unavailable(); }
int select_local_gpu(const Comm&) { unavailable(); }
const char* nccl_backend_name() { return "none"; }

}  // namespace dsv3::dist
