// SwiGLU FFN (M3): the dense FFN of the first layers, each routed expert and the shared experts.
// gate_proj and up_proj are adjacent in the parameter buffer, so w13 is one (2D, C) matrix.
#pragma once
#include <string>

#include "backend/backend.h"
#include "model/arena.h"
#include "model/params.h"

namespace dsv3 {

struct FfnWeights {
  float* w13 = nullptr;  // (2D, C): gate_proj rows then up_proj rows
  float* w2 = nullptr;   // (C, D): down_proj
  int inter = 0;         // D
};
// prefix e.g. "model.layers.0.mlp" or "model.layers.3.mlp.experts.7"
FfnWeights bind_ffn(const ParamTable& t, float* base, const std::string& prefix);

struct FfnActs {
  float* h13;  // (rows, 2D)
  float* act;  // (rows, D)
};
void alloc_ffn_acts(FfnActs& a, Arena& ar, size_t rows, int D);

struct FfnScratch {
  float* dh13;  // (rows, 2D)
  float* dact;  // (rows, D)
};

// y (rows, C) = down(silu(gate x) * up x), overwriting y.
void ffn_forward(const Exec& ex, float* y, const float* x, const FfnWeights& w, FfnActs& a,
                 int rows, int C);
// dx += , g +=
void ffn_backward(const Exec& ex, float* dx, const float* dy, const float* x, const FfnWeights& w,
                  const FfnWeights& g, const FfnActs& a, FfnScratch& s, int rows, int C);

}  // namespace dsv3
