#include "checkpoint/gguf.h"

#include <cmath>
#include <cstring>
#include <functional>

#include "core/check.h"
#include "core/dtype.h"
#include "core/io.h"
#include "model/params.h"
#include "tokenizer/bpe.h"
#include "tokenizer/formats.h"

namespace dsv3 {

GgufDtype parse_gguf_dtype(const std::string& s) {
  if (s == "f32") return GgufDtype::F32;
  if (s == "f16") return GgufDtype::F16;
  if (s == "bf16") return GgufDtype::BF16;
  if (s == "q8_0") return GgufDtype::Q8_0;
  fail("unknown GGUF dtype '", s, "' (expected f32, f16, bf16 or q8_0)");
}

const char* gguf_dtype_name(GgufDtype t) {
  switch (t) {
    case GgufDtype::F32: return "f32";
    case GgufDtype::F16: return "f16";
    case GgufDtype::BF16: return "bf16";
    case GgufDtype::Q8_0: return "q8_0";
  }
  return "?";
}

namespace {

// gguf_type (metadata values) and ggml_type (tensors), as gguf-py's constants.py numbers them.
enum : uint32_t { kU32 = 4, kI32 = 5, kF32v = 6, kBool = 7, kStr = 8, kArr = 9 };
enum : uint32_t { kGF32 = 0, kGF16 = 1, kGQ8_0 = 8, kGBF16 = 30 };
constexpr uint64_t kAlign = 32;  // general.alignment (GGUF's default)
constexpr int kQ8Block = 32;     // Q8_0: blocks of 32 values, an f16 scale + 32 int8

uint32_t file_type(GgufDtype t) {  // llama_ftype: ALL_F32, MOSTLY_F16, MOSTLY_BF16, MOSTLY_Q8_0
  switch (t) {
    case GgufDtype::F32: return 0;
    case GgufDtype::F16: return 1;
    case GgufDtype::BF16: return 32;
    case GgufDtype::Q8_0: return 7;
  }
  return 0;
}

// The little-endian metadata section, built in memory (it is small next to the tensors).
class Kv {
 public:
  void u32(const std::string& k, uint32_t v) { key(k, kU32), pod(v); }
  void f32(const std::string& k, double v) { key(k, kF32v), pod(float(v)); }
  void boolean(const std::string& k, bool v) { key(k, kBool), pod(uint8_t(v ? 1 : 0)); }
  void str(const std::string& k, const std::string& v) { key(k, kStr), string(v); }
  void strs(const std::string& k, const std::vector<std::string>& v) {
    key(k, kArr), pod(kStr), pod(uint64_t(v.size()));
    for (const auto& s : v) string(s);
  }
  void i32s(const std::string& k, const std::vector<int32_t>& v) {
    key(k, kArr), pod(kI32), pod(uint64_t(v.size()));
    for (int32_t x : v) pod(x);
  }
  const std::string& bytes() const { return out_; }
  uint64_t count() const { return n_; }

  template <typename T>
  void pod(T v) {
    out_.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  void string(const std::string& s) {
    pod(uint64_t(s.size()));
    out_ += s;
  }

 private:
  void key(const std::string& k, uint32_t type) {
    string(k);
    pod(type);
    n_++;
  }
  std::string out_;
  uint64_t n_ = 0;
};

// One tensor: its ggml shape (ne[0] innermost) and type, and how to make its fp32 values in
// that order.
struct Out {
  std::string name;
  std::vector<uint64_t> ne;
  uint32_t type = kGF32;
  std::function<void(float*)> fill;
  uint64_t offset = 0;
  uint64_t count() const {
    uint64_t n = 1;
    for (uint64_t d : ne) n *= d;
    return n;
  }
  uint64_t bytes() const {
    switch (type) {
      case kGF16: case kGBF16: return count() * 2;
      case kGQ8_0: return count() / kQ8Block * (2 + kQ8Block);
      default: return count() * 4;
    }
  }
};

// ggml's reference Q8_0 quantiser (quantize_row_q8_0_ref): d = amax / 127 rounded to f16 for
// storage, q = roundf(x * (1 / d)) with the fp32 d, so a GGUF from here holds the bytes llama.cpp's
// own quantiser would write.
void encode(const Out& t, const float* x, std::string& out) {
  const uint64_t n = t.count();
  switch (t.type) {
    case kGF32: out.assign(reinterpret_cast<const char*>(x), n * 4); return;
    case kGF16: case kGBF16: {
      out.resize(n * 2);
      uint16_t* h = reinterpret_cast<uint16_t*>(out.data());
      for (uint64_t i = 0; i < n; i++) h[i] = t.type == kGF16 ? f32_to_f16(x[i]) : f32_to_bf16(x[i]);
      return;
    }
    case kGQ8_0: {
      out.resize(t.bytes());
      char* p = out.data();
      for (uint64_t b = 0; b < n / kQ8Block; b++, p += 2 + kQ8Block) {
        const float* v = x + b * kQ8Block;
        float amax = 0;
        for (int j = 0; j < kQ8Block; j++) amax = std::max(amax, std::fabs(v[j]));
        const float d = amax / 127.0f, id = d != 0 ? 1.0f / d : 0.0f;
        const uint16_t dh = f32_to_f16(d);
        std::memcpy(p, &dh, 2);
        for (int j = 0; j < kQ8Block; j++) p[2 + j] = char(int8_t(std::round(v[j] * id)));
      }
      return;
    }
  }
}

std::string pad_name(int32_t id) { return "[PAD" + std::to_string(id) + "]"; }

// llama.cpp's name for a dsv3 pre-tokenizer ("" when it has none).
std::string llama_pre(const Tokenizer* tok) {
  if (!tok) return "gpt-2";  // byte-level ids: every byte is its own token, no merges apply
  if (tok->pretok.name == "gpt2") return "gpt-2";
  if (tok->pretok.name == "deepseek_v3") return "deepseek-v3";
  return "";
}

}  // namespace

void check_gguf_exportable(const ModelConfig& c, const Tokenizer* tok, std::vector<std::string>* notes) {
  validate(c);
  const char* why = "llama.cpp's deepseek2 architecture";
  DSV3_CHECK(c.experts > 0, why, " is a mixture of experts: a model without routed experts "
             "(--experts 0) cannot be exported to it");
  DSV3_CHECK(c.shared_experts > 0, why, " needs shared experts (this model has shared_experts 0)");
  DSV3_CHECK(c.dense_layers < c.layers, why, " needs at least one MoE layer (dense_layers ",
             c.dense_layers, " of ", c.layers, ")");
  if (tok) {
    DSV3_CHECK(!llama_pre(tok).empty(), "the tokenizer's pre-tokenizer '", tok->pretok.name,
               "' has no llama.cpp equivalent (llama.cpp knows gpt2 and deepseek_v3): the GGUF "
               "would tokenise text differently");
    DSV3_CHECK(int64_t(tok->vocab.size()) <= c.vocab, "the tokenizer has ", tok->vocab.size(),
               " tokens, the model's vocabulary only ", c.vocab);
  }
  if (notes && c.mtp_depth > 0)
    notes->push_back("the " + std::to_string(c.mtp_depth) + " MTP module(s) are not written "
                     "(llama.cpp's deepseek2 has no multi-token prediction)");
}

void export_gguf(const std::string& path, const ModelConfig& c, const std::vector<float>& params,
                 const GgufExport& opt) {
  std::vector<std::string> notes;
  check_gguf_exportable(c, opt.tokenizer, &notes);
  const ParamTable t = build_param_table(c);
  DSV3_CHECK(params.size() == t.total, "weights have ", params.size(), " values, the model ", t.total);
  const std::string arch = "deepseek2", a = arch + ".";

  // ---- metadata
  Kv kv;
  kv.str("general.architecture", arch);
  kv.str("general.name", opt.name);
  kv.u32("general.file_type", file_type(opt.dtype));
  kv.u32("general.alignment", uint32_t(kAlign));
  kv.u32(a + "context_length", uint32_t(c.max_seq));
  kv.u32(a + "embedding_length", uint32_t(c.hidden));
  kv.u32(a + "feed_forward_length", uint32_t(c.dense_inter));
  kv.u32(a + "block_count", uint32_t(c.layers));
  kv.u32(a + "vocab_size", uint32_t(c.vocab));
  kv.u32(a + "attention.head_count", uint32_t(c.heads));
  kv.u32(a + "attention.head_count_kv", 1);  // MLA caches one latent "head"
  kv.f32(a + "attention.layer_norm_rms_epsilon", c.rms_eps);
  if (c.q_lora > 0) kv.u32(a + "attention.q_lora_rank", uint32_t(c.q_lora));
  kv.u32(a + "attention.kv_lora_rank", uint32_t(c.kv_lora));
  kv.u32(a + "attention.key_length", uint32_t(c.kv_lora + c.qk_rope));
  kv.u32(a + "attention.value_length", uint32_t(c.kv_lora));
  kv.u32(a + "attention.key_length_mla", uint32_t(c.qk_head()));
  kv.u32(a + "attention.value_length_mla", uint32_t(c.v_head));
  kv.u32(a + "rope.dimension_count", uint32_t(c.qk_rope));
  kv.f32(a + "rope.freq_base", c.rope_theta);
  if (c.yarn_factor > 1) {
    kv.str(a + "rope.scaling.type", "yarn");
    kv.f32(a + "rope.scaling.factor", c.yarn_factor);
    kv.u32(a + "rope.scaling.original_context_length", uint32_t(c.yarn_original_ctx));
    kv.f32(a + "rope.scaling.yarn_log_multiplier", 0.1 * c.yarn_mscale);  // 0.1 x mscale_all_dim
    kv.f32(a + "rope.scaling.yarn_beta_fast", c.yarn_beta_fast);
    kv.f32(a + "rope.scaling.yarn_beta_slow", c.yarn_beta_slow);
  }
  kv.u32(a + "leading_dense_block_count", uint32_t(c.dense_layers));
  kv.u32(a + "expert_feed_forward_length", uint32_t(c.moe_inter));
  kv.u32(a + "expert_count", uint32_t(c.experts));
  kv.u32(a + "expert_used_count", uint32_t(c.topk));
  kv.u32(a + "expert_shared_count", uint32_t(c.shared_experts));
  kv.u32(a + "expert_group_count", uint32_t(c.groups));
  kv.u32(a + "expert_group_used_count", uint32_t(c.topk_groups));
  kv.f32(a + "expert_weights_scale", c.route_scale);
  kv.boolean(a + "expert_weights_norm", c.norm_topk);
  kv.u32(a + "expert_gating_func", c.router == RouterKind::Sigmoid ? 2 : 1);  // missing = softmax

  // ---- tokenizer: gpt2-style tokens (byte-to-unicode text) and merges
  std::vector<std::string> tokens(c.vocab), merges;
  std::vector<int32_t> types(c.vocab, 5);  // UNUSED until filled
  const Tokenizer* tok = opt.tokenizer;
  int32_t bos = -1, eos = -1;
  if (tok) {
    for (size_t id = 0; id < tok->vocab.size(); id++)
      if (!tok->vocab[id].empty()) tokens[id] = bytes_to_gpt2_text(tok->vocab[id]), types[id] = 1;
    for (const SpecialToken& s : tok->specials) tokens[s.id] = s.text, types[s.id] = 3;  // CONTROL
    for (const auto& [l, r] : tok->merges)
      merges.push_back(bytes_to_gpt2_text(tok->vocab[l]) + " " + bytes_to_gpt2_text(tok->vocab[r]));
    bos = tok->roles.bos, eos = tok->roles.eos;
  } else {  // byte-level ids: the 256 bytes, no merges
    for (int b = 0; b < std::min(256, c.vocab); b++)
      tokens[b] = bytes_to_gpt2_text(std::string(1, char(b))), types[b] = 1;
    // llama.cpp's gpt2 vocabularies default to bos = eos = 11 (a byte here): name an unused id
    if (c.vocab > 256) bos = eos = 256;
  }
  for (int id = 0; id < c.vocab; id++)
    if (types[id] == 5) tokens[id] = pad_name(id);
  kv.str("tokenizer.ggml.model", "gpt2");
  kv.str("tokenizer.ggml.pre", llama_pre(tok));
  kv.strs("tokenizer.ggml.tokens", tokens);
  kv.i32s("tokenizer.ggml.token_type", types);
  kv.strs("tokenizer.ggml.merges", merges);
  if (bos >= 0) kv.u32("tokenizer.ggml.bos_token_id", uint32_t(bos));
  if (eos >= 0) kv.u32("tokenizer.ggml.eos_token_id", uint32_t(eos));
  kv.boolean("tokenizer.ggml.add_bos_token", false);  // dsv3 models are trained without one

  // ---- tensors
  const float* P = params.data();
  auto at = [&](const std::string& name) { return P + t.at(name).offset; };
  std::vector<Out> outs;
  auto weight_type = [&](uint64_t ne0) -> uint32_t {
    switch (opt.dtype) {
      case GgufDtype::F32: return kGF32;
      case GgufDtype::F16: return kGF16;
      case GgufDtype::BF16: return kGBF16;
      case GgufDtype::Q8_0: return ne0 % kQ8Block == 0 ? kGQ8_0 : kGF16;
    }
    return kGF32;
  };
  // A table tensor as it is: torch shape (d0, ..., dk) is ggml ne (dk, ..., d0).
  auto plain = [&](const std::string& gname, const std::string& name, bool keep_f32) {
    const ParamInfo& p = t.at(name);
    Out o;
    o.name = gname;
    for (auto it = p.shape.rbegin(); it != p.shape.rend(); ++it) o.ne.push_back(uint64_t(*it));
    o.type = keep_f32 || p.shape.size() == 1 ? kGF32 : weight_type(o.ne[0]);
    const float* src = P + p.offset;
    const size_t n = p.numel;
    o.fill = [src, n](float* dst) { std::copy_n(src, n, dst); };
    outs.push_back(std::move(o));
  };
  plain("token_embd.weight", "model.embed_tokens.weight", false);
  const int H = c.heads, nope = c.qk_nope, vh = c.v_head, kvl = c.kv_lora, C = c.hidden;
  for (int l = 0; l < c.layers; l++) {
    const std::string p = "model.layers." + std::to_string(l) + ".", b = "blk." + std::to_string(l) + ".";
    plain(b + "attn_norm.weight", p + "input_layernorm.weight", true);
    if (c.q_lora > 0) {
      plain(b + "attn_q_a.weight", p + "self_attn.q_a_proj.weight", false);
      plain(b + "attn_q_a_norm.weight", p + "self_attn.q_a_layernorm.weight", true);
      plain(b + "attn_q_b.weight", p + "self_attn.q_b_proj.weight", false);
    } else {
      plain(b + "attn_q.weight", p + "self_attn.q_proj.weight", false);
    }
    plain(b + "attn_kv_a_mqa.weight", p + "self_attn.kv_a_proj_with_mqa.weight", false);
    plain(b + "attn_kv_a_norm.weight", p + "self_attn.kv_a_layernorm.weight", true);
    // kv_b (H*(nope+v), kv_lora) per head: its nope key rows transposed, its v rows as they are
    const float* kvb = at(p + "self_attn.kv_b_proj.weight");
    Out kb;
    kb.name = b + "attn_k_b.weight";
    kb.ne = {uint64_t(nope), uint64_t(kvl), uint64_t(H)};
    kb.type = weight_type(kb.ne[0]);
    kb.fill = [=](float* dst) {
      for (int h = 0; h < H; h++)
        for (int r = 0; r < kvl; r++)
          for (int j = 0; j < nope; j++)
            dst[(size_t(h) * kvl + r) * nope + j] = kvb[(size_t(h) * (nope + vh) + j) * kvl + r];
    };
    outs.push_back(std::move(kb));
    Out vb;
    vb.name = b + "attn_v_b.weight";
    vb.ne = {uint64_t(kvl), uint64_t(vh), uint64_t(H)};
    vb.type = weight_type(vb.ne[0]);
    vb.fill = [=](float* dst) {
      for (int h = 0; h < H; h++)
        std::copy_n(kvb + (size_t(h) * (nope + vh) + nope) * kvl, size_t(vh) * kvl,
                    dst + size_t(h) * vh * kvl);
    };
    outs.push_back(std::move(vb));
    plain(b + "attn_output.weight", p + "self_attn.o_proj.weight", false);
    plain(b + "ffn_norm.weight", p + "post_attention_layernorm.weight", true);
    if (!c.is_moe_layer(l)) {
      plain(b + "ffn_gate.weight", p + "mlp.gate_proj.weight", false);
      plain(b + "ffn_up.weight", p + "mlp.up_proj.weight", false);
      plain(b + "ffn_down.weight", p + "mlp.down_proj.weight", false);
      continue;
    }
    plain(b + "ffn_gate_inp.weight", p + "mlp.gate.weight", true);  // the router stays F32
    if (c.router == RouterKind::Sigmoid)
      plain(b + "exp_probs_b.bias", p + "mlp.gate.e_score_correction_bias", true);
    for (const char* proj : {"gate", "up", "down"}) {
      Out e;
      e.name = b + "ffn_" + proj + "_exps.weight";
      const bool down = std::strcmp(proj, "down") == 0;
      e.ne = down ? std::vector<uint64_t>{uint64_t(c.moe_inter), uint64_t(C), uint64_t(c.experts)}
                  : std::vector<uint64_t>{uint64_t(C), uint64_t(c.moe_inter), uint64_t(c.experts)};
      e.type = weight_type(e.ne[0]);
      std::vector<const float*> src;
      for (int x = 0; x < c.experts; x++)
        src.push_back(at(p + "mlp.experts." + std::to_string(x) + "." + proj + "_proj.weight"));
      const size_t n = size_t(c.moe_inter) * C;
      e.fill = [src, n](float* dst) {
        for (size_t x = 0; x < src.size(); x++) std::copy_n(src[x], n, dst + x * n);
      };
      outs.push_back(std::move(e));
    }
    plain(b + "ffn_gate_shexp.weight", p + "mlp.shared_experts.gate_proj.weight", false);
    plain(b + "ffn_up_shexp.weight", p + "mlp.shared_experts.up_proj.weight", false);
    plain(b + "ffn_down_shexp.weight", p + "mlp.shared_experts.down_proj.weight", false);
  }
  plain("output_norm.weight", "model.norm.weight", true);
  plain("output.weight", "lm_head.weight", false);
  int fallbacks = 0;
  uint64_t off = 0;
  for (Out& o : outs) {
    if (opt.dtype == GgufDtype::Q8_0 && o.type == kGF16) fallbacks++;
    o.offset = off;
    off = (off + o.bytes() + kAlign - 1) / kAlign * kAlign;
  }
  if (fallbacks > 0)
    notes.push_back(std::to_string(fallbacks) + " tensor(s) have rows that are not a multiple of "
                    "32 values and are F16 instead of Q8_0");

  write_file_atomic(path, [&](std::FILE* f) {
    Kv head;  // magic, version, counts
    head.pod(uint32_t(0x46554747));  // "GGUF"
    head.pod(uint32_t(3));
    head.pod(uint64_t(outs.size()));
    head.pod(uint64_t(kv.count()));
    Kv infos;  // the tensor infos, after the metadata
    for (const Out& o : outs) {
      infos.string(o.name);
      infos.pod(uint32_t(o.ne.size()));
      for (uint64_t d : o.ne) infos.pod(d);
      infos.pod(o.type);
      infos.pod(o.offset);
    }
    const uint64_t meta = head.bytes().size() + kv.bytes().size() + infos.bytes().size();
    write_bytes(f, head.bytes().data(), head.bytes().size());
    write_bytes(f, kv.bytes().data(), kv.bytes().size());
    write_bytes(f, infos.bytes().data(), infos.bytes().size());
    write_zeros(f, size_t((kAlign - meta % kAlign) % kAlign));
    std::vector<float> values;
    std::string bytes;
    uint64_t at_off = 0;
    for (const Out& o : outs) {
      write_zeros(f, size_t(o.offset - at_off));
      values.resize(o.count());
      o.fill(values.data());
      encode(o, values.data(), bytes);
      write_bytes(f, bytes.data(), bytes.size());
      at_off = o.offset + bytes.size();
    }
    write_zeros(f, size_t(off - at_off));
  });
  for (const std::string& n : notes) std::fprintf(stderr, "note: %s\n", n.c_str());
}

}  // namespace dsv3
