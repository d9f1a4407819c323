#include "model/ffn.h"

#include "core/check.h"
#include "ops/gemm.h"
#include "ops/swiglu.h"

namespace dsv3 {

FfnParams bind_ffn(const ParamTable& t, const Tensor& base, const std::string& p) {
  const ParamInfo& gate = t.at(p + ".gate_proj.weight");
  const ParamInfo& up = t.at(p + ".up_proj.weight");
  const ParamInfo& down = t.at(p + ".down_proj.weight");
  DSV3_CHECK(up.offset == gate.offset + gate.numel, "internal: ", p, " gate/up not adjacent");
  return {base.slice(gate.offset, 2 * gate.numel), base.slice(down.offset, down.numel),
          int(gate.shape[0])};
}

void alloc_ffn_acts(FfnActs& a, Arena& ar, DType t, size_t rows, int D) {
  a.h13 = ar.take(t, rows * 2 * D);
  a.act = ar.take(t, rows * D);
}

void alloc_ffn_scratch(FfnScratch& s, Arena& ar, DType t, size_t rows, int D) {
  s.dh13 = ar.take(t, rows * 2 * D);
  s.dact = ar.take(t, rows * D);
}

void ffn_forward(const Exec& ex, const Tensor& y, const Tensor& x, const FfnParams& w,
                 const FfnActs& a, int rows, int C) {
  const int D = w.inter;
  linear_forward(ex, a.h13, x, w.w13, rows, C, 2 * D);
  swiglu_forward(ex, a.act, a.h13, rows, D);
  linear_forward(ex, y, a.act, w.w2, rows, D, C);
}

void ffn_backward(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& x,
                  const FfnParams& w, const FfnParams& g, const FfnActs& a, const FfnScratch& s,
                  int rows, int C) {
  const int D = w.inter;
  if (rows == 0) return;
  const Tensor dact = s.dact.slice(0, size_t(rows) * D), dh13 = s.dh13.slice(0, size_t(rows) * 2 * D);
  linear_backward(ex, dact, g.w2, dy, a.act, w.w2, rows, D, C, Write::Overwrite);
  swiglu_backward(ex, dh13, dact, a.h13, rows, D, Write::Overwrite);
  linear_backward(ex, dx, g.w13, dh13, x, w.w13, rows, C, 2 * D);
}

}  // namespace dsv3
