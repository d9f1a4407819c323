// NCCL communicator (comm_nccl.h): device buffers, collectives on a CUDA stream, the NCCL unique
// id created by rank 0 and broadcast over the MPI Comm the group is made from.
#include <cuda_runtime.h>
#include <nccl.h>

#include <cstring>
#include <string>
#include <vector>

#include <unistd.h>

#include "core/check.h"
#include "dist/comm_local.h"
#include "dist/comm_nccl.h"

namespace dsv3::dist {

using detail::Where;

struct NcclComm::Impl {
  ncclComm_t comm = nullptr;
  int rank = 0, size = 1;
  ~Impl() {
    if (comm) ncclCommDestroy(comm);
  }
};

namespace {

ncclDataType_t nccl_type(DType t) {
  switch (t) {
    case DType::F32: return ncclFloat32;
    case DType::F64: return ncclFloat64;
    case DType::BF16: return ncclBfloat16;
    case DType::F16: return ncclFloat16;
    case DType::I32: return ncclInt32;
    case DType::I64: return ncclInt64;
    case DType::U8: return ncclUint8;
  }
  return ncclUint8;
}

ncclRedOp_t nccl_op(ReduceOp op) {
  switch (op) {
    case ReduceOp::Sum: return ncclSum;
    case ReduceOp::Max: return ncclMax;
    case ReduceOp::Min: return ncclMin;
  }
  return ncclSum;
}

cudaStream_t stream_of(void* s) { return s ? static_cast<cudaStream_t>(s) : cudaStreamPerThread; }

void check(const Where& w, ncclResult_t r, const char* fn) {
  if (r != ncclSuccess) detail::fail_at(w, cat(fn, " failed: ", ncclGetErrorString(r)));
}
void check_cuda(const Where& w, cudaError_t e, const char* fn) {
  if (e != cudaSuccess) detail::fail_at(w, cat(fn, " failed: ", cudaGetErrorString(e)));
}

// NCCL moves device memory only: a host pointer is an argument error, caught before any call.
void check_device_buffer(const Where& w, const void* p, size_t count, const char* name) {
  detail::check_buffer(w, p, count, name);
  if (count == 0) return;
  cudaPointerAttributes a{};
  const cudaError_t e = cudaPointerGetAttributes(&a, p);
  if (e != cudaSuccess || a.type != cudaMemoryTypeDevice) {
    (void)cudaGetLastError();
    detail::fail_at(w, cat(name, " is not device memory (NCCL moves GPU buffers; use dist::Comm for host ones)"));
  }
}

const NcclComm::Impl& active(const std::shared_ptr<NcclComm::Impl>& impl, const char* op) {
  DSV3_CHECK(impl, "dist::", op, ": null NcclComm (create() it first)");
  return *impl;
}

}  // namespace

NcclComm NcclComm::create(const Comm& group) {
  const Where w{"NcclComm::create", group.rank(), group.size()};
  ncclUniqueId id{};
  if (group.rank() == 0) check(w, ncclGetUniqueId(&id), "ncclGetUniqueId");
  std::string bytes(reinterpret_cast<const char*>(&id), sizeof id);
  group.broadcast_bytes(bytes, 0);
  if (bytes.size() != sizeof id) detail::fail_at(w, "the NCCL id broadcast over MPI arrived truncated");
  std::memcpy(&id, bytes.data(), sizeof id);
  NcclComm c;
  c.impl_ = std::make_shared<Impl>();
  c.impl_->rank = group.rank();
  c.impl_->size = group.size();
  check(w, ncclCommInitRank(&c.impl_->comm, group.size(), id, group.rank()), "ncclCommInitRank");
  return c;
}

int NcclComm::rank() const { return active(impl_, "rank").rank; }
int NcclComm::size() const { return active(impl_, "size").size; }

void NcclComm::all_reduce(void* data, size_t count, DType dtype, ReduceOp op, void* stream) const {
  const Impl& c = active(impl_, "all_reduce");
  const Where w{"all_reduce", c.rank, c.size};
  check_device_buffer(w, data, count, "data");
  if (count == 0) return;
  check(w, ncclAllReduce(data, data, count, nccl_type(dtype), nccl_op(op), c.comm, stream_of(stream)),
        "ncclAllReduce");
}

void NcclComm::reduce_scatter(const void* send, void* recv, size_t count, DType dtype, ReduceOp op,
                              void* stream) const {
  const Impl& c = active(impl_, "reduce_scatter");
  const Where w{"reduce_scatter", c.rank, c.size};
  check_device_buffer(w, send, count * size_t(c.size), "send");
  check_device_buffer(w, recv, count, "recv");
  if (count == 0) return;
  check(w, ncclReduceScatter(send, recv, count, nccl_type(dtype), nccl_op(op), c.comm, stream_of(stream)),
        "ncclReduceScatter");
}

void NcclComm::all_gather(const void* send, void* recv, size_t count, DType dtype,
                          void* stream) const {
  const Impl& c = active(impl_, "all_gather");
  const Where w{"all_gather", c.rank, c.size};
  check_device_buffer(w, send, count, "send");
  check_device_buffer(w, recv, count * size_t(c.size), "recv");
  if (count == 0) return;
  check(w, ncclAllGather(send, recv, count, nccl_type(dtype), c.comm, stream_of(stream)), "ncclAllGather");
}

void NcclComm::all_to_all(const void* send, void* recv, size_t count, DType dtype,
                          void* stream) const {
  const Impl& c = active(impl_, "all_to_all");
  std::vector<size_t> counts(size_t(c.size), count);
  all_to_allv(send, {counts}, recv, {counts}, dtype, stream);
}

void NcclComm::all_to_allv(const void* send, Pieces sp, void* recv, Pieces rp, DType dtype,
                           void* stream) const {
  const Impl& c = active(impl_, "all_to_allv");
  const Where w{"all_to_allv", c.rank, c.size};
  const std::vector<size_t> so = detail::piece_offsets(w, sp, send, "send");
  const std::vector<size_t> ro = detail::piece_offsets(w, rp, recv, "recv");
  size_t send_end = 0, recv_end = 0;
  for (int p = 0; p < c.size; p++) {
    send_end = std::max(send_end, so[size_t(p)] + sp.counts[size_t(p)]);
    recv_end = std::max(recv_end, ro[size_t(p)] + rp.counts[size_t(p)]);
  }
  check_device_buffer(w, send, send_end, "send");
  check_device_buffer(w, recv, recv_end, "recv");
  const size_t me = size_t(c.rank), es = dtype_size(dtype);
  if (sp.counts[me] != rp.counts[me])
    detail::fail_at(w, cat("sends ", sp.counts[me], " elements to itself but expects ", rp.counts[me]));
  const cudaStream_t s = stream_of(stream);
  auto at = [&](const void* base, size_t off) { return static_cast<const char*>(base) + off * es; };
  if (rp.counts[me] > 0)
    check_cuda(w, cudaMemcpyAsync(const_cast<char*>(at(recv, ro[me])), at(send, so[me]), rp.counts[me] * es,
                                  cudaMemcpyDeviceToDevice, s),
               "cudaMemcpyAsync");
  check(w, ncclGroupStart(), "ncclGroupStart");
  for (int p = 0; p < c.size; p++) {
    if (p == c.rank) continue;
    if (sp.counts[size_t(p)] > 0)
      check(w, ncclSend(at(send, so[size_t(p)]), sp.counts[size_t(p)], nccl_type(dtype), p, c.comm, s),
            "ncclSend");
    if (rp.counts[size_t(p)] > 0)
      check(w, ncclRecv(const_cast<char*>(at(recv, ro[size_t(p)])), rp.counts[size_t(p)], nccl_type(dtype), p,
                        c.comm, s),
            "ncclRecv");
  }
  check(w, ncclGroupEnd(), "ncclGroupEnd");
}

void NcclComm::broadcast(void* data, size_t count, DType dtype, int root, void* stream) const {
  const Impl& c = active(impl_, "broadcast");
  const Where w{"broadcast", c.rank, c.size};
  detail::check_root(w, root);
  check_device_buffer(w, data, count, "data");
  if (count == 0) return;
  check(w, ncclBroadcast(data, data, count, nccl_type(dtype), root, c.comm, stream_of(stream)),
        "ncclBroadcast");
}

void NcclComm::send(const void* data, size_t count, DType dtype, int peer, void* stream) const {
  const Impl& c = active(impl_, "send");
  const Where w{"send", c.rank, c.size};
  detail::check_peer_tag(w, peer, 0);
  check_device_buffer(w, data, count, "data");
  check(w, ncclSend(data, count, nccl_type(dtype), peer, c.comm, stream_of(stream)), "ncclSend");
}

void NcclComm::recv(void* data, size_t count, DType dtype, int peer, void* stream) const {
  const Impl& c = active(impl_, "recv");
  const Where w{"recv", c.rank, c.size};
  detail::check_peer_tag(w, peer, 0);
  check_device_buffer(w, data, count, "data");
  check(w, ncclRecv(data, count, nccl_type(dtype), peer, c.comm, stream_of(stream)), "ncclRecv");
}

int select_local_gpu(const Comm& group) {
  const Where w{"select_local_gpu", group.rank(), group.size()};
  char host[256] = {};
  gethostname(host, sizeof host - 1);
  const std::vector<std::string> hosts = group.all_gather_bytes(host);
  int local = 0;
  for (int r = 0; r < group.rank(); r++) local += hosts[size_t(r)] == host;
  int gpus = 0;
  check_cuda(w, cudaGetDeviceCount(&gpus), "cudaGetDeviceCount");
  if (local >= gpus)
    detail::fail_at(w, cat("this is rank ", local, " on host ", host, ", which has ", gpus,
                           " GPUs: start at most one rank per GPU"));
  check_cuda(w, cudaSetDevice(local), "cudaSetDevice");
  return local;
}

const char* nccl_backend_name() { return "nccl"; }

}  // namespace dsv3::dist
