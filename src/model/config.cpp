#include "model/config.h"

#include <algorithm>
#include <cmath>

#include "core/check.h"
#include "model/params.h"

namespace dsv3 {

const char* router_name(RouterKind k) { return k == RouterKind::Sigmoid ? "sigmoid" : "softmax"; }

const char* attention_name(AttentionKind k) {
  switch (k) {
    case AttentionKind::Dense: return "dense";
    case AttentionKind::Window: return "window";
    case AttentionKind::Lsh: return "lsh";
  }
  return "?";
}
AttentionKind parse_attention(const std::string& s) {
  if (s == "dense") return AttentionKind::Dense;
  if (s == "window") return AttentionKind::Window;
  if (s == "lsh") return AttentionKind::Lsh;
  fail("unknown attention '", s, "' (expected dense, window or lsh)");
}

int ModelConfig::attention_keys(int T) const {
  switch (attention) {
    case AttentionKind::Dense: return T;
    case AttentionKind::Window: return window;
    case AttentionKind::Lsh: return lsh_rounds * (2 * lsh_chunk + 1);  // P slots per query
  }
  return T;
}

RouterKind parse_router(const std::string& s) {
  if (s == "sigmoid") return RouterKind::Sigmoid;
  if (s == "softmax") return RouterKind::Softmax;
  fail("unknown router '", s, "' (expected sigmoid or softmax)");
}

RopeParams ModelConfig::rope() const {
  RopeParams p;
  p.dim = qk_rope;
  p.theta = rope_theta;
  p.factor = yarn_factor;
  p.original_max_pos = yarn_original_ctx;
  p.beta_fast = yarn_beta_fast;
  p.beta_slow = yarn_beta_slow;
  p.mscale = yarn_mscale;
  return p;
}

double ModelConfig::attention_scale() const {
  return 1.0 / std::sqrt(double(qk_head())) * rope_softmax_scale_multiplier(rope());
}

void validate(const ModelConfig& c) {
  check_field_ranges(model_fields(), &c);
  auto positive = [](const char* name, double v) {
    DSV3_CHECK(v > 0, name, " must be positive (got ", v, ")");
  };
  positive("vocab", c.vocab);
  positive("hidden", c.hidden);
  positive("layers", c.layers);
  positive("heads", c.heads);
  positive("kv_lora", c.kv_lora);
  positive("qk_nope", c.qk_nope);
  positive("qk_rope", c.qk_rope);
  positive("v_head", c.v_head);
  positive("rms_eps", c.rms_eps);
  DSV3_CHECK(c.window > 0, "window must be > 0 keys (got ", c.window, ")");
  DSV3_CHECK(c.lsh_buckets >= 2 && c.lsh_buckets % 2 == 0, "lsh_buckets must be even and >= 2 "
             "(angular LSH: argmax over [xR, -xR]), got ", c.lsh_buckets);
  DSV3_CHECK(c.lsh_rounds >= 1 && c.lsh_rounds <= 16, "lsh_rounds must be in [1, 16], got ", c.lsh_rounds);
  DSV3_CHECK(c.lsh_chunk >= 1, "lsh_chunk must be >= 1, got ", c.lsh_chunk);
  positive("rope_theta", c.rope_theta);
  positive("max_seq", c.max_seq);
  positive("init_std", c.init_std);
  DSV3_CHECK(c.vocab <= (1 << 30), "vocab ", c.vocab, " is too large");
  DSV3_CHECK(c.qk_rope % 2 == 0, "qk_rope (", c.qk_rope, ") must be even: RoPE rotates pairs");
  DSV3_CHECK(c.q_lora >= 0, "q_lora must be >= 0 (0 = plain q projection), got ", c.q_lora);
  DSV3_CHECK(c.dense_layers >= 0 && c.dense_layers <= c.layers, "dense_layers (", c.dense_layers,
             ") must be between 0 and layers (", c.layers, ")");
  DSV3_CHECK(c.mtp_depth >= 0, "mtp_depth must be >= 0, got ", c.mtp_depth);
  DSV3_CHECK(c.experts >= 0, "experts must be >= 0, got ", c.experts);
  if (c.dense_layers > 0) positive("dense_inter", c.dense_inter);
  if (c.experts > 0) {
    positive("moe_inter", c.moe_inter);
    DSV3_CHECK(c.topk >= 1 && c.topk <= c.experts, "topk (", c.topk,
               ") must be between 1 and the number of routed experts (", c.experts, ")");
    DSV3_CHECK(c.groups >= 1, "groups must be >= 1, got ", c.groups);
    DSV3_CHECK(c.experts % c.groups == 0, "experts (", c.experts, ") must be divisible by groups (",
               c.groups, ")");
    DSV3_CHECK(c.topk_groups >= 1 && c.topk_groups <= c.groups, "topk_groups (", c.topk_groups,
               ") must be between 1 and groups (", c.groups, ")");
    const int per_group = c.experts / c.groups;
    if (c.groups > 1)
      DSV3_CHECK(per_group >= 2, "group-limited routing scores a group by its top-2 experts, so ",
                 "each group needs >= 2 experts (experts ", c.experts, " / groups ", c.groups, ")");
    DSV3_CHECK(c.topk <= c.topk_groups * per_group, "topk (", c.topk, ") exceeds the experts in ",
               "the kept groups (topk_groups ", c.topk_groups, " x ", per_group, ")");
    DSV3_CHECK(c.shared_experts >= 0, "shared_experts must be >= 0");
    positive("route_scale", c.route_scale);
  } else {
    DSV3_CHECK(c.dense_layers == c.layers || c.layers == 0,
               "experts = 0 needs every layer dense: set dense_layers = layers (", c.layers, ")");
    DSV3_CHECK(c.mtp_depth == 0 || c.dense_inter > 0, "MTP blocks need an FFN");
  }
  if (c.yarn_factor != 1.0) {
    DSV3_CHECK(c.yarn_factor > 1.0, "yarn_factor must be 1 (off) or > 1, got ", c.yarn_factor);
    positive("yarn_original_ctx", c.yarn_original_ctx);
    DSV3_CHECK(c.yarn_beta_fast > c.yarn_beta_slow && c.yarn_beta_slow > 0,
               "YaRN needs beta_fast > beta_slow > 0");
  }
}

std::vector<std::string> preset_names() { return {"debug", "tiny", "small", "v2-lite", "v3-671b"}; }

ModelConfig preset(const std::string& name) {
  ModelConfig c;  // the defaults are `tiny`, the benchmark config
  if (name == "tiny") return c;
  if (name == "debug") {  // seconds per hundred steps; for tests and the quick start smoke run
    c.vocab = 512, c.hidden = 64, c.layers = 2, c.dense_layers = 1, c.heads = 2;
    c.q_lora = 32, c.kv_lora = 32, c.qk_nope = 16, c.qk_rope = 8, c.v_head = 16;
    c.dense_inter = 128, c.moe_inter = 32, c.experts = 8, c.shared_experts = 1, c.topk = 2;
    c.groups = 2, c.topk_groups = 1, c.max_seq = 1024, c.init_std = 0.02;
    return c;
  }
  if (name == "small") {  // about 100M activated parameters, DeepSeek-V3 shape
    c.vocab = 32768, c.hidden = 768, c.layers = 12, c.dense_layers = 1, c.heads = 12;
    c.q_lora = 384, c.kv_lora = 256, c.qk_nope = 64, c.qk_rope = 32, c.v_head = 64;
    c.dense_inter = 3072, c.moe_inter = 256, c.experts = 64, c.shared_experts = 2, c.topk = 6;
    c.groups = 8, c.topk_groups = 4, c.max_seq = 4096, c.init_std = 0.02;
    return c;
  }
  if (name == "v2-lite") {
    c.vocab = 102400, c.hidden = 2048, c.layers = 27, c.dense_layers = 1, c.heads = 16;
    c.q_lora = 0, c.kv_lora = 512, c.qk_nope = 128, c.qk_rope = 64, c.v_head = 128;
    c.dense_inter = 10944, c.moe_inter = 1408, c.experts = 64, c.shared_experts = 2, c.topk = 6;
    c.groups = 1, c.topk_groups = 1, c.router = RouterKind::Softmax, c.route_scale = 1.0;
    c.norm_topk = false, c.mtp_depth = 0, c.max_seq = 163840;
    c.yarn_factor = 40, c.yarn_original_ctx = 4096, c.yarn_mscale = 0.707;
    return c;
  }
  if (name == "v3-671b") {
    c.vocab = 129280, c.hidden = 7168, c.layers = 61, c.dense_layers = 3, c.heads = 128;
    c.q_lora = 1536, c.kv_lora = 512, c.qk_nope = 128, c.qk_rope = 64, c.v_head = 128;
    c.dense_inter = 18432, c.moe_inter = 2048, c.experts = 256, c.shared_experts = 1, c.topk = 8;
    c.groups = 8, c.topk_groups = 4, c.router = RouterKind::Sigmoid, c.route_scale = 2.5;
    c.mtp_depth = 1, c.max_seq = 163840;
    c.yarn_factor = 40, c.yarn_original_ctx = 4096, c.yarn_mscale = 1.0;
    return c;
  }
  std::string names;
  for (auto& n : preset_names()) names += (names.empty() ? "" : ", ") + n;
  fail("unknown preset '", name, "' (presets: ", names, ")");
}

namespace {
// Parameters of one block's attention and FFN that take part in GEMMs per token.
int64_t attn_params(const ModelConfig& c) {
  int64_t C = c.hidden, q = c.q_lora > 0 ? C * c.q_lora + int64_t(c.q_lora) * c.q_dim()
                                         : C * c.q_dim();
  return q + C * (c.kv_lora + c.qk_rope) + int64_t(c.kv_lora) * c.heads * (c.qk_nope + c.v_head) +
         int64_t(c.heads) * c.v_head * C;
}
int64_t swiglu_params(const ModelConfig& c, int64_t inter) { return 3 * int64_t(c.hidden) * inter; }
int64_t ffn_active(const ModelConfig& c, bool moe) {
  if (!moe) return swiglu_params(c, c.dense_inter);
  return int64_t(c.experts) * c.hidden +  // router
         swiglu_params(c, int64_t(c.topk + c.shared_experts) * c.moe_inter);
}
// Forward FLOPs per token of causal attention scores and values: on average (T+1)/2 keys; a
// window sees min(W, (T+1)/2) on average, LSH at most its K.
double attn_core_flops(const ModelConfig& c, int T) {
  double keys = (T + 1) / 2.0;
  if (c.attention == AttentionKind::Window) keys = std::min(keys, double(c.window));
  if (c.attention == AttentionKind::Lsh) keys = std::min(keys, double(c.lsh_rounds) * 2 * c.lsh_chunk + 1);
  return 2.0 * keys * c.heads * (c.qk_head() + c.v_head);
}
}  // namespace

ModelStats model_stats(const ModelConfig& c, int seq_len) {
  ModelStats s;
  const ParamTable t = build_param_table(c);
  for (const auto& p : t.list) {
    s.params += int64_t(p.numel);
    bool mtp = p.name.rfind("model.layers.", 0) == 0 &&
               std::stoi(p.name.substr(13)) >= c.layers;
    if (!mtp) s.params_main += int64_t(p.numel);
  }
  const int64_t head = int64_t(c.vocab) * c.hidden;
  int64_t main_matmul = head;
  for (int l = 0; l < c.layers; l++) main_matmul += attn_params(c) + ffn_active(c, c.is_moe_layer(l));
  int64_t mtp_matmul = 0;
  for (int k = 0; k < c.mtp_depth; k++)
    mtp_matmul += 2 * int64_t(c.hidden) * c.hidden + attn_params(c) + ffn_active(c, c.experts > 0) +
                  head;
  s.active_matmul = main_matmul + mtp_matmul;
  // DeepSeek's "activated" counts exclude the embedding lookup (V3: 37B, V2-Lite: 2.4B).
  s.active_params = main_matmul;
  const double attn = attn_core_flops(c, seq_len) * (c.layers + c.mtp_depth);
  s.fwd_flops_per_token = 2.0 * double(s.active_matmul) + attn;
  s.train_flops_per_token = 3.0 * s.fwd_flops_per_token;
  return s;
}

double block_fwd_flops_per_token(const ModelConfig& c, int l, int seq_len) {
  return 2.0 * double(attn_params(c) + ffn_active(c, c.is_moe_layer(l))) + attn_core_flops(c, seq_len);
}

double tail_fwd_flops_per_token(const ModelConfig& c, int seq_len) {
  const double head = 2.0 * double(c.vocab) * c.hidden;
  const double mtp = 2.0 * double(2 * int64_t(c.hidden) * c.hidden + attn_params(c) +
                                  ffn_active(c, c.experts > 0)) +
                     attn_core_flops(c, seq_len) + head;
  return head + c.mtp_depth * mtp;
}

}  // namespace dsv3

namespace dsv3 {

const char* balance_scope_name(BalanceScope s) {
  return s == BalanceScope::Sequence ? "sequence" : "batch";
}
BalanceScope parse_balance_scope(const std::string& s) {
  if (s == "sequence" || s == "seq") return BalanceScope::Sequence;
  if (s == "batch") return BalanceScope::Batch;
  fail("unknown balance scope '", s, "' (expected sequence or batch)");
}

const std::vector<FieldSpec>& model_fields() {
  using M = ModelConfig;
  static const std::vector<FieldSpec> f = {
      field("vocab", &M::vocab, "vocabulary size V", in_range(1, 1 << 30)),
      field("hidden", &M::hidden, "model width C", in_range(1, 1 << 20)),
      field("layers", &M::layers, "Transformer blocks in the main model", in_range(1, 4096)),
      field("dense_layers", &M::dense_layers, "first k blocks use a dense FFN", in_range(0, 4096)),
      field("heads", &M::heads, "attention heads H", in_range(1, 4096)),
      field("q_lora", &M::q_lora, "query low-rank dim (0 = plain q projection)", in_range(0, 1 << 20)),
      field("kv_lora", &M::kv_lora, "latent KV dim (kv_lora_rank)", in_range(1, 1 << 20)),
      field("qk_nope", &M::qk_nope, "per-head q/k dims without RoPE", in_range(1, 65536)),
      field("qk_rope", &M::qk_rope, "per-head q/k dims with RoPE (shared key)", in_range(2, 65536)),
      field("v_head", &M::v_head, "per-head value dim", in_range(1, 65536)),
      field("dense_inter", &M::dense_inter, "inner size of the dense FFN", in_range(0, 1 << 24)),
      field("moe_inter", &M::moe_inter, "inner size of each expert", in_range(0, 1 << 24)),
      field("experts", &M::experts, "routed experts E (0 = dense model)", in_range(0, 65536)),
      field("shared_experts", &M::shared_experts, "shared experts", in_range(0, 1024)),
      field("topk", &M::topk, "routed experts per token K", in_range(0, 65536)),
      field("groups", &M::groups, "expert groups for group-limited routing (1 = off)", in_range(1, 65536)),
      field("topk_groups", &M::topk_groups, "groups a token may route to", in_range(1, 65536)),
      choice("router", &M::router, "sigmoid|softmax",
             "sigmoid + bias balancing (V3) or softmax + aux loss", router_name, parse_router),
      field("route_scale", &M::route_scale, "gate weights are multiplied by this", above(0)),
      field("norm_topk", &M::norm_topk, "renormalise chosen gate weights to sum to 1"),
      field("mtp_depth", &M::mtp_depth, "multi-token prediction modules D", in_range(0, 64)),
      field("rms_eps", &M::rms_eps, "RMSNorm epsilon", in_range_open_lo(0, 1)),
      field("max_seq", &M::max_seq, "max positions (max_position_embeddings)", in_range(1, 1 << 24)),
      field("rope_theta", &M::rope_theta, "RoPE base", above(0)),
      field("yarn_factor", &M::yarn_factor, "YaRN context scaling factor (1 = off)", at_least(1)),
      field("yarn_original_ctx", &M::yarn_original_ctx, "YaRN original context length", in_range(1, 1 << 24)),
      field("yarn_beta_fast", &M::yarn_beta_fast, "YaRN beta_fast", above(0)),
      field("yarn_beta_slow", &M::yarn_beta_slow, "YaRN beta_slow", above(0)),
      field("yarn_mscale", &M::yarn_mscale, "YaRN mscale (attention temperature)", at_least(0)),
      field("init_std", &M::init_std, "std of the normal init of weight matrices", above(0)),
      choice("attention", &M::attention, "dense|window|lsh",
             "attention pattern: all earlier keys, a sliding window, or LSH buckets", attention_name,
             parse_attention),
      field("window", &M::window, "window: keys per query (the query's own included)", in_range(1, 1 << 24)),
      field("lsh_buckets", &M::lsh_buckets, "lsh: buckets per hash round (even)", in_range(2, 1 << 20)),
      field("lsh_rounds", &M::lsh_rounds, "lsh: hash rounds", in_range(1, 16)),
      field("lsh_chunk", &M::lsh_chunk, "lsh: chunk of the bucket-sorted order", in_range(1, 1 << 24)),
      field("lsh_seed", &M::lsh_seed, "lsh: seed of the random rotations (part of the model)", at_least(0)),
  };
  return f;
}

const std::vector<FieldSpec>& loss_fields() {
  using L = TrainingLossConfig;
  static const std::vector<FieldSpec> f = {
      field("mtp_weight", &L::mtp_weight, "lambda: MTP loss weight (divided by depth)", at_least(0)),
      field("mtp_weight_late", &L::mtp_weight_late, "lambda after mtp_late_from (V3: 0.1)", at_least(0)),
      field("mtp_late_from", &L::mtp_late_from,
            "fraction of the steps after which lambda = mtp_weight_late (V3: 0.676; 1 = never)", in_range(0, 1)),
      field("balance_alpha", &L::balance_alpha, "weight of the expert balance loss", at_least(0)),
      choice("balance_scope", &L::balance_scope, "sequence|batch",
             "balance loss averaged per sequence (V3) or over the batch", balance_scope_name,
             parse_balance_scope),
      field("bias_update_rate", &L::bias_update_rate,
            "gamma: per-step routing-bias update (sigmoid router, 0 = off)", at_least(0)),
  };
  return f;
}

}  // namespace dsv3
