// The CUDA side of every op entry point: each entry point in src/ops/*.cpp checks its arguments,
// then calls the function of the same name here when ex.device is CUDA. Implemented by
// src/ops/cuda/*.cu (kernels in src/ops/cuda/kernels/*.cuh, GEMMs through cuBLASLt) when
// DSV3_CUDA=ON, else by src/ops/cuda_stub.cpp. The contracts are the entry points' (the headers
// in src/ops), with one difference stated in ops/attention.h: the attention state saved for
// backward is the log-sum-exp per row on CUDA, not the probabilities.
#pragma once
#include <span>

#include "backend/backend.h"
#include "ops/attention.h"
#include "ops/gemm.h"
#include "ops/mla_kv.h"
#include "ops/moe.h"
#include "ops/optimizer.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/write.h"

namespace dsv3::cuda {

void embedding_forward(const Exec& ex, const Tensor& out, const Tensor& ids, const Tensor& table,
                       int N, int C);
void embedding_backward(const Exec& ex, const Tensor& dtable, const Tensor& dout,
                        const Tensor& ids, int N, int C);

void rmsnorm_forward(const Exec& ex, const Tensor& out, const Tensor& rstd, const Tensor& x,
                     const Tensor& w, RmsNormShape s, float eps);
void rmsnorm_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dout,
                      const Tensor& x, const Tensor& w, const Tensor& rstd, RmsNormShape s);

void rope_tables(const Exec& ex, const Tensor& cos, const Tensor& sin, int seq_len,
                 const RopeParams& p);
void rope_forward(const Exec& ex, const Tensor& x, const Tensor& cos, const Tensor& sin,
                  RopeLayout l);
void rope_backward(const Exec& ex, const Tensor& dx, const Tensor& cos, const Tensor& sin,
                   RopeLayout l);

void attention_forward(const Exec& ex, const Tensor& out, const Tensor& saved, const Tensor& q,
                       const Tensor& k, const Tensor& v, AttentionShape s);
void attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& saved, AttentionShape s);

void swiglu_forward(const Exec& ex, const Tensor& out, const Tensor& h, int N, int D);
void swiglu_backward(const Exec& ex, const Tensor& dh, const Tensor& dout, const Tensor& h, int N,
                     int D, Write mode);

void cross_entropy_forward(const Exec& ex, const Tensor& losses, const Tensor& logits,
                           const Tensor& targets, int N, int V);
void cross_entropy_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                            const Tensor& targets, const Tensor& row_scale, int N, int V);

// Row-major GEMM through cuBLASLt with cpu::gemm's contract (ops/gemm_cpu.h): C(M,N) =
// alpha op(A) op(B) + beta C, A/B in `ab` (F32, BF16, F16), C in `c` (F32 or ab), fp32
// accumulation (TF32 tensor cores for F32 when set_tf32(true)).
void gemm(const Exec& ex, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const void* A, int lda, const void* B, int ldb, float beta, void* C, int ldc, DType ab,
          DType c);
void set_tf32(bool on);
bool tf32();
// Sustained cuBLASLt throughput of this GPU for dtype ab (GFLOP/s, large square products).
double gemm_peak_gflops(DType ab);

void linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w, int N,
                    int in, int out, Write mode);
void linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                     const Tensor& x, const Tensor& w, int N, int in, int out, Write dx_mode);
void grouped_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w,
                            const Tensor& offsets, GroupedShape s);
void grouped_linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                             const Tensor& x, const Tensor& w, const Tensor& offsets,
                             GroupedShape s, Write dx_mode);

void router_forward(const Exec& ex, const RouterOutputs& out, const Tensor& logits,
                    const Tensor& bias, RouterShape s);
void router_backward(const Exec& ex, const Tensor& dlogits, const Tensor& dgates, double dbalance,
                     const Tensor& scores, const Tensor& idx, RouterShape s);
void moe_permutation(const Exec& ex, const Tensor& slot_token, const Tensor& slot_of,
                     const Tensor& offsets, const Tensor& idx, int N, int K, int E);
void moe_gather(const Exec& ex, const Tensor& xp, const Tensor& x, const Tensor& slot_token,
                int NK, int C);
void moe_combine(const Exec& ex, const Tensor& y, const Tensor& outp, const Tensor& gates,
                 const Tensor& slot_of, int N, int K, int C, bool accumulate);
void moe_combine_backward(const Exec& ex, const Tensor& doutp, const Tensor& dgates,
                          const Tensor& dy, const Tensor& outp, const Tensor& gates,
                          const Tensor& slot_of, int N, int K, int C);
void moe_scatter_add(const Exec& ex, const Tensor& dx, const Tensor& dxp, const Tensor& slot_of,
                     int N, int K, int C);

void mla_kv_expand_forward(const Exec& ex, const Tensor& k, const Tensor& v, const Tensor& kvb,
                           const Tensor& kv, MlaKvShape s);
void mla_kv_expand_backward(const Exec& ex, const Tensor& dkvb, const Tensor& dkv,
                            const Tensor& dk, const Tensor& dv, MlaKvShape s);

void add_inplace(const Exec& ex, const Tensor& y, const Tensor& x);
void convert(const Exec& ex, const Tensor& dst, const Tensor& src);
void scale_inplace(const Exec& ex, const Tensor& x, double s);

void adamw_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& m,
                  const Tensor& v, const Tensor& compute, std::span<const ParamSpan> spans,
                  const AdamwHyper& h);
void routing_bias_update(const Exec& ex, const Tensor& bias, const Tensor& loads, double gamma);
double sum_squares(const Exec& ex, const Tensor& x, std::span<const ParamSpan> spans);

}  // namespace dsv3::cuda
