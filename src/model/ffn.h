// SwiGLU FFN (M3): the dense FFN of the first layers and the shared experts (the routed experts
// run the same math as one grouped GEMM, model/moe_layer.cpp). gate_proj and up_proj are
// adjacent in the parameter buffer, so w13 is one (2D, C) matrix.
#pragma once
#include <string>

#include "backend/backend.h"
#include "model/arena.h"
#include "model/params.h"

namespace dsv3 {

struct FfnParams {
  Tensor w13;     // (2D, C): gate_proj rows then up_proj rows
  Tensor w2;      // (C, D): down_proj
  int inter = 0;  // D
};
// prefix e.g. "model.layers.0.mlp" or "model.layers.3.mlp.shared_experts"
FfnParams bind_ffn(const ParamTable& t, const Tensor& base, const std::string& prefix);

struct FfnActs {
  Tensor h13;  // (rows, 2D)
  Tensor act;  // (rows, D)
};
void alloc_ffn_acts(FfnActs& a, Arena& ar, DType t, size_t rows, int D);

struct FfnScratch {
  Tensor dh13;  // (rows, 2D)
  Tensor dact;  // (rows, D)
};
void alloc_ffn_scratch(FfnScratch& s, Arena& ar, DType t, size_t rows, int D);

// y (rows, C) = down(silu(gate x) * up x), overwriting y.
void ffn_forward(const Exec& ex, const Tensor& y, const Tensor& x, const FfnParams& w,
                 const FfnActs& a, int rows, int C);
// dx += , g +=
void ffn_backward(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& x,
                  const FfnParams& w, const FfnParams& g, const FfnActs& a, const FfnScratch& s,
                  int rows, int C);

}  // namespace dsv3
