// The activations and scratch of one in-flight micro-batch (apart from the weights, which are
// shared, and the gradients, which belong to the training state). Laid out once for the largest
// micro-batch by an Arena over one device buffer; a thread, a pipeline micro-batch or a server
// request each use their own Workspace over the same ModelWeights.
#pragma once
#include <vector>

#include "backend/backend.h"
#include "model/block.h"
#include "model/head.h"
#include "model/mtp.h"

namespace dsv3 {

struct WorkspaceConfig {
  // The largest micro-batch. Every buffer is sized by N = B*T or by B*T*T = N*T, so more rows of
  // shorter sequences fit (sequence-length warmup) as long as N and T stay within these.
  Dims max{1, 1};
  Recompute recompute = Recompute::None;
  bool backward = true;  // false: forward only (eval, sampling): one block's activations, no scratch
  // The part of the model this workspace runs, for a pipeline stage: blocks [layer_begin,
  // layer_end) (layer_end -1: to the last), the embedding, the head and the MTP modules.
  int layer_begin = 0, layer_end = -1;
  bool embed = true, head = true;
  // CUDA: replay the embedding + blocks forward and the blocks + embedding backward of a whole-
  // model pass as CUDA graphs (backend::GraphCache; the first pass of each shape runs eagerly).
  bool cuda_graphs = false;
  bool soft_targets = false;  // room for distillation targets at the main head (model.h)
  bool sequence_parallel = false;  // room for --sp's gathered rows (BlockCtx::sp_rows)
};

class Workspace {
 public:
  Workspace(const ModelConfig& c, DType t, Device device, const WorkspaceConfig& wc);
  Workspace(const Workspace&) = delete;
  Workspace& operator=(const Workspace&) = delete;
  // Bytes a workspace would allocate on `device` (nothing is allocated; any build can measure
  // the CUDA layout, which keeps attention's log-sum-exp instead of its probabilities).
  static size_t measure_bytes(const ModelConfig& c, DType t, const WorkspaceConfig& wc,
                              Device device = Device::CPU);

  const WorkspaceConfig& config() const { return wc_; }
  DType dtype() const { return t_; }
  Device device() const { return device_; }
  size_t bytes() const { return mem_.view().bytes(); }
  int layer_end() const { return layer_end_; }

  // ---- layout (shapes for the maximal dims; a pass uses the first N rows)
  Tensor inputs, targets;            // (N) i32: the main model's token ids and next-token targets
  Tensor row_scale;                  // (N) accum: d(total)/d(CE of each main-model row)
  RopeTables rope;                   // (T_max, qk_rope/2)
  std::vector<Tensor> resid;         // L+1 of (N,C): resid[l] = block l's input (stage only)
  std::vector<BlockActs> blocks;     // per layer (stage only); one shared set when blocks are
                                     // recomputed or there is no backward
  BlockActs recomputable;            // selective recompute: the one set of recomputable members
  BlockScratch scratch;              // backward temporaries shared by every block
  HeadActs head;
  Tensor dres;                       // (N,C) gradient flowing down the residual stream
  std::vector<MtpActs> mtp;
  MtpScratch mtp_scratch;
  // Sequence parallelism: (N,C) scratch of gathered or partial rows, the gathered input of the
  // head and MTP modules (N,C), and one norm weight's gradient (C, accum)
  Tensor sp_rows, sp_final, sp_normg;
  Tensor moe_loads, moe_stats;       // (n_moe, E) i64 and (n_moe, 2) f64: per MoE layer
  int n_moe = 0;                     // MoE layers: main ones in order, then the MTP blocks
  backend::GraphCache graphs;        // the passes' captured regions (config().cuda_graphs)

  // Expert parallelism: where this workspace's MoE layers send the rows of experts held by other
  // ranks (set from outside model code; null: the weights hold every expert).
  void set_expert_exchange(ExpertExchange* x) { experts_ = x; }
  ExpertExchange* expert_exchange() const { return experts_; }
  // Tensor parallelism: the hook its partial sums go through (null: the weights are whole).
  void set_tensor_parallel(TensorParallel* tp) { tp_ = tp; }
  TensorParallel* tensor_parallel() const { return tp_; }

  BlockActs& block_acts(int l) { return blocks[block_index(l)]; }
  const BlockActs& block_acts(int l) const { return blocks[block_index(l)]; }
  // Where MoE layer i (moe_index) writes its router statistics.
  MoeStatsOut moe_out(int i) const;
  int moe_index_of_layer(int l) const;  // -1 for a dense layer
  int moe_index_of_mtp(int k) const;    // k = 1..D; -1 without experts

 private:
  size_t block_index(int l) const { return blocks.size() == 1 ? 0 : size_t(l - wc_.layer_begin); }
  struct MeasureOnly {};
  Workspace(MeasureOnly, const ModelConfig& c, DType t, const WorkspaceConfig& wc);
  void layout(Arena& ar, const ModelConfig& c);
  ModelConfig c_;
  DType t_;
  Device device_;
  WorkspaceConfig wc_;
  int layer_end_ = 0;
  Buffer mem_;
  ExpertExchange* experts_ = nullptr;
  TensorParallel* tp_ = nullptr;
};

}  // namespace dsv3
