// Autoregressive sampling (I1, without the KV cache yet: each token re-runs the context through
// a forward-only workspace over the weights alone).
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "core/rng.h"
#include "model/weights.h"

namespace dsv3 {

struct SampleConfig {
  double temperature = 0.8;  // 0 = greedy
  int top_k = 0;             // 0 = off
  double top_p = 1.0;        // nucleus; 1 = off
  int max_tokens = 200;
  uint64_t seed = 1;
};

// Picks one id from logits (V) with temperature, top-k and top-p.
int32_t sample_token(const float* logits, int V, const SampleConfig& s, Rng& rng);

// Continues `prompt` (non-empty) by max_tokens ids, feeding the model at most `context` tokens
// (and at most its max_seq); on_token sees each new id as it comes.
std::vector<int32_t> generate(const ModelWeights& w, const std::vector<int32_t>& prompt,
                              const SampleConfig& s, int context,
                              const std::function<void(int32_t)>& on_token = {});

}  // namespace dsv3
