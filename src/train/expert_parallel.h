// Expert parallelism (P3): the ExpertExchange of model/moe_layer.h over the expert-parallel group.
// The P ranks of the group hold E/P routed experts each (rank p: experts [p E/P, (p+1) E/P)),
// their homes; with EPLB (set_placement) rank p also holds S replica slots per MoE layer: copies
// of other ranks' heavy experts that compute a share of those experts' rows.
//
// Dispatch of one MoE layer (DeepEP's layout, on the CPU with Open MPI):
//   1. the slot rows are already sorted by global expert. Each expert's rows are cut into as many
//      contiguous runs as it has copies (home first, then its replicas in rank order); run i of
//      source rank q goes to copy (i + q) mod copies, so every source spreads its rows and the
//      split depends only on the routing (reproducible). Without replicas the rows for rank p
//      are one contiguous run (p's experts) and travel in place; with them they are gathered
//      in send order first. The per-slot counts go to each rank (all-to-all of P x (E/P + S));
//   2. the rows themselves travel with one all-to-all(v);
//   3. what arrived source-major ([source][slot]) is reordered slot-major ([slot][source]) so
//      each local expert's rows are contiguous for the grouped GEMM, in source order; the home
//      experts' rows first, then the replicas' (ExpertSide::replicas).
// Combine is the exact reverse along the same routes, so every row comes back to its slot; the
// backward sends the output gradients out along the same routes and the input gradients back.
// The expert side's memory (inputs and activations kept for backward, scratch) is owned here,
// per layer, and grows with the rows that arrive.
//
// Replicas stay exact copies: refresh_replicas sends every home expert's compute-dtype weights
// to its replicas (the trainer's step calls it after every optimizer update and every load);
// in backward, once a layer's expert GEMMs are done, each replica's weight gradient goes back to
// its home and is added into the home expert's gradient (return_replica_grads, every
// micro-batch), before any data-parallel reduction sees it. So the gradient each home expert
// holds is the sum over all its rows wherever they ran: what one process computes, up to the
// order of fp32 additions.
#pragma once
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "dist/collectives.h"
#include "dist/eplb.h"
#include "model/moe_layer.h"
#include "model/weights.h"

namespace dsv3 {

class ExpertAllToAll final : public ExpertExchange {
 public:
  ExpertAllToAll(dist::Collectives& coll, dist::Group& ep, const ModelConfig& c, DType t,
                 Device d);

  const ExpertSide& dispatch(const Exec& ex, const void* layer, int hf_layer, const Tensor& xp,
                             const Tensor& offsets, int NK, int C) override;
  const ExpertSide& side(const void* layer) override;
  void combine(const Exec& ex, const void* layer, const Tensor& side_rows,
               const Tensor& slot_rows) override;
  void dispatch_rows(const Exec& ex, const void* layer, const Tensor& slot_rows,
                     const Tensor& side_rows) override;
  void return_replica_grads(const Exec& ex, const void* layer, const MoeParams& g) override;

  // EPLB: from the next dispatch on, the replicas of `placement` (one per MoE layer in
  // moe_layer_names order, from dist::eplb_place_on_homes: each rank's first E/P slots its own
  // experts) take part, with weights copied from w now. An empty list: homes only. Collective
  // over the ep group; every rank passes the same placement (made from globally reduced loads).
  void set_placement(const std::vector<dist::ExpertPlacement>& placement, const ModelWeights& w);
  // Copies every home expert's weights (w, compute dtype) to its replicas. Collective over the
  // ep group; nothing to do without replicas.
  void refresh_replicas(const ModelWeights& w);
  bool has_replicas() const { return !reps_.empty(); }
  // Rows each rank of the ep group computed per MoE layer (forward dispatches) since the last
  // call: [layer][ep rank], summed over every ep group of `all` (a group every rank is in, the
  // world); collective over it.
  std::vector<std::vector<double>> take_dispatched_rows(dist::Group& all);

  int first_expert() const { return first_; }
  int local_experts() const { return local_; }

 private:
  struct Route {
    int slots = 0;                       // physical slots per rank: local experts + replicas
    int replicas = 0;                    // of which replica slots
    bool in_place = true;                // rows for each rank are one run of the slot rows
    std::vector<size_t> to, from;        // rows to / from each rank of the group
    std::vector<size_t> to_at;           // in place: first slot row of each rank's experts
    std::vector<size_t> run_at, run_n;   // [q * slots + j]: slot rows sent to q's slot j
    std::vector<int64_t> from_counts;    // [q * slots + j]: rows from q for local slot j
  };
  struct Layer {
    Buffer kept;
    size_t capacity = 0;  // rows the kept buffer holds
    int slots = 0;        // the slots the kept buffer's offsets were laid out for
    int moe = -1;         // MoE layer index (moe_layer_names order)
    ExpertSide side;
    Route route;
  };
  // One MoE layer's replicas under the current placement.
  struct Replicas {
    std::vector<int> slot_expert;                 // [p * S + s]: expert of replica slot s (-1: empty)
    std::vector<std::vector<std::pair<int, int>>> copies;  // per expert: (rank, slot), home first
    Buffer weights, grads, offsets;               // S copies' w13|w2, their dw, (S+1) i32
  };
  Layer& layer_of(const void* key);
  void bind_scratch(ExpertSide& s);
  void grow_stage(size_t rows);
  void grow_out(size_t rows);
  int moe_index(int hf_layer) const;
  int home_of(int expert) const;  // the ep rank holding an expert (-1: an empty replica slot)
  void plan_route(Route& r, const std::vector<int32_t>& off, int moe);
  // Moves rows between slot order (the group's all-to-all) and the slot-major side.
  void to_experts(const Exec& ex, const Route& r, const ExpertSide& s, const Tensor& slot_rows,
                  const Tensor& side_rows);
  // The home expert j's weights of MoE layer m in w (w13 then w2 sit apart in the table).
  MoeParams bind_layer(const ModelWeights& w, int m) const;

  dist::Collectives& coll_;
  dist::Group& ep_;
  ModelConfig c_;
  DType t_;
  Device device_;
  int P_, local_, first_;
  std::vector<int> moe_hf_;  // HF layer index of each MoE layer
  std::unordered_map<const void*, Layer> layers_;
  std::vector<Replicas> reps_;  // per MoE layer; empty: no replicas
  int S_ = 0;                   // replica slots per rank
  std::vector<double> rows_seen_;  // per MoE layer, rows dispatched to this rank
  Buffer scratch_;
  size_t scratch_rows_ = 0;
  Buffer stage_;  // source-major rows in transit
  Buffer out_;    // slot rows gathered in send order (replicas)
};

}  // namespace dsv3
