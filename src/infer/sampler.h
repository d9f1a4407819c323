// Token sampling (I1): repetition penalty, temperature, top-k, top-p, min-p, seeded. The same
// distribution serves plain sampling and the acceptance test of speculative decoding.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/fields.h"
#include "core/rng.h"

namespace dsv3 {

struct SamplingParams {
  double temperature = 0.8;         // 0 = greedy
  int top_k = 0;                    // keep the k most likely tokens; 0 = off
  double top_p = 1.0;               // nucleus: smallest set with this mass; 1 = off
  double min_p = 0.0;               // drop tokens below min_p * the top probability; 0 = off
  double repetition_penalty = 1.0;  // > 1 discourages tokens already in the prompt or output
  uint64_t seed = 1;
};
// Throws dsv3::Error naming the first bad value.
void validate(const SamplingParams& p);
const std::vector<FieldSpec>& sampling_fields();

// The distribution a token is drawn from: ids with probabilities summing to 1.
struct Candidates {
  std::vector<int32_t> ids;
  std::vector<double> p;
  double prob(int32_t id) const;  // 0 when id is not a candidate
};

// Per-sequence sampler state: the rng and the tokens seen (for the repetition penalty).
class Sampler {
 public:
  Sampler(const SamplingParams& p, int vocab);
  const SamplingParams& params() const { return p_; }
  // Marks tokens as seen (the prompt, each generated token).
  void observe(std::span<const int32_t> ids);
  // The distribution of the next token given these logits (V).
  void distribution(const float* logits, Candidates& out);
  // Draws from c, never `exclude` (renormalising without it; -1 = none).
  int32_t draw(const Candidates& c, int32_t exclude = -1);
  int32_t sample(const float* logits) {
    distribution(logits, cand_);
    return draw(cand_);
  }
  // Speculative decoding with a deterministic draft d: keeps d with probability p(d) and
  // otherwise draws from p without d, which samples exactly from p (greedy: d iff it is the
  // argmax). Returns the token; *accepted says whether it is d.
  int32_t verify(const float* logits, int32_t draft, bool* accepted);

 private:
  SamplingParams p_;
  int V_;
  Rng rng_;
  std::vector<uint8_t> seen_mark_;
  std::vector<int32_t> seen_;
  std::vector<float> scaled_;
  std::vector<int32_t> order_;
  Candidates cand_;
};

}  // namespace dsv3
