// Generation for one prompt (I1): `dsv3 sample`, the trainer's closing sample and the
// benchmarks. generate() runs the decode engine (infer/decode.h: absorbed MLA over the latent
// KV cache) through the scheduler; generate_recompute() is the path it replaced, re-running the
// whole context through the training forward for every token, kept as the baseline the
// benchmarks compare against.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include "infer/sampler.h"
#include "infer/scheduler.h"
#include "model/weights.h"

namespace dsv3 {

struct SampleConfig : SamplingParams {
  int max_tokens = 200;
  std::vector<int32_t> stop_ids;  // ends generation (not emitted)
  bool speculative = false;       // MTP drafts, verified by the main model
};

// Continues `prompt` (non-empty) by up to max_tokens ids within `context` tokens in all (and
// the model's max_seq); on_token sees each new id and may return false to stop (a stop string).
// stats (optional): steps, tokens, speculative acceptance.
std::vector<int32_t> generate(const ModelWeights& w, const std::vector<int32_t>& prompt,
                              const SampleConfig& s, int context,
                              const std::function<bool(int32_t)>& on_token = {},
                              SchedulerStats* stats = nullptr);

// The same distribution without a cache: forward() over the last `context` tokens per token.
std::vector<int32_t> generate_recompute(const ModelWeights& w, const std::vector<int32_t>& prompt,
                                        const SampleConfig& s, int context,
                                        const std::function<bool(int32_t)>& on_token = {});

}  // namespace dsv3
