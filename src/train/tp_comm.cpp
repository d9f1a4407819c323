#include "train/tp_comm.h"

#include "core/check.h"

namespace dsv3 {

void TpComm::reduce(const Exec& ex, const Tensor& t, dist::ReduceOp op) {
  DSV3_CHECK(ex.device == Device::CPU && t.device == Device::CPU, "tensor parallelism moves host "
             "buffers (distributed training runs on the CPU for now)");
  if (t.numel == 0) return;
  coll_.run(coll_.all_reduce(tp_, dist::Purpose::Tensor, t.data, t.numel, t.dtype, op));
}

void TpComm::all_gather(const Exec& ex, const Tensor& full) {
  DSV3_CHECK(ex.device == Device::CPU && full.device == Device::CPU, "internal: host buffers");
  const size_t n = full.numel / size_t(tp_.size());
  const void* own = static_cast<const char*>(full.data) + size_t(tp_.rank()) * n * dtype_size(full.dtype);
  coll_.run(coll_.all_gather(tp_, dist::Purpose::Tensor, own, full.data, n, full.dtype));
}

void TpComm::reduce_scatter(const Exec& ex, const Tensor& full, const Tensor& own) {
  DSV3_CHECK(ex.device == Device::CPU && own.device == Device::CPU, "internal: host buffers");
  const size_t n = full.numel / size_t(tp_.size());
  DSV3_CHECK(own.numel >= n && own.dtype == full.dtype, "internal: reduce_scatter's output");
  coll_.run(coll_.reduce_scatter(tp_, dist::Purpose::Tensor, full.data, own.data, n, full.dtype));
}

void TpComm::all_reduce_sum(const Exec& ex, const Tensor& t) { reduce(ex, t, dist::ReduceOp::Sum); }
void TpComm::all_reduce_max(const Exec& ex, const Tensor& t) { reduce(ex, t, dist::ReduceOp::Max); }

}  // namespace dsv3
