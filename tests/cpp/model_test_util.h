// Small models for the library-level model tests: the `debug` config shrunk further, weights
// drawn by init_params with routing biases away from zero (so the sigmoid router's bias path
// is exercised), random token rows.
#pragma once
#include <vector>

#include "core/rng.h"
#include "model/params.h"

namespace dsv3::test {

inline ModelConfig small_config() {
  ModelConfig c = preset("debug");
  c.vocab = 128;
  c.max_seq = 64;
  return c;
}

inline std::vector<float> init_weights(const ModelConfig& c, uint64_t seed) {
  const ParamTable t = build_param_table(c);
  std::vector<float> p(t.total);
  init_params(c, t, p.data(), seed);
  for (const auto& info : t.list)
    if (info.kind == ParamKind::Buffer)
      for (size_t i = 0; i < info.numel; i++) p[info.offset + i] = 0.01f * float(int(i % 5) - 2);
  return p;
}

inline std::vector<int32_t> random_tokens(const ModelConfig& c, Dims d, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> t(size_t(d.B) * (d.T + 1));
  for (auto& x : t) x = int32_t(r.below(uint64_t(c.vocab)));
  return t;
}

}  // namespace dsv3::test
