// Order of the transforms (as Hugging Face's logits processors and vLLM): repetition penalty on
// the logits (CTRL: divide a positive logit by the penalty, multiply a negative one), then
// temperature, top-k, top-p over the sorted survivors, min-p relative to the top probability.
// Ties break toward the lower id, so a seed fixes the output.
#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"

namespace dsv3 {

void validate(const SamplingParams& p) {
  DSV3_CHECK(std::isfinite(p.temperature) && p.temperature >= 0, "temperature must be >= 0, not ",
             p.temperature);
  DSV3_CHECK(p.top_k >= 0, "top_k must be >= 0 (0 = off), not ", p.top_k);
  DSV3_CHECK(p.top_p > 0 && p.top_p <= 1, "top_p must be in (0, 1], not ", p.top_p);
  DSV3_CHECK(p.min_p >= 0 && p.min_p <= 1, "min_p must be in [0, 1], not ", p.min_p);
  DSV3_CHECK(std::isfinite(p.repetition_penalty) && p.repetition_penalty > 0,
             "repetition_penalty must be > 0 (1 = off), not ", p.repetition_penalty);
}

const std::vector<FieldSpec>& sampling_fields() {
  using S = SamplingParams;
  static const std::vector<FieldSpec> f = {
      field("temperature", &S::temperature, "softmax temperature (0 = greedy)", at_least(0)),
      field("top_k", &S::top_k, "keep the k most likely tokens (0 = off)", at_least(0)),
      field("top_p", &S::top_p, "nucleus sampling mass (1 = off)", in_range_open_lo(0, 1)),
      field("min_p", &S::min_p, "drop tokens below min_p times the top probability (0 = off)", in_range(0, 1)),
      field("repetition_penalty", &S::repetition_penalty,
            "penalise tokens already in the prompt or output (1 = off)", above(0)),
      {"seed", "int", "sampling seed",
       [](const void* o) { return std::to_string(static_cast<const S*>(o)->seed); },
       [](void* o, const std::string& v) {
         const long long x = parse_int("seed", v);
         check_range("seed", at_least(0), double(x), v);
         static_cast<S*>(o)->seed = uint64_t(x);
       },
       at_least(0)},
  };
  return f;
}

double Candidates::prob(int32_t id) const {
  for (size_t i = 0; i < ids.size(); i++)
    if (ids[i] == id) return p[i];
  return 0;
}

Sampler::Sampler(const SamplingParams& p, int vocab)
    : p_(p), V_(vocab), rng_(p.seed), seen_mark_(p.repetition_penalty != 1.0 ? vocab : 0, 0) {
  validate(p);
}

void Sampler::observe(std::span<const int32_t> ids) {
  if (seen_mark_.empty()) return;
  for (int32_t id : ids)
    if (id >= 0 && id < V_ && !seen_mark_[size_t(id)]) {
      seen_mark_[size_t(id)] = 1;
      seen_.push_back(id);
    }
}

void Sampler::distribution(const float* logits, Candidates& out) {
  out.ids.clear();
  out.p.clear();
  const float* l = logits;
  if (!seen_.empty()) {
    scaled_.assign(logits, logits + V_);
    const float r = float(p_.repetition_penalty);
    for (int32_t id : seen_) scaled_[size_t(id)] = scaled_[size_t(id)] > 0 ? scaled_[size_t(id)] / r
                                                                            : scaled_[size_t(id)] * r;
    l = scaled_.data();
  }
  if (p_.temperature <= 0) {  // greedy: the first maximum
    out.ids.push_back(int32_t(std::max_element(l, l + V_) - l));
    out.p.push_back(1.0);
    return;
  }
  const float mx = *std::max_element(l, l + V_);
  const double inv_t = 1.0 / p_.temperature;
  order_.resize(size_t(V_));
  std::iota(order_.begin(), order_.end(), 0);
  auto desc = [&](int32_t a, int32_t b) { return l[a] > l[b] || (l[a] == l[b] && a < b); };
  size_t keep = size_t(V_);
  if (p_.top_k > 0 && p_.top_k < V_) {
    keep = size_t(p_.top_k);
    std::nth_element(order_.begin(), order_.begin() + keep, order_.end(), desc);
  }
  if (p_.top_p < 1.0 || p_.top_k > 0) std::sort(order_.begin(), order_.begin() + keep, desc);
  out.ids.assign(order_.begin(), order_.begin() + keep);
  out.p.resize(keep);
  double z = 0;
  for (size_t i = 0; i < keep; i++) z += (out.p[i] = std::exp((double(l[out.ids[i]]) - mx) * inv_t));
  if (p_.top_p < 1.0) {  // smallest prefix (sorted) whose mass reaches top_p
    double cum = 0;
    size_t n = 0;
    while (n < keep && cum < p_.top_p * z) cum += out.p[n++];
    keep = std::max<size_t>(n, 1);
    z = cum > 0 ? cum : out.p[0];
  }
  if (p_.min_p > 0) {  // unnormalised weights: the top token's is exp(0) = 1
    const double floor = p_.min_p;
    size_t w = 0;
    z = 0;
    for (size_t i = 0; i < keep; i++)
      if (out.p[i] >= floor) {
        out.ids[w] = out.ids[i];
        z += (out.p[w++] = out.p[i]);
      }
    keep = w;
  }
  out.ids.resize(keep);
  out.p.resize(keep);
  for (double& v : out.p) v /= z;
}

int32_t Sampler::draw(const Candidates& c, int32_t exclude) {
  DSV3_CHECK(!c.ids.empty(), "empty sampling distribution (internal error)");
  double z = 1.0;
  for (size_t i = 0; i < c.ids.size(); i++)
    if (c.ids[i] == exclude) z -= c.p[i];
  if (exclude >= 0 && z <= 1e-12) return c.ids[0] == exclude && c.ids.size() > 1 ? c.ids[1] : c.ids[0];
  double u = double(rng_.uniform()) * z;
  int32_t last = c.ids[0];
  for (size_t i = 0; i < c.ids.size(); i++) {
    if (c.ids[i] == exclude) continue;
    last = c.ids[i];
    if (u < c.p[i]) return c.ids[i];
    u -= c.p[i];
  }
  return last;
}

int32_t Sampler::verify(const float* logits, int32_t draft, bool* accepted) {
  distribution(logits, cand_);
  const double pd = cand_.prob(draft);
  // greedy (a point mass): accepted iff the draft is the argmax; no random number is used
  const bool ok = p_.temperature <= 0 ? pd > 0 : double(rng_.uniform()) < pd;
  *accepted = ok;
  return ok ? draft : draw(cand_, draft);
}

}  // namespace dsv3
