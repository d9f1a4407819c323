#include "train/tp_comm.h"

#include "core/check.h"

namespace dsv3 {

void TpComm::reduce(const Exec& ex, const Tensor& t, dist::ReduceOp op) {
  DSV3_CHECK(ex.device == Device::CPU && t.device == Device::CPU, "tensor parallelism moves host "
             "buffers (distributed training runs on the CPU for now)");
  if (t.numel == 0) return;
  coll_.run(coll_.all_reduce(tp_, dist::Purpose::Tensor, t.data, t.numel, t.dtype, op));
}

void TpComm::all_reduce_sum(const Exec& ex, const Tensor& t) { reduce(ex, t, dist::ReduceOp::Sum); }
void TpComm::all_reduce_max(const Exec& ex, const Tensor& t) { reduce(ex, t, dist::ReduceOp::Max); }

}  // namespace dsv3
