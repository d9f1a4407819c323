#include "infer/sample.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"
#include "model/model.h"

namespace dsv3 {

int32_t sample_token(const float* logits, int V, const SampleConfig& s, Rng& rng) {
  if (s.temperature <= 0) return int32_t(std::max_element(logits, logits + V) - logits);
  std::vector<int> order(V);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](int a, int b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  int keep = s.top_k > 0 ? std::min(s.top_k, V) : V;
  std::vector<double> p(keep);
  const double mx = logits[order[0]];
  double z = 0;
  for (int i = 0; i < keep; i++) z += (p[i] = std::exp((logits[order[i]] - mx) / s.temperature));
  if (s.top_p < 1.0) {  // smallest prefix whose mass reaches top_p
    double cum = 0;
    int n = 0;
    while (n < keep && cum < s.top_p * z) cum += p[n++];
    keep = std::max(n, 1);
    z = cum > 0 ? cum : p[0];
  }
  double u = double(rng.uniform()) * z;
  for (int i = 0; i < keep; i++) {
    if (u < p[i]) return order[i];
    u -= p[i];
  }
  return order[keep - 1];
}

std::vector<int32_t> generate(const ModelWeights& w, const std::vector<int32_t>& prompt,
                              const SampleConfig& s, int context,
                              const std::function<void(int32_t)>& on_token) {
  DSV3_CHECK(!prompt.empty(), "the prompt is empty");
  DSV3_CHECK(s.temperature >= 0, "temperature must be >= 0");
  DSV3_CHECK(s.top_k >= 0, "top_k must be >= 0");
  DSV3_CHECK(s.top_p > 0 && s.top_p <= 1, "top_p must be in (0, 1]");
  DSV3_CHECK(context >= 1, "context must be >= 1");
  const ModelConfig& c = w.config();
  const int V = c.vocab;
  for (int32_t id : prompt) DSV3_CHECK(id >= 0 && id < V, "prompt token ", id, " outside vocab ", V);
  const int window = std::min(c.max_seq, context);
  WorkspaceConfig wc;
  wc.max = {1, window};
  wc.backward = false;
  Workspace ws(c, w.dtype(), w.device(), wc);
  Rng rng(s.seed);
  std::vector<int32_t> seq = prompt, out, row;
  std::vector<float> logits;
  ForwardOptions opt;
  opt.mtp = false;
  for (int i = 0; i < s.max_tokens; i++) {
    const int T = std::min<int>(int(seq.size()), window);
    row.assign(seq.end() - T, seq.end());
    row.push_back(-1);  // no target at the end
    logits.resize(size_t(T) * V);
    opt.logits = logits.data();
    forward(w, ws, TrainingLossConfig{}, {Dims{1, T}, row.data()}, opt);
    const int32_t id = sample_token(logits.data() + size_t(T - 1) * V, V, s, rng);
    seq.push_back(id);
    out.push_back(id);
    if (on_token) on_token(id);
  }
  return out;
}

}  // namespace dsv3
