// Tensor parallelism's hook (model/tensor_parallel.h) over the tp group: every partial sum of
// the model's passes is one blocking all-reduce on the host buffer, booked in the collectives'
// ledger under the purpose "tensor" (the metric comm_purpose_bytes.tensor: what the bench and
// the planner compare with the formula, docs/parallel.md "Tensor parallelism").
#pragma once
#include "dist/collectives.h"
#include "model/tensor_parallel.h"

namespace dsv3 {

class TpComm : public TensorParallel {
 public:
  TpComm(dist::Collectives& coll, dist::Group& tp) : coll_(coll), tp_(tp) {}
  int rank() const override { return tp_.rank(); }
  int size() const override { return tp_.size(); }
  void all_reduce_sum(const Exec& ex, const Tensor& t) override;
  void all_reduce_max(const Exec& ex, const Tensor& t) override;
  void all_gather(const Exec& ex, const Tensor& full) override;
  void reduce_scatter(const Exec& ex, const Tensor& full, const Tensor& own) override;

 private:
  void reduce(const Exec& ex, const Tensor& t, dist::ReduceOp op);
  dist::Collectives& coll_;
  dist::Group& tp_;
};

}  // namespace dsv3
