// The parameter table: every tensor of the model, named as in the Hugging Face DeepseekV3
// layout, living at a fixed offset in ONE contiguous buffer. The same offsets lay out the fp32
// master weights, the compute-dtype copy the forward reads (bf16/fp16 runs), the fp32 gradients
// and the optimizer moments, so AdamW, the global norm, all-reduce and checkpoints are single
// loops over memory.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/config.h"
#include "ops/optimizer.h"

namespace dsv3 {

enum class ParamKind : uint8_t {
  Matrix,  // 2-D weight: trained with weight decay
  Vector,  // 1-D (norm weights): trained, no weight decay
  Buffer,  // routing bias e_score_correction_bias: saved and exported, never gets a gradient
};

struct ParamInfo {
  std::string name;            // HF name, e.g. "model.layers.3.mlp.experts.7.up_proj.weight"
  std::vector<int64_t> shape;  // (out, in) for linear weights
  size_t offset = 0;           // in floats, into the parameter buffer
  size_t numel = 0;
  ParamKind kind = ParamKind::Matrix;
  size_t buffer_offset = 0;    // Buffer kind: offset in the compact fp32 buffer of all Buffers
  bool trainable() const { return kind != ParamKind::Buffer; }
  bool decay() const { return kind == ParamKind::Matrix; }
};

// The routed experts one process holds under expert parallelism (P3): experts [first,
// first + count) of every MoE layer. count < 0 (the default): every expert, the whole model.
struct ExpertShard {
  int first = 0, count = -1;
  bool whole(const ModelConfig& c) const {
    return count < 0 || (first == 0 && count == c.experts);
  }
};

// The part of the model one pipeline rank holds (P5): its stages' blocks, the embedding on the
// first stage, the final norm, head and MTP modules on the last. whole (the default): everything.
// Some tensors live on two pipeline ranks, whose gradients are summed over both (grad_sync.h):
// embed_shared, the embedding of the first and the last stage when MTP reads it there; mirrored,
// every tensor of the table, which DualPipe's rank r holds as does rank P-1-r (each runs stages
// r and P-1-r, one per direction).
struct StageParts {
  bool whole = true;
  std::vector<std::pair<int, int>> blocks;  // layer ranges [first, end) of the main blocks
  bool embed = false;  // model.embed_tokens
  bool last = false;   // model.norm, lm_head and the MTP modules (HF layers L..L+D-1)
  bool embed_shared = false, mirrored = false;
  bool holds_block(int layer) const;
};

struct ParamTable {
  std::vector<ParamInfo> list;
  size_t total = 0;  // floats
  size_t buffers_total = 0;  // elements of all Buffer-kind tensors (routing biases)
  // The routed experts this table holds (ExpertShard; expert_count = E for the whole model).
  int expert_first = 0, expert_count = 0;
  // A table of an expert shard lays its routed experts out after every other tensor, from
  // experts_begin on, so dense parameters [0, experts_begin) and expert parameters
  // [experts_begin, total) are two contiguous ranges (reduced over different groups).
  // The whole model keeps the interleaved layout below and experts_begin == total.
  size_t experts_begin = 0;
  bool sharded() const { return experts_begin < total; }
  // A pipeline rank's table (StageParts not whole) puts the tensors another pipeline rank also
  // holds first: dense [0, shared_end) (the embedding, or everything when mirrored) and experts
  // [experts_begin, shared_experts_end) (all when mirrored). Otherwise shared_end == 0 and
  // shared_experts_end == experts_begin.
  size_t shared_end = 0, shared_experts_end = 0;
  StageParts parts;  // what the table holds
  std::unordered_map<std::string, size_t> index;  // name -> position in list

  const ParamInfo& at(const std::string& name) const;  // throws naming the missing tensor
  const ParamInfo* find(const std::string& name) const;
};

// Builds the table for a config. Layout: embedding, blocks 0..L-1, MTP modules (as HF layers
// L..L+D-1), final norm, head. A pipeline rank's table (parts not whole) holds only its parts,
// under the same names, ordered: embedding, MTP modules, final norm, head, its blocks. Within an
// FFN gate_proj and up_proj are adjacent so the pair is one (2D, C) matrix for a single GEMM;
// within the experts of a layer, all experts' gate/up/down follow each other in expert order.
// An expert shard (not whole) holds only its experts, placed after every other tensor, layer by
// layer in the same order (see ParamTable::experts_begin).
ParamTable build_param_table(const ModelConfig& c, ExpertShard shard = {}, StageParts parts = {});

// The trainable tensors as optimizer spans (offset, numel, decay), in table order.
std::vector<ParamSpan> trainable_spans(const ParamTable& t);

// Initialises a parameter buffer: normal(0, init_std) matrices, ones for norms, zero buffers.
void init_params(const ModelConfig& c, const ParamTable& t, float* params, uint64_t seed);

}  // namespace dsv3
