// The communicator for GPU ranks (P1): the collectives of comm.h, with the same names, argument
// order and contracts, on DEVICE buffers, carried out by NCCL and ordered on a CUDA stream.
// Each process drives one GPU; a process group is the MPI Comm it is built from, whose rank 0
// creates the NCCL unique id and broadcasts it over MPI (NCCL's own bootstrap needs one shared
// id, and MPI is already how dsv3 ranks find each other).
//
// Differences from comm.h, all NCCL's:
// - Every call is enqueued on `stream` (a cudaStream_t; nullptr = the calling thread's default
//   stream, the one dsv3's ops use) and returns at once; the result is there for work queued
//   after it on that stream. So there are no separate nonblocking twins: use another stream and
//   an event (backend.h) to overlap.
// - Counts are elements (size_t, no INT_MAX limit: NCCL takes size_t counts). Reductions: Sum,
//   Max, Min on every DType; bf16/f16 are reduced by NCCL in their own format.
// - all_to_all(v) and send/recv are NCCL point-to-point inside ncclGroupStart/End.
// - Failures (an NCCL error, a rank that died) throw dsv3::Error naming the operation and NCCL's
//   reason; argument errors are caught before any communication, as comm.h's.
// Linked: comm_nccl.cpp when the build has CUDA, MPI and NCCL (CMake DSV3_NCCL), else
// comm_nccl_stub.cpp, whose create() says the build has no NCCL.
#pragma once
#include <cstddef>
#include <memory>

#include "dist/comm.h"

namespace dsv3::dist {

class NcclComm {
 public:
  struct Impl;  // defined by the linked implementation
  NcclComm() = default;
  // Collective over `group` (every rank calls it): one NCCL communicator over the same ranks, on
  // this process's current CUDA device (select it first, e.g. select_local_gpu()).
  static NcclComm create(const Comm& group);
  explicit operator bool() const { return impl_ != nullptr; }
  int rank() const;
  int size() const;

  void all_reduce(void* data, size_t count, DType dtype, ReduceOp op = ReduceOp::Sum,
                  void* stream = nullptr) const;
  void reduce_scatter(const void* send, void* recv, size_t count, DType dtype,
                      ReduceOp op = ReduceOp::Sum, void* stream = nullptr) const;
  void all_gather(const void* send, void* recv, size_t count, DType dtype,
                  void* stream = nullptr) const;
  void all_to_all(const void* send, void* recv, size_t count, DType dtype,
                  void* stream = nullptr) const;
  void all_to_allv(const void* send, Pieces send_pieces, void* recv, Pieces recv_pieces,
                   DType dtype, void* stream = nullptr) const;
  void broadcast(void* data, size_t count, DType dtype, int root, void* stream = nullptr) const;
  void send(const void* data, size_t count, DType dtype, int peer, void* stream = nullptr) const;
  void recv(void* data, size_t count, DType dtype, int peer, void* stream = nullptr) const;

 private:
  std::shared_ptr<Impl> impl_;
};

// Sets this process's CUDA device to its rank among the ranks of `group` on the same host (the
// usual one GPU per rank). Returns the device index. Collective over `group`.
int select_local_gpu(const Comm& group);
const char* nccl_backend_name();  // "nccl" | "none"

}  // namespace dsv3::dist
