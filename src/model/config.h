// Model configuration (M7): one struct, presets in code, validated in one place.
// Field names are dsv3's own short names; checkpoint/hf.cpp maps them to the Hugging Face
// DeepseekV3 config.json keys.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ops/rope.h"

namespace dsv3 {

enum class RouterKind : uint8_t {
  Sigmoid,  // DeepSeek-V3: sigmoid scores, auxiliary-loss-free bias, group-limited top-k
  Softmax,  // classic: softmax over experts, top-k, auxiliary balance loss
};
const char* router_name(RouterKind k);
RouterKind parse_router(const std::string& s);

enum class BalanceScope : uint8_t { Sequence, Batch };  // what one balance-loss average covers

// Which keys a query sees (M6; ops/sparse_attention.h): all earlier ones, the last `window`, or
// those of its LSH buckets.
enum class AttentionKind : uint8_t { Dense, Window, Lsh };
const char* attention_name(AttentionKind k);
AttentionKind parse_attention(const std::string& s);

struct ModelConfig {
  int vocab = 4096;
  int hidden = 256;       // C
  int layers = 4;         // main-model blocks
  int dense_layers = 1;   // the first k blocks use a dense SwiGLU FFN (first_k_dense_replace)
  int heads = 4;          // H
  // MLA
  int q_lora = 128;       // 0 = plain q projection (V2-Lite)
  int kv_lora = 64;
  int qk_nope = 32;
  int qk_rope = 16;
  int v_head = 32;
  // FFN / MoE
  int dense_inter = 768;
  int moe_inter = 128;
  int experts = 16;        // routed experts E (0 = every block dense)
  int shared_experts = 1;  // shared expert inter = shared_experts * moe_inter
  int topk = 4;            // K
  int groups = 4;          // expert groups for group-limited routing (1 = off)
  int topk_groups = 2;     // groups kept per token
  RouterKind router = RouterKind::Sigmoid;
  double route_scale = 2.5;
  bool norm_topk = true;   // renormalise the chosen gate weights to sum to 1
  // MTP
  int mtp_depth = 1;
  // norms, positions
  double rms_eps = 1e-6;
  int max_seq = 4096;      // max_position_embeddings
  double rope_theta = 10000.0;
  double yarn_factor = 1.0;  // > 1 enables YaRN
  int yarn_original_ctx = 4096;
  double yarn_beta_fast = 32.0;
  double yarn_beta_slow = 1.0;
  double yarn_mscale = 1.0;
  double init_std = 0.006;
  // attention pattern (M6)
  AttentionKind attention = AttentionKind::Dense;
  int window = 256;         // window: keys per query, the query's own included
  int lsh_buckets = 32;     // lsh: buckets per round (even)
  int lsh_rounds = 1;       // lsh: hash rounds (keys are the union over rounds)
  int lsh_chunk = 64;       // lsh: chunk of the sorted order (a query sees its chunk and the previous)
  long long lsh_seed = 1;   // lsh: the random rotations, fixed for the model's life

  // derived
  int qk_head() const { return qk_nope + qk_rope; }
  int q_dim() const { return heads * qk_head(); }
  bool is_moe_layer(int l) const { return experts > 0 && l >= dense_layers; }
  RopeParams rope() const;
  double attention_scale() const;  // qk_head^-0.5 * YaRN multiplier
  // entries of a query's saved P row at sequence length T: dense T (the full row), window W,
  // LSH rounds * (2 chunk + 1) (ops/sparse_attention.h)
  int attention_keys(int T) const;
};

struct TrainingLossConfig {
  double mtp_weight = 0.3;        // lambda: MTP loss = lambda / D * sum of module losses
  // The schedule of V3 (0.3 for the first 10T of 14.8T tokens, then 0.1): from this fraction of
  // the run's steps on, lambda = mtp_weight_late. 1 = never switch.
  double mtp_weight_late = 0.1;
  double mtp_late_from = 1.0;
  double balance_alpha = 1e-4;    // weight of the balance loss (sequence-wise for V3)
  BalanceScope balance_scope = BalanceScope::Sequence;
  double bias_update_rate = 1e-3; // gamma of auxiliary-loss-free balancing (sigmoid router)
};

// Throws dsv3::Error naming the first impossible setting.
void validate(const ModelConfig& c);

// Presets: "debug", "tiny", "small", "v2-lite", "v3-671b".
ModelConfig preset(const std::string& name);
std::vector<std::string> preset_names();

// M7 calculator.
struct ModelStats {
  int64_t params = 0;            // everything stored (incl. MTP modules)
  int64_t params_main = 0;       // without MTP modules
  int64_t active_params = 0;     // per token, main model, without the embedding lookup
  int64_t active_matmul = 0;     // activated params that take part in GEMMs (no embedding/norms)
  double train_flops_per_token = 0;  // 6 * active matmul params (+ MTP) + attention, causal
  double fwd_flops_per_token = 0;
};
ModelStats model_stats(const ModelConfig& c, int seq_len);
// Forward FLOPs per token of main block l, and of everything after the last block (final norm,
// head, MTP modules): what a pipeline split balances (the embedding is a lookup).
double block_fwd_flops_per_token(const ModelConfig& c, int l, int seq_len);
double tail_fwd_flops_per_token(const ModelConfig& c, int seq_len);

}  // namespace dsv3

#include "core/fields.h"
namespace dsv3 {
// The settings of ModelConfig and TrainingLossConfig as data: names, types, help (O5).
const std::vector<FieldSpec>& model_fields();
const std::vector<FieldSpec>& loss_fields();
const char* balance_scope_name(BalanceScope s);
BalanceScope parse_balance_scope(const std::string& s);
}  // namespace dsv3
