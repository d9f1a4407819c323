#include "model/params.h"

#include "core/check.h"
#include "core/rng.h"

namespace dsv3 {

const ParamInfo* ParamTable::find(const std::string& name) const {
  auto it = index.find(name);
  return it == index.end() ? nullptr : &list[it->second];
}

const ParamInfo& ParamTable::at(const std::string& name) const {
  const ParamInfo* p = find(name);
  DSV3_CHECK(p, "model has no tensor named '", name, "'");
  return *p;
}

bool StageParts::holds_block(int layer) const {
  if (whole) return true;
  for (const auto& [a, b] : blocks)
    if (layer >= a && layer < b) return true;
  return false;
}

namespace {

struct Builder {
  ParamTable t;
  ExpertShard shard;
  bool defer_experts = false;           // an expert shard: experts go after the head
  std::vector<std::string> moe_layers;  // prefixes of the MoE layers whose experts are deferred
  void experts(const std::string& p, const ModelConfig& c) {
    const int first = shard.count < 0 ? 0 : shard.first;
    const int count = shard.count < 0 ? c.experts : shard.count;
    for (int e = first; e < first + count; e++)
      swiglu(p + ".mlp.experts." + std::to_string(e), c.moe_inter, c.hidden);
  }
  void add(std::string name, std::vector<int64_t> shape, ParamKind kind, bool align = true) {
    ParamInfo p;
    p.name = std::move(name);
    p.shape = std::move(shape);
    p.numel = 1;
    for (auto d : p.shape) p.numel *= size_t(d);
    p.kind = kind;
    // 16-float alignment keeps every tensor 64-byte aligned for vector loads.
    if (align) t.total = (t.total + 15) / 16 * 16;
    p.offset = t.total;
    t.total += p.numel;
    if (kind == ParamKind::Buffer) {
      p.buffer_offset = t.buffers_total;
      t.buffers_total += p.numel;
    }
    t.index[p.name] = t.list.size();
    t.list.push_back(std::move(p));
  }
  void mat(const std::string& name, int64_t out, int64_t in) {
    add(name, {out, in}, ParamKind::Matrix);
  }
  void vec(const std::string& name, int64_t n) { add(name, {n}, ParamKind::Vector); }

  void swiglu(const std::string& prefix, int64_t inter, int64_t C) {
    mat(prefix + ".gate_proj.weight", inter, C);  // gate and up adjacent: one (2*inter, C) GEMM
    add(prefix + ".up_proj.weight", {inter, C}, ParamKind::Matrix, /*align=*/false);
    mat(prefix + ".down_proj.weight", C, inter);
  }

  void block(const ModelConfig& c, int hf_layer, bool moe) {
    const std::string p = "model.layers." + std::to_string(hf_layer);
    const int64_t C = c.hidden;
    vec(p + ".input_layernorm.weight", C);
    if (c.q_lora > 0) {
      mat(p + ".self_attn.q_a_proj.weight", c.q_lora, C);
      vec(p + ".self_attn.q_a_layernorm.weight", c.q_lora);
      mat(p + ".self_attn.q_b_proj.weight", c.q_dim(), c.q_lora);
    } else {
      mat(p + ".self_attn.q_proj.weight", c.q_dim(), C);
    }
    mat(p + ".self_attn.kv_a_proj_with_mqa.weight", c.kv_lora + c.qk_rope, C);
    vec(p + ".self_attn.kv_a_layernorm.weight", c.kv_lora);
    mat(p + ".self_attn.kv_b_proj.weight", int64_t(c.heads) * (c.qk_nope + c.v_head), c.kv_lora);
    mat(p + ".self_attn.o_proj.weight", C, int64_t(c.heads) * c.v_head);
    vec(p + ".post_attention_layernorm.weight", C);
    if (!moe) {
      swiglu(p + ".mlp", c.dense_inter, C);
      return;
    }
    mat(p + ".mlp.gate.weight", c.experts, C);
    if (c.router == RouterKind::Sigmoid)
      add(p + ".mlp.gate.e_score_correction_bias", {c.experts}, ParamKind::Buffer);
    if (defer_experts) moe_layers.push_back(p);
    else experts(p, c);
    if (c.shared_experts > 0)
      swiglu(p + ".mlp.shared_experts", int64_t(c.shared_experts) * c.moe_inter, C);
  }
};

}  // namespace

ParamTable build_param_table(const ModelConfig& c, ExpertShard shard, StageParts parts) {
  Builder b;
  if (!shard.whole(c)) {
    DSV3_CHECK(c.experts > 0 && shard.first >= 0 && shard.count >= 1 &&
                   shard.first + shard.count <= c.experts,
               "expert shard [", shard.first, ", ", shard.first + shard.count,
               ") is not a range of the model's ", c.experts, " routed experts");
    b.shard = shard;
    b.defer_experts = true;
  }
  b.t.expert_first = shard.whole(c) ? 0 : shard.first;
  b.t.expert_count = shard.whole(c) ? c.experts : shard.count;
  b.t.parts = parts;
  const auto embed = [&] { b.mat("model.embed_tokens.weight", c.vocab, c.hidden); };
  const auto mtp = [&] {
    for (int k = 1; k <= c.mtp_depth; k++) {
      const int hf = c.layers + k - 1;
      const std::string p = "model.layers." + std::to_string(hf);
      b.vec(p + ".enorm.weight", c.hidden);
      b.vec(p + ".hnorm.weight", c.hidden);
      b.mat(p + ".eh_proj.weight", c.hidden, 2 * int64_t(c.hidden));
      b.block(c, hf, c.experts > 0);
      b.vec(p + ".shared_head.norm.weight", c.hidden);
    }
  };
  const auto last = [&] {
    mtp();
    b.vec("model.norm.weight", c.hidden);
    b.mat("lm_head.weight", c.vocab, c.hidden);
  };
  if (parts.whole) {
    embed();
    for (int l = 0; l < c.layers; l++) b.block(c, l, c.is_moe_layer(l));
    last();
  } else {
    DSV3_CHECK(parts.embed || !parts.embed_shared, "internal: a shared embedding not held");
    for (const auto& [a, e] : parts.blocks)
      DSV3_CHECK(0 <= a && a < e && e <= c.layers, "internal: stage layers [", a, ", ", e,
                 ") outside the model's ", c.layers);
    if (parts.embed) embed();
    if (parts.embed_shared) b.t.shared_end = b.t.total;
    if (parts.last) last();
    for (int l = 0; l < c.layers; l++)
      if (parts.holds_block(l)) b.block(c, l, c.is_moe_layer(l));
  }
  b.t.total = (b.t.total + 15) / 16 * 16;
  b.t.experts_begin = b.t.total;
  if (parts.mirrored) b.t.shared_end = b.t.total;
  for (const std::string& p : b.moe_layers) b.experts(p, c);
  b.t.total = (b.t.total + 15) / 16 * 16;
  b.t.shared_experts_end = parts.mirrored ? b.t.total : b.t.experts_begin;
  return std::move(b.t);
}

std::vector<ParamSpan> trainable_spans(const ParamTable& t) {
  std::vector<ParamSpan> spans;
  for (const auto& p : t.list)
    if (p.trainable()) spans.push_back({p.offset, p.numel, p.decay()});
  return spans;
}

void init_params(const ModelConfig& c, const ParamTable& t, float* params, uint64_t seed) {
  Rng rng(seed);
  for (const auto& p : t.list) {
    float* w = params + p.offset;
    switch (p.kind) {
      case ParamKind::Matrix:
        for (size_t i = 0; i < p.numel; i++) w[i] = float(c.init_std) * rng.normal();
        break;
      case ParamKind::Vector:
        for (size_t i = 0; i < p.numel; i++) w[i] = 1.0f;
        break;
      case ParamKind::Buffer:
        for (size_t i = 0; i < p.numel; i++) w[i] = 0.0f;
        break;
    }
  }
}

}  // namespace dsv3
