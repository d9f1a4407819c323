// Causal attention core, per (batch, head): S = scale q k^T, P = softmax(S), out = P v.
// q, k, v and out keep the (B, T, H, d) token layout; a head is a strided (T, d) matrix with row
// stride H*d, which the GEMMs take directly, so nothing is transposed or copied.
//
// Causality is exploited in row blocks of kBlock queries: block [r0, r1) only sees keys [0, r1),
// so every GEMM runs over the lower block triangle (62% of the full work at T=256). With blocks
// of 64 rows the per-call cost of the small GEMMs (a few us each) stops dominating: measured on
// `tiny`, blocks of 32 took 1.4x as long in bf16, blocks of 128 no less than 64.
// Heads run in parallel (one thread each, single-threaded GEMMs); each head runs its blocks in
// order, so every result is independent of the thread count.
#include "ops/attention.h"

#include "ops/cuda/ops_cuda.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <type_traits>
#include <vector>

#include "core/profile.h"
#include "ops/dispatch.h"
#include "ops/fast_math.h"
#include "ops/gemm_cpu.h"

namespace dsv3 {
namespace cpu {

constexpr int kBlock = 64;  // query rows per block: fewer, larger GEMMs beat less masked work here

// Softmax of row p[0..i] in place (the causal part of query row i); p[i+1..T) set to exactly 0.
template <typename A>
static void causal_softmax_row(A* p, int i, int T_) {
  A m = p[0];
#pragma omp simd reduction(max : m)
  for (int j = 1; j <= i; j++) m = p[j] > m ? p[j] : m;
  A sum = 0;
#pragma omp simd reduction(+ : sum)
  for (int j = 0; j <= i; j++) {
    A e = exp_nonpos(p[j] - m);
    p[j] = e;
    sum += e;
  }
  const A inv = A(1) / sum;
  for (int j = 0; j <= i; j++) p[j] *= inv;
  for (int j = i + 1; j < T_; j++) p[j] = 0;
}

// Per-thread scratch that grows only (steady-state training does not allocate).
template <typename A>
static A* thread_scratch(size_t n, int which) {
  thread_local std::vector<A> buf[3];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

template <typename T>
void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v, AttentionShape s) {
  using A = accum_t<T>;
  constexpr bool kSame = std::is_same_v<T, A>;  // scores computed in place in probs
  constexpr DType t = dtype_of<T>(), at = dtype_of<A>();
  const int Tn = s.T, ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const A scale = A(s.scale);  // applied in the accumulation dtype (exact scale for the oracle)
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
      A* S = kSame ? reinterpret_cast<A*>(Pb) : thread_scratch<A>(size_t(kBlock) * Tn, 0);
      gemm(false, true, m, r1, s.dqk, 1.0f, qh + size_t(r0) * ldq, ldq, kh, ldq, 0.0f, S, Tn, t,
           at);
      for (int i = r0; i < r1; i++) {
        A* row = S + size_t(i - r0) * Tn;
        for (int j = 0; j <= i; j++) row[j] *= scale;
        causal_softmax_row(row, i, Tn);
        if constexpr (!kSame)
          for (int j = 0; j < Tn; j++) Pb[size_t(i - r0) * Tn + j] = store<T>(row[j]);
      }
      gemm(false, false, m, s.dv, r1, 1.0f, Pb, Tn, vh, ldv, 0.0f, oh + size_t(r0) * ldv, ldv, t, t);
    }
  }
}

// dP = dO v^T, dS = scale P * (dP - rowsum(dP * P)), dq += dS k, dk += dS^T q, dv += P^T dO.
// Heads write disjoint columns of dq/dk/dv. For 16-bit T the block contributions to dk and dv
// are summed in fp32 per head and rounded into dk/dv once.
template <typename T>
void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k, const T* v,
                        const T* probs, AttentionShape s) {
  using A = accum_t<T>;
  constexpr bool kSame = std::is_same_v<T, A>;
  constexpr DType t = dtype_of<T>(), at = dtype_of<A>();
  const int Tn = s.T, ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const A scale = A(s.scale);
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    A* dP = thread_scratch<A>(size_t(kBlock) * Tn, 0);             // (kBlock, T)
    T* dS = kSame ? reinterpret_cast<T*>(dP) : thread_scratch<T>(size_t(kBlock) * Tn, 1);
    A* acc = kSame ? nullptr : thread_scratch<A>(size_t(Tn) * (s.dqk + s.dv), 2);
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * Tn;
    const size_t qo = tok0 * ldq + size_t(h) * s.dqk, vo = tok0 * ldv + size_t(h) * s.dv;
    const T* P = probs + size_t(bh) * Tn * Tn;
    // dk, dv targets: the tensors themselves (fp32/fp64) or the fp32 per-head accumulators
    void* dkh = kSame ? static_cast<void*>(dk + qo) : static_cast<void*>(acc);
    void* dvh = kSame ? static_cast<void*>(dv + vo) : static_cast<void*>(acc + size_t(Tn) * s.dqk);
    const int lddk = kSame ? ldq : s.dqk, lddv = kSame ? ldv : s.dv;
    if constexpr (!kSame) std::fill_n(acc, size_t(Tn) * (s.dqk + s.dv), A(0));
    for (int r0 = 0; r0 < Tn; r0 += kBlock) {
      const int r1 = std::min(Tn, r0 + kBlock), m = r1 - r0;
      const T* Pb = P + size_t(r0) * Tn;
      gemm(false, true, m, r1, s.dv, 1.0f, dout + vo + size_t(r0) * ldv, ldv, v + vo, ldv, 0.0f, dP,
           Tn, t, at);
      for (int i = r0; i < r1; i++) {
        const T* p = Pb + size_t(i - r0) * Tn;
        A* d = dP + size_t(i - r0) * Tn;
        T* o = dS + size_t(i - r0) * Tn;
        A dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int j = 0; j <= i; j++) dot += load(p[j]) * d[j];
        for (int j = 0; j <= i; j++) o[j] = store<T>(scale * load(p[j]) * (d[j] - dot));
        for (int j = i + 1; j < r1; j++) o[j] = T(0.0f);
      }
      gemm(false, false, m, s.dqk, r1, 1.0f, dS, Tn, k + qo, ldq, 1.0f, dq + qo + size_t(r0) * ldq,
           ldq, t, t);
      gemm(true, false, r1, s.dqk, m, 1.0f, dS, Tn, q + qo + size_t(r0) * ldq, ldq, 1.0f, dkh, lddk,
           t, kSame ? t : at);
      gemm(true, false, r1, s.dv, m, 1.0f, Pb, Tn, dout + vo + size_t(r0) * ldv, ldv, 1.0f, dvh,
           lddv, t, kSame ? t : at);
    }
    if constexpr (!kSame) {
      for (int i = 0; i < Tn; i++) {
        T* dkr = dk + qo + size_t(i) * ldq;
        T* dvr = dv + vo + size_t(i) * ldv;
        const A* ak = acc + size_t(i) * s.dqk;
        const A* av = acc + size_t(Tn) * s.dqk + size_t(i) * s.dv;
        for (int j = 0; j < s.dqk; j++) dkr[j] = store<T>(load(dkr[j]) + ak[j]);
        for (int j = 0; j < s.dv; j++) dvr[j] = store<T>(load(dvr[j]) + av[j]);
      }
    }
  }
}

#define DSV3_ATTENTION_INSTANTIATE(T)                                                         \
  template void attention_forward<T>(T*, T*, const T*, const T*, const T*, AttentionShape);   \
  template void attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,     \
                                      const T*, AttentionShape);
DSV3_ATTENTION_INSTANTIATE(float)
DSV3_ATTENTION_INSTANTIATE(double)
DSV3_ATTENTION_INSTANTIATE(bf16_t)
DSV3_ATTENTION_INSTANTIATE(f16_t)

}  // namespace cpu

AttentionSaved attention_saved(Device d, DType t, AttentionShape s) {
  if (d == Device::CUDA) return {DType::F32, size_t(s.B) * s.H * s.T};  // log-sum-exp per row
  return {t, size_t(s.B) * s.H * s.T * s.T};                             // P
}

namespace {
void check_attention(const Exec& ex, const char* op, const Tensor& q, const Tensor& k,
                     const Tensor& v, const Tensor& o, const Tensor& saved, AttentionShape s) {
  const size_t N = size_t(s.B) * s.T;
  check_arg(op, "q", q, q.dtype, N * s.H * s.dqk);
  check_arg(op, "k", k, q.dtype, N * s.H * s.dqk);
  check_arg(op, "v", v, q.dtype, N * s.H * s.dv);
  check_arg(op, "out", o, q.dtype, N * s.H * s.dv);
  const AttentionSaved want = attention_saved(ex.device, q.dtype, s);
  check_arg(op, "saved", saved, want.dtype, want.numel);
}
}  // namespace

void attention_forward(const Exec& ex, const Tensor& out, const Tensor& probs, const Tensor& q,
                       const Tensor& k, const Tensor& v, AttentionShape s) {
  const char* op = "attention_forward";
  // the lower block triangle: row block r0 sees r0 + kBlock keys
  profile::Scope prof(op, 2.0 * s.B * s.H * (double(s.T) * (s.T + cpu::kBlock) / 2) * (s.dqk + s.dv));
  check_device(ex, op, {{"out", out}, {"saved", probs}, {"q", q}, {"k", k}, {"v", v}});
  check_attention(ex, op, q, k, v, out, probs, s);
  if (ex.device == Device::CUDA) return cuda::attention_forward(ex, out, probs, q, k, v, s);
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::attention_forward<T>(out.as<T>(), probs.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(), s);
  });
}

void attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& probs, AttentionShape s) {
  const char* op = "attention_backward";
  profile::Scope prof(op, 2.0 * s.B * s.H * (double(s.T) * (s.T + cpu::kBlock) / 2) * (2 * s.dqk + 2 * s.dv));
  check_device(ex, op, {{"dq", dq}, {"dk", dk}, {"dv", dv}, {"dout", dout}, {"q", q}, {"k", k},
                        {"v", v}, {"out", out}, {"saved", probs}});
  check_attention(ex, op, q, k, v, dout, probs, s);
  check_attention(ex, op, dq, dk, dv, dout, probs, s);
  if (ex.device == Device::CUDA) {
    check_arg(op, "out", out, q.dtype, size_t(s.B) * s.T * s.H * s.dv);
    return cuda::attention_backward(ex, dq, dk, dv, dout, q, k, v, out, probs, s);
  }
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::attention_backward<T>(dq.as<T>(), dk.as<T>(), dv.as<T>(), dout.as<T>(), q.as<T>(),
                               k.as<T>(), v.as<T>(), probs.as<T>(), s);
  });
}

}  // namespace dsv3
