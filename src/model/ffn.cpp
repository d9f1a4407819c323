#include "model/ffn.h"

#include <cstring>

#include "core/check.h"
#include "ops/gemm.h"
#include "ops/swiglu.h"

namespace dsv3 {

FfnWeights bind_ffn(const ParamTable& t, float* base, const std::string& p) {
  const ParamInfo& gate = t.at(p + ".gate_proj.weight");
  const ParamInfo& up = t.at(p + ".up_proj.weight");
  const ParamInfo& down = t.at(p + ".down_proj.weight");
  DSV3_CHECK(up.offset == gate.offset + gate.numel, "internal: ", p, " gate/up not adjacent");
  return {base + gate.offset, base + down.offset, int(gate.shape[0])};
}

void alloc_ffn_acts(FfnActs& a, Arena& ar, size_t rows, int D) {
  a.h13 = ar.f(rows * 2 * D);
  a.act = ar.f(rows * D);
}

void ffn_forward(const Exec& ex, float* y, const float* x, const FfnWeights& w, FfnActs& a,
                 int rows, int C) {
  const int D = w.inter;
  linear_forward(ex, a.h13, x, w.w13, rows, C, 2 * D);
  swiglu_forward(ex, a.act, a.h13, rows, D);
  linear_forward(ex, y, a.act, w.w2, rows, D, C);
}

void ffn_backward(const Exec& ex, float* dx, const float* dy, const float* x, const FfnWeights& w,
                  const FfnWeights& g, const FfnActs& a, FfnScratch& s, int rows, int C) {
  const int D = w.inter;
  if (rows == 0) return;
  std::memset(s.dact, 0, size_t(rows) * D * sizeof(float));
  linear_backward(ex, s.dact, g.w2, dy, a.act, w.w2, rows, D, C);
  std::memset(s.dh13, 0, size_t(rows) * 2 * D * sizeof(float));
  swiglu_backward(ex, s.dh13, s.dact, a.h13, rows, D);
  linear_backward(ex, dx, g.w13, s.dh13, x, w.w13, rows, C, 2 * D);
}

}  // namespace dsv3
