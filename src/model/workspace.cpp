#include "model/workspace.h"

#include <algorithm>

#include "ops/rope.h"
#include "ops/sparse_attention.h"

namespace dsv3 {

namespace {
int end_of(const ModelConfig& c, const WorkspaceConfig& wc) {
  return wc.layer_end < 0 ? c.layers : wc.layer_end;
}
}  // namespace

void Workspace::layout(Arena& ar, const ModelConfig& c) {
  const Dims d = wc_.max;
  const size_t N = d.N(), C = c.hidden;
  const DType t = t_, acc = accum_dtype(t_);
  const int l0 = wc_.layer_begin, l1 = layer_end_;
  DSV3_CHECK(l0 >= 0 && l0 <= l1 && l1 <= c.layers, "workspace layers [", l0, ", ", l1,
             ") outside the model's ", c.layers);
  const bool bwd = wc_.backward;
  inputs = ar.take(DType::I32, N);
  targets = ar.take(DType::I32, N);
  row_scale = ar.take(acc, N);
  rope.cos = ar.take(acc, size_t(d.T) * (c.qk_rope / 2));
  rope.sin = ar.take(acc, size_t(d.T) * (c.qk_rope / 2));
  rope.scale = c.attention_scale();
  if (c.attention == AttentionKind::Lsh)
    rope.lsh_rot = ar.take(DType::F32, size_t(c.heads) * c.lsh_rounds * c.qk_head() * (c.lsh_buckets / 2));
  resid.assign(c.layers + 1, Tensor{});
  for (int l = l0; l <= l1; l++) resid[l] = ar.take(t, N * C);
  // Blocks: all of them, or one set for every block when they are re-run (block recompute) or
  // only run forward; under selective recompute the recomputable members are shared.
  const bool one_set = !bwd || wc_.recompute == Recompute::Block;
  const BlockActs* shared = nullptr;
  if (bwd && wc_.recompute == Recompute::Selective) {
    alloc_recomputable(recomputable, ar, c, t, d);
    shared = &recomputable;
  }
  blocks.clear();
  if (l1 > l0) {
    if (one_set) {
      // one set big enough for either kind of block: lay out the larger kind, plus the dense FFN
      // buffers when both kinds occur
      bool any_moe = false, any_dense = false;
      for (int l = l0; l < l1; l++) (c.is_moe_layer(l) ? any_moe : any_dense) = true;
      blocks.resize(1);
      alloc_block_acts(blocks[0], ar, c, t, d, any_moe);
      if (any_moe && any_dense) alloc_ffn_acts(blocks[0].dense, ar, t, N, c.dense_inter);
    } else {
      blocks.resize(l1 - l0);
      for (int l = l0; l < l1; l++)
        alloc_block_acts(blocks[l - l0], ar, c, t, d, c.is_moe_layer(l), shared);
    }
  }
  if (bwd && l1 > l0) alloc_block_scratch(scratch, ar, c, t, d);
  if (wc_.head) {
    alloc_head_acts(head, ar, c, t, d, bwd, wc_.soft_targets);
    mtp.resize(c.mtp_depth);
    for (auto& m : mtp) alloc_mtp_acts(m, ar, c, t, d, bwd, shared);
    if (bwd && c.mtp_depth > 0) {
      alloc_mtp_scratch(mtp_scratch, ar, c, t, d);
      if (l1 == l0) alloc_block_scratch(scratch, ar, c, t, d);  // the MTP blocks' backward
    }
  }
  if (bwd) dres = ar.take(t, N * C);
  if (wc_.sequence_parallel) {
    sp_rows = ar.take(t, N * C);
    sp_final = ar.take(t, N * C);
    sp_normg = ar.take(acc, C);
  }
  n_moe = 0;
  for (int l = 0; l < c.layers; l++) n_moe += c.is_moe_layer(l);
  if (c.experts > 0) n_moe += c.mtp_depth;
  moe_loads = ar.take(DType::I64, size_t(std::max(n_moe, 1)) * std::max(c.experts, 1));
  moe_stats = ar.take(DType::F64, size_t(std::max(n_moe, 1)) * 2);
}

Workspace::Workspace(const ModelConfig& c, DType t, Device device, const WorkspaceConfig& wc)
    : graphs(wc.cuda_graphs && device == Device::CUDA), c_(c), t_(t), device_(device), wc_(wc),
      layer_end_(end_of(c, wc)) {
  DSV3_CHECK(wc.max.B > 0 && wc.max.T > 0, "batch and sequence length must be positive");
  DSV3_CHECK(wc.max.T <= c.max_seq, "sequence length ", wc.max.T, " exceeds max_seq ", c.max_seq);
  Arena measure;
  measure.device = device;  // some buffers depend on it (attention's saved state)
  layout(measure, c);
  mem_ = Buffer(device, DType::U8, measure.used);
  Arena ar{static_cast<char*>(mem_.view().data), measure.used, 0, device};
  layout(ar, c);
  rope_tables(Exec{device}, rope.cos, rope.sin, wc.max.T, c.rope());
  if (rope.lsh_rot) {  // the model's fixed rotations: the same in every workspace and process
    std::vector<float> rot(rope.lsh_rot.numel);
    lsh_rotations(rot.data(), c.heads, c.lsh_rounds, c.qk_head(), c.lsh_buckets, uint64_t(c.lsh_seed));
    backend::copy(Exec{device}, rope.lsh_rot, host_tensor(rot));
  }
}

Workspace::Workspace(MeasureOnly, const ModelConfig& c, DType t, const WorkspaceConfig& wc)
    : c_(c), t_(t), device_(Device::CPU), wc_(wc), layer_end_(end_of(c, wc)) {}

size_t Workspace::measure_bytes(const ModelConfig& c, DType t, const WorkspaceConfig& wc,
                                Device device) {
  Workspace w(MeasureOnly{}, c, t, wc);
  Arena ar;
  ar.device = device;
  w.layout(ar, c);
  return ar.used;
}

MoeStatsOut Workspace::moe_out(int i) const {
  const size_t E = std::max(c_.experts, 1);
  return {moe_loads.slice(size_t(i) * E, E), moe_stats.slice(size_t(i) * 2, 2)};
}

int Workspace::moe_index_of_layer(int l) const {
  if (!c_.is_moe_layer(l)) return -1;
  int i = 0;
  for (int j = 0; j < l; j++) i += c_.is_moe_layer(j);
  return i;
}

int Workspace::moe_index_of_mtp(int k) const {
  if (c_.experts == 0) return -1;
  int i = 0;
  for (int j = 0; j < c_.layers; j++) i += c_.is_moe_layer(j);
  return i + k - 1;
}

}  // namespace dsv3
