// Expert parallelism (P3): the ExpertExchange of model/moe_layer.h over the expert-parallel group.
// The P ranks of the group hold E/P routed experts each (rank p: experts [p E/P, (p+1) E/P)).
//
// Dispatch of one MoE layer (DeepEP's layout, on the CPU with Open MPI):
//   1. the slot rows are already sorted by global expert, so the rows for rank q are one
//      contiguous run (q's experts); their per-expert counts go to q (all-to-all of P x E/P);
//   2. the rows themselves travel with one all-to-all(v);
//   3. what arrived source-major ([source][expert]) is reordered expert-major ([expert][source])
//      so each local expert's rows are contiguous for the grouped GEMM, in source order.
// Combine is the exact reverse along the same routes, so every row comes back to its slot; the
// backward sends the output gradients out along the same routes and the input gradients back.
// The expert side's memory (inputs and activations kept for backward, scratch) is owned here,
// per layer, and grows with the rows that arrive.
#pragma once
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "dist/collectives.h"
#include "model/moe_layer.h"

namespace dsv3 {

class ExpertAllToAll final : public ExpertExchange {
 public:
  ExpertAllToAll(dist::Collectives& coll, dist::Group& ep, const ModelConfig& c, DType t,
                 Device d);

  const ExpertSide& dispatch(const Exec& ex, const void* layer, const Tensor& xp,
                             const Tensor& offsets, int NK, int C) override;
  const ExpertSide& side(const void* layer) override;
  void combine(const Exec& ex, const void* layer, const Tensor& side_rows,
               const Tensor& slot_rows) override;
  void dispatch_rows(const Exec& ex, const void* layer, const Tensor& slot_rows,
                     const Tensor& side_rows) override;

  int first_expert() const { return first_; }
  int local_experts() const { return local_; }

 private:
  struct Route {
    std::vector<size_t> to, from;        // rows to / from each rank of the group
    std::vector<size_t> to_at;           // first slot row of each rank's experts
    std::vector<int64_t> from_counts;    // [q * local + j]: rows from q for local expert j
  };
  struct Layer {
    Buffer kept;
    size_t capacity = 0;  // rows the kept buffer holds
    ExpertSide side;
    Route route;
  };
  Layer& layer_of(const void* key);
  void bind_scratch(ExpertSide& s);
  void grow_stage(size_t rows);
  // Moves rows between slot order (the group's all-to-all) and the expert-major side.
  void to_experts(const Exec& ex, const Route& r, const ExpertSide& s, const Tensor& slot_rows,
                  const Tensor& side_rows);

  dist::Collectives& coll_;
  dist::Group& ep_;
  ModelConfig c_;
  DType t_;
  Device device_;
  int P_, local_, first_;
  std::unordered_map<const void*, Layer> layers_;
  Buffer scratch_;
  size_t scratch_rows_ = 0;
  Buffer stage_;  // source-major rows in transit
};

}  // namespace dsv3
