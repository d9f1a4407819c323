// Causal attention core, per (batch, head): S = scale q k^T, P = softmax(S), out = P v.
// q, k, v and out keep the (B, T, H, d) token layout; a head is a strided (T, d) matrix with row
// stride H*d, which BLAS takes directly, so nothing is transposed or copied.
//
// Causality is exploited in row blocks of kBlock queries: block [r0, r1) only sees keys [0, r1),
// so every GEMM runs over the lower block triangle (about 56% of the full work at T=256).
#include "ops/attention.h"
#include "ops/fast_math.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstddef>
#include <vector>

#include "ops/gemm.h"

namespace dsv3 {
namespace cpu {


constexpr int kBlock = 32;  // query rows per block

// Softmax of row p[0..i] in place (the causal part of query row i); p[i+1..T) set to exactly 0.
template <typename T>
static void causal_softmax_row(T* p, int i, int T_) {
  T m = p[0];
#pragma omp simd reduction(max : m)
  for (int j = 1; j <= i; j++) m = p[j] > m ? p[j] : m;
  T sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j <= i; j++) {
    T e = exp_nonpos(p[j] - m);
    p[j] = e;
    sum += e;
  }
  T inv = T(1) / sum;
  for (int j = 0; j <= i; j++) p[j] *= inv;
  for (int j = i + 1; j < T_; j++) p[j] = 0;
}

template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, AttentionShape s) {
  const int Tn = s.T, ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const T scale = T(s.scale);
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * Tn;
    const T* qh = q + tok0 * ldq + size_t(h) * s.dqk;  // (T, dqk), row stride ldq
    const T* kh = k + tok0 * ldq + size_t(h) * s.dqk;
    const T* vh = v + tok0 * ldv + size_t(h) * s.dv;  // (T, dv), row stride ldv
    T* oh = out + tok0 * ldv + size_t(h) * s.dv;
    T* P = probs + size_t(bh) * Tn * Tn;  // (T, T)
    for (int r0 = 0; r0 < Tn; r0 += kBlock) {
      const int r1 = std::min(Tn, r0 + kBlock), m = r1 - r0;
      T* Pb = P + size_t(r0) * Tn;  // rows [r0, r1), keys [0, r1)
      gemm<T>(false, true, m, r1, s.dqk, scale, qh + size_t(r0) * ldq, ldq, kh, ldq, T(0), Pb, Tn);
      for (int i = r0; i < r1; i++) causal_softmax_row(P + size_t(i) * Tn, i, Tn);
      gemm<T>(false, false, m, s.dv, r1, T(1), Pb, Tn, vh, ldv, T(0), oh + size_t(r0) * ldv, ldv);
    }
  }
}

// dP = dO v^T, dS = P * (dP - rowsum(dP * P)), dq += scale dS k, dk += scale dS^T q, dv += P^T dO.
// Heads write disjoint columns of dq/dk/dv, and each head runs its blocks in order, so the result
// is deterministic without any reduction across threads.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, AttentionShape s) {
  const int Tn = s.T, ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const T scale = T(s.scale);
#pragma omp parallel if (s.B * s.H > 1)
  {
    // dS for one row block, reused across calls so steady-state training does not allocate.
    thread_local std::vector<T> scratch;
    if (scratch.size() < size_t(kBlock) * Tn) scratch.resize(size_t(kBlock) * Tn);
    T* dS = scratch.data();  // (kBlock, T)
#pragma omp for schedule(static)
    for (int bh = 0; bh < s.B * s.H; bh++) {
      const int b = bh / s.H, h = bh % s.H;
      const size_t tok0 = size_t(b) * Tn;
      const size_t qo = tok0 * ldq + size_t(h) * s.dqk, vo = tok0 * ldv + size_t(h) * s.dv;
      const T* P = probs + size_t(bh) * Tn * Tn;
      for (int r0 = 0; r0 < Tn; r0 += kBlock) {
        const int r1 = std::min(Tn, r0 + kBlock), m = r1 - r0;
        const T* Pb = P + size_t(r0) * Tn;
        gemm<T>(false, true, m, r1, s.dv, T(1), dout + vo + size_t(r0) * ldv, ldv, v + vo, ldv,
                T(0), dS, Tn);
        for (int i = r0; i < r1; i++) {
          const T* p = P + size_t(i) * Tn;
          T* d = dS + size_t(i - r0) * Tn;
          T dot = 0;
#pragma omp simd reduction(+ : dot)
          for (int j = 0; j <= i; j++) dot += p[j] * d[j];
          for (int j = 0; j <= i; j++) d[j] = p[j] * (d[j] - dot);
          for (int j = i + 1; j < r1; j++) d[j] = 0;
        }
        gemm<T>(false, false, m, s.dqk, r1, scale, dS, Tn, k + qo, ldq, T(1),
                dq + qo + size_t(r0) * ldq, ldq);
        gemm<T>(true, false, r1, s.dqk, m, scale, dS, Tn, q + qo + size_t(r0) * ldq, ldq, T(1),
                dk + qo, ldq);
        gemm<T>(true, false, r1, s.dv, m, T(1), Pb, Tn, dout + vo + size_t(r0) * ldv, ldv, T(1),
                dv + vo, ldv);
      }
    }
  }
}

template void attention_forward<float>(float*, float*, const float*, const float*, const float*,
                                       AttentionShape);
template void attention_forward<double>(double*, double*, const double*, const double*,
                                        const double*, AttentionShape);
template void attention_backward<float>(float*, float*, float*, const float*, const float*,
                                        const float*, const float*, const float*, AttentionShape);
template void attention_backward<double>(double*, double*, double*, const double*, const double*,
                                         const double*, const double*, const double*,
                                         AttentionShape);

}  // namespace cpu

void attention_forward(const Exec& ex, float* out, float* probs, const float* q, const float* k,
                       const float* v, AttentionShape s) {
  require_cpu(ex, "attention_forward");
  cpu::attention_forward(out, probs, q, k, v, s);
}

void attention_backward(const Exec& ex, float* dq, float* dk, float* dv, const float* dout,
                        const float* q, const float* k, const float* v, const float* probs,
                        AttentionShape s) {
  require_cpu(ex, "attention_backward");
  cpu::attention_backward(dq, dk, dv, dout, q, k, v, probs, s);
}

}  // namespace dsv3
