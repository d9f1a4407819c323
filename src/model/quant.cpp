#include "model/quant.h"

#include <cmath>
#include <cstring>

#include "core/check.h"
#include "model/weights.h"
#include "ops/quant.h"

namespace dsv3 {

const char* quant_scheme_name(QuantScheme s) {
  switch (s) {
    case QuantScheme::None: return "none";
    case QuantScheme::W8A8: return "w8a8";
    case QuantScheme::W8A16: return "w8a16";
  }
  return "?";
}

QuantScheme parse_quant_scheme(const std::string& s) {
  if (s == "none") return QuantScheme::None;
  if (s == "w8a8") return QuantScheme::W8A8;
  if (s == "w8a16") return QuantScheme::W8A16;
  fail("unknown quantisation scheme '", s, "' (expected w8a8 or w8a16)");
}

DType quant_dtype(QuantScheme s) {
  DSV3_CHECK(s != QuantScheme::None, "quant_dtype: no scheme (internal error)");
  return s == QuantScheme::W8A8 ? DType::W8A8 : DType::W8A16;
}

namespace {
bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::strlen(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}
size_t align64(size_t x) { return (x + 63) / 64 * 64; }
}  // namespace

bool is_quantized_param(const ParamInfo& p) {
  return p.kind == ParamKind::Matrix && p.name != "model.embed_tokens.weight" &&
         p.name != "lm_head.weight" && !ends_with(p.name, ".mlp.gate.weight");
}

const QuantUnit& QuantLayout::at(const std::string& name) const {
  auto it = index.find(name);
  DSV3_CHECK(it != index.end(), "int8 layout has no tensor '", name, "' (internal error)");
  return units[it->second];
}

QuantLayout quant_layout(const ModelConfig& c) {
  const ParamTable t = build_param_table(c);
  QuantLayout l;
  for (const ParamInfo& p : t.list) {
    if (!is_quantized_param(p) || ends_with(p.name, ".up_proj.weight")) continue;  // up: in w13
    QuantUnit u;
    u.name = p.name;
    u.rows = int(p.shape[0]) * (ends_with(p.name, ".gate_proj.weight") ? 2 : 1);
    u.cols = int(p.shape[1]);
    l.bytes = align64(l.bytes);
    u.offset = l.bytes;
    l.bytes += q8_matrix_bytes(u.rows, u.cols);
    l.index[u.name] = l.units.size();
    l.units.push_back(std::move(u));
  }
  l.bytes = align64(l.bytes);
  return l;
}

ParamTable high_precision_table(const ModelConfig& c) {
  const ParamTable full = build_param_table(c);
  ParamTable h;
  for (const ParamInfo& p : full.list) {
    ParamInfo q = p;
    q.numel = is_quantized_param(p) ? 0 : p.numel;
    // the float layout's alignment rule: every tensor 16 floats, up_proj right after gate_proj
    if (!ends_with(p.name, ".up_proj.weight")) h.total = (h.total + 15) / 16 * 16;
    q.offset = h.total;
    h.total += q.numel;
    h.index[q.name] = h.list.size();
    h.list.push_back(std::move(q));
  }
  h.total = (h.total + 15) / 16 * 16;
  h.buffers_total = full.buffers_total;
  h.expert_first = full.expert_first;  // an int8 model holds every expert
  h.expert_count = full.expert_count;
  h.experts_begin = h.total;  // not sharded: no separate expert range
  return h;
}

namespace {
// The fp32 rows of unit u in a full-layout buffer (gate_proj and up_proj are adjacent there).
size_t full_offset(const ParamTable& full, const QuantUnit& u) {
  const ParamInfo& p = full.at(u.name);
  if (ends_with(u.name, ".gate_proj.weight")) {
    const ParamInfo& up = full.at(u.name.substr(0, u.name.size() - 17) + ".up_proj.weight");
    DSV3_CHECK(up.offset == p.offset + p.numel, "internal: ", u.name, " gate/up not adjacent");
  }
  return p.offset;
}
}  // namespace

QuantizedParams quantize_params(const ModelConfig& c, QuantScheme s, const std::vector<float>& full) {
  DSV3_CHECK(s != QuantScheme::None, "quantize_params: no scheme (internal error)");
  const ParamTable ft = build_param_table(c), ht = high_precision_table(c);
  DSV3_CHECK(full.size() == ft.total, "weights have ", full.size(), " values, the model ", ft.total);
  const QuantLayout l = quant_layout(c);
  QuantizedParams q;
  q.scheme = s;
  q.high.assign(ht.total, 0.0f);
  for (size_t i = 0; i < ht.list.size(); i++)
    if (ht.list[i].numel > 0)
      std::copy_n(full.data() + ft.list[i].offset, ht.list[i].numel, q.high.data() + ht.list[i].offset);
  q.int8.assign(l.bytes, 0);
  for (const QuantUnit& u : l.units)
    cpu::q8_quantize(q.int8.data() + u.offset, full.data() + full_offset(ft, u), u.rows, u.cols,
                     size_t(u.cols));
  return q;
}

std::vector<float> dequantize_params(const ModelConfig& c, const QuantizedParams& q) {
  const ParamTable ft = build_param_table(c), ht = high_precision_table(c);
  const QuantLayout l = quant_layout(c);
  DSV3_CHECK(q.high.size() == ht.total && q.int8.size() == l.bytes, "int8 model has ",
             q.high.size(), " high-precision values and ", q.int8.size(), " int8 bytes, the "
             "config needs ", ht.total, " and ", l.bytes, " (internal error)");
  std::vector<float> full(ft.total, 0.0f);
  for (size_t i = 0; i < ht.list.size(); i++)
    if (ht.list[i].numel > 0)
      std::copy_n(q.high.data() + ht.list[i].offset, ht.list[i].numel, full.data() + ft.list[i].offset);
  for (const QuantUnit& u : l.units)
    cpu::q8_dequantize(full.data() + full_offset(ft, u), size_t(u.cols), q.int8.data() + u.offset,
                       u.rows, u.cols);
  return full;
}

void check_quantized(const ModelConfig& c, const QuantizedParams& q, const std::string& where) {
  const QuantLayout l = quant_layout(c);
  DSV3_CHECK(q.int8.size() == l.bytes, where, ": ", q.int8.size(), " int8 bytes, the config needs ",
             l.bytes);
  for (const QuantUnit& u : l.units)
    for (int r = 0; r < u.rows; r++) {
      const float s = cpu::q8_scale(q.int8.data() + u.offset, u.cols, r);
      DSV3_CHECK(std::isfinite(s) && s >= 0, where, ": ", u.name, " row ", r, " has scale ", s,
                 " (the weights were not finite when quantised)");
    }
}

namespace {
struct Binder {
  const ModelConfig& c;
  const QuantLayout& l;
  const Tensor& int8;

  Tensor unit(const std::string& name) const {
    const QuantUnit& u = l.at(name);
    return int8.slice(u.offset, q8_matrix_bytes(u.rows, u.cols));
  }
  void ffn(FfnParams& f, const std::string& p) const {
    f.w13 = unit(p + ".gate_proj.weight");
    f.w2 = unit(p + ".down_proj.weight");
  }
  void block(BlockParams& b, int hf) const {
    const std::string p = "model.layers." + std::to_string(hf);
    const std::string a = p + ".self_attn.";
    if (c.q_lora > 0) {
      b.attn.q_a = unit(a + "q_a_proj.weight");
      b.attn.q_b = unit(a + "q_b_proj.weight");
    } else {
      b.attn.q_proj = unit(a + "q_proj.weight");
    }
    b.attn.kv_a = unit(a + "kv_a_proj_with_mqa.weight");
    b.attn.kv_b = unit(a + "kv_b_proj.weight");
    b.attn.o = unit(a + "o_proj.weight");
    if (!b.moe) return ffn(b.dense, p + ".mlp");
    MoeParams& m = b.moe_p;
    const std::string e0 = p + ".mlp.experts.0";
    const size_t g0 = l.at(e0 + ".gate_proj.weight").offset, d0 = l.at(e0 + ".down_proj.weight").offset;
    const size_t stride = c.experts > 1 ? l.at(p + ".mlp.experts.1.gate_proj.weight").offset - g0 : 0;
    for (int e = 0; e < c.experts; e++) {
      const std::string pe = p + ".mlp.experts." + std::to_string(e);
      DSV3_CHECK(l.at(pe + ".gate_proj.weight").offset == g0 + e * stride &&
                     l.at(pe + ".down_proj.weight").offset == d0 + e * stride,
                 "internal: int8 experts of ", p, " are not equally spaced");
    }
    const size_t span = size_t(c.experts - 1) * stride;
    m.experts_w13 = int8.slice(g0, span + q8_matrix_bytes(2 * m.inter, c.hidden));
    m.experts_w2 = int8.slice(d0, span + q8_matrix_bytes(c.hidden, m.inter));
    m.expert_stride = stride;
    if (c.shared_experts > 0) ffn(m.shared, p + ".mlp.shared_experts");
  }
};
}  // namespace

void bind_quantized(ModelParams& p, const ModelConfig& c, const QuantLayout& l, const Tensor& int8) {
  DSV3_CHECK(is_int8_weight(int8.dtype) && int8.numel >= l.bytes, "bind_quantized: bad int8 "
             "buffer (internal error)");
  const Binder b{c, l, int8};
  for (int i = 0; i < c.layers; i++) b.block(p.blocks[i], i);
  for (int k = 1; k <= c.mtp_depth; k++) {
    const int hf = c.layers + k - 1;
    MtpParams& m = p.mtp[k - 1];
    m.eh_proj = b.unit("model.layers." + std::to_string(hf) + ".eh_proj.weight");
    b.block(m.block, hf);
  }
}

}  // namespace dsv3
