// The decode engine (M2 inference path, I1): MLA with absorbed projections over the latent KV
// cache (infer/kv_cache.h), batched over sequences of different lengths. One step() runs the
// model over any mix of new tokens -- a prompt chunk of one sequence, one token of another --
// appends their latent rows to each sequence's cache and returns logits where asked. The
// weights are the read-only ModelWeights (model/weights.h); W_UK^T per head is derived from
// kv_b_proj once, at construction. Every weight multiplication is a gemm.h entry point
// (linear_forward, grouped_linear_forward); attention over the cache is
// ops/latent_attention.h.
//
// Per layer, for R new rows (docs/inference.md has the derivation):
//   q = q_b(rmsnorm(q_a(x))) | q_proj(x)                  (R, H, qk_nope + qk_rope), RoPE on q_pe
//   kv = kv_a(x); [rmsnorm(c_kv) | rope(k_pe)] -> cache   (R, kv_lora + qk_rope)
//   q_lat[h] = q_nope[h] W_UK[h]                           per-head GEMMs (H, R, kv_lora)
//   o_lat = latent_attention([q_lat | q_pe], cache)        (R, H, kv_lora)
//   o[h] = o_lat[h] W_UV[h]^T; out = o_proj(o)             per-head GEMMs, then (R, C)
// The rest of the block (norms, dense FFN, MoE with the router in fp32) is the training path's
// own code on R rows.
#pragma once
#include <cstdint>
#include <span>
#include <vector>

#include "infer/kv_cache.h"
#include "model/weights.h"

namespace dsv3 {

struct DecodeConfig {
  int max_rows = 256;       // new tokens per step over all sequences (prefill chunk + decodes)
  int max_seqs = 64;        // sequences per step
  int page_tokens = 64;     // tokens per cache page
  size_t kv_cache_bytes = size_t(256) << 20;
  bool mtp = false;         // also cache the first MTP module's layer (speculative drafts)
  int max_context = 0;      // longest sequence; 0 = the model's max_seq
  int max_logit_rows = 0;   // logit rows per step; 0 = 2 per sequence (a token and a draft)
};

// One sequence's part of a step: `tokens` are appended at positions seq->length ... (the
// sequence's reservation must cover them); logits of its last `logit_rows` new tokens are
// returned. row0 (out) is where its rows start in the step (for mtp_step's hidden_rows).
struct SeqStep {
  SeqCache* seq;
  std::span<const int32_t> tokens;
  int logit_rows = 1;
  int row0 = 0;
};

// The first MTP module over positions seq->mtp_length ...: the main model's final hidden state
// of each position (rows of the last step()) and the token that follows it. Returns the logits
// of the last row: the draft distribution of the token two ahead.
struct MtpStep {
  SeqCache* seq;
  std::span<const int32_t> hidden_rows;
  std::span<const int32_t> next_tokens;
};

class DecodeEngine {
 public:
  DecodeEngine(const ModelWeights& w, const DecodeConfig& cfg);
  ~DecodeEngine();
  DecodeEngine(const DecodeEngine&) = delete;
  DecodeEngine& operator=(const DecodeEngine&) = delete;

  const ModelConfig& config() const { return w_.config(); }
  const DecodeConfig& settings() const { return cfg_; }
  int max_context() const { return max_ctx_; }
  bool has_mtp() const { return cfg_.mtp; }
  KvCache& cache() { return *cache_; }
  size_t workspace_bytes() const;

  // logits: host (sum of logit_rows, V) fp32, in the order of `in`.
  void step(std::span<SeqStep> in, float* logits);
  // The same step, returning for each logit row log p(target) = log_softmax(logits)[target]
  // instead of its logits: targets and logprobs (host fp32) hold sum of logit_rows entries, in
  // the order of `in`; any number of rows (the head runs max_logit_rows at a time). Scoring
  // (eval/loglik.h) without moving (rows, V) logits to the host; the log-softmax is the
  // training loss's op (ops/cross_entropy.h).
  void step_logprobs(std::span<SeqStep> in, std::span<const int32_t> targets, float* logprobs);
  // logits: host (in.size(), V) fp32. Needs DecodeConfig::mtp.
  void mtp_step(std::span<const MtpStep> in, float* logits);

 private:
  struct Impl;
  // The main model over the step's new tokens; returns the rows whose logits were asked for.
  std::vector<int32_t> run_main(std::span<SeqStep> in);
  const ModelWeights& w_;
  DecodeConfig cfg_;
  int max_ctx_ = 0;
  std::unique_ptr<KvCache> cache_;
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv3
