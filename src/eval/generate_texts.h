// Text in, text out, for many prompts at once (E2 generation tasks, D11 synthetic data): the
// prompts run through the decode engine's scheduler (infer/scheduler.h) `batch` at a time with
// continuous batching; each stops at its stop string (cut off), the tokenizer's EOS or
// max_tokens. A prompt longer than the context leaves room for max_tokens by dropping tokens
// from its start. Models whose attention the cached engine does not run (non-dense patterns)
// go through generate_recompute one prompt at a time.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "infer/sampler.h"
#include "model/weights.h"
#include "tokenizer/text_codec.h"

namespace dsv3::eval {

struct TextGenConfig {
  SamplingParams sampling;  // temperature 0 = greedy; the seed is offset per prompt
  int max_tokens = 128;
  std::string stop;         // "" = none
  int batch = 32;
};

struct GeneratedText {
  std::string text;   // cut at the stop string
  int64_t tokens = 0; // generated tokens (the stop string's included)
  bool stopped = false;  // ended by the stop string or EOS (not max_tokens)
};

// done(i) after each finished prompt (optional).
std::vector<GeneratedText> generate_texts(const ModelWeights& w, const TextCodec& codec,
                                          const std::vector<std::string>& prompts,
                                          const TextGenConfig& cfg,
                                          const std::function<void(size_t)>& done = {});

}  // namespace dsv3::eval
