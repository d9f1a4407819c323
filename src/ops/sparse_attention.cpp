// Sparse causal attention: each query row gathers its K keys (a window or an index list), so
// the work is dot products of length dqk/dv per listed key rather than GEMMs over all T keys.
// Heads run in parallel, each serially over its queries: every result (the scattered dk/dv
// included) is independent of the thread count.
#include "ops/sparse_attention.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <type_traits>
#include <vector>

#include "core/profile.h"
#include "core/rng.h"
#include "ops/dispatch.h"
#include "ops/fast_math.h"
#include "ops/gemm_cpu.h"

namespace dsv3 {
namespace cpu {
namespace {

// The key of slot j of query i, or -1 for an empty slot.
inline int key_of(const int32_t* row, int i, int j, const SparseAttentionShape& s) {
  if (s.window > 0) {
    const int key = i - s.window + 1 + j;
    return key >= 0 ? key : -1;
  }
  return row[j];
}

// Per-thread scratch that grows only (steady-state training does not allocate). The buffers of a
// kernel use distinct `which` (T and its accumulation type may be the same type).
template <typename A>
A* scratch(size_t n, int which) {
  thread_local std::vector<A> buf[6];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

}  // namespace

template <typename T>
void sparse_attention_forward_gather(T* out, T* probs, const T* q, const T* k, const T* v,
                                     const int32_t* index, SparseAttentionShape s) {
  using A = accum_t<T>;
  const int ldq = s.H * s.dqk, ldv = s.H * s.dv, K = s.K;
  const A scale = A(s.scale);
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * s.T;
    A* S = scratch<A>(size_t(K), 0);
    A* o = scratch<A>(size_t(s.dv), 1);
    for (int i = 0; i < s.T; i++) {
      const size_t row = size_t(bh) * s.T + i;
      const int32_t* idx = index ? index + row * K : nullptr;
      const T* qi = q + (tok0 + i) * ldq + size_t(h) * s.dqk;
      A m = -std::numeric_limits<A>::infinity();
      for (int j = 0; j < K; j++) {
        const int key = key_of(idx, i, j, s);
        if (key < 0) {
          S[j] = -std::numeric_limits<A>::infinity();
          continue;
        }
        const T* kj = k + (tok0 + key) * ldq + size_t(h) * s.dqk;
        A dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int d = 0; d < s.dqk; d++) dot += load(qi[d]) * load(kj[d]);
        S[j] = dot * scale;
        m = std::max(m, S[j]);
      }
      A sum = 0;
      for (int j = 0; j < K; j++) {
        const A e = S[j] == -std::numeric_limits<A>::infinity() ? A(0) : exp_nonpos(S[j] - m);
        S[j] = e;
        sum += e;
      }
      const A inv = A(1) / sum;
      T* P = probs + row * K;
      std::fill_n(o, s.dv, A(0));
      for (int j = 0; j < K; j++) {
        P[j] = store<T>(S[j] * inv);
        const int key = key_of(idx, i, j, s);
        if (key < 0) continue;
        const A p = load(P[j]);  // the stored P: what backward reads
        const T* vj = v + (tok0 + key) * ldv + size_t(h) * s.dv;
#pragma omp simd
        for (int d = 0; d < s.dv; d++) o[d] += p * load(vj[d]);
      }
      T* oi = out + (tok0 + i) * ldv + size_t(h) * s.dv;
      for (int d = 0; d < s.dv; d++) oi[d] = store<T>(o[d]);
    }
  }
}

// dP_j = dout_i . v_key, dS_j = scale P_j (dP_j - sum_j P_j dP_j), dq_i += sum_j dS_j k_key,
// dk_key += dS_j q_i, dv_key += P_j dout_i. dq rows are summed in the accumulation dtype and
// rounded once; dk and dv are summed per head in the accumulation dtype and added once.
template <typename T>
void sparse_attention_backward_gather(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                                      const T* v, const T* probs, const int32_t* index,
                                      SparseAttentionShape s) {
  using A = accum_t<T>;
  const int ldq = s.H * s.dqk, ldv = s.H * s.dv, K = s.K;
  const A scale = A(s.scale);
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * s.T;
    A* acc = scratch<A>(size_t(s.T) * (s.dqk + s.dv) + size_t(K) + s.dqk, 0);
    A* adk = acc;                              // (T, dqk)
    A* adv = acc + size_t(s.T) * s.dqk;        // (T, dv)
    A* dS = adv + size_t(s.T) * s.dv;          // (K)
    A* dqi = dS + K;                           // (dqk)
    std::fill_n(acc, size_t(s.T) * (s.dqk + s.dv), A(0));
    for (int i = 0; i < s.T; i++) {
      const size_t row = size_t(bh) * s.T + i;
      const int32_t* idx = index ? index + row * K : nullptr;
      const T* P = probs + row * K;
      const T* doi = dout + (tok0 + i) * ldv + size_t(h) * s.dv;
      const T* qi = q + (tok0 + i) * ldq + size_t(h) * s.dqk;
      A dot = 0;
      for (int j = 0; j < K; j++) {
        const int key = key_of(idx, i, j, s);
        if (key < 0) {
          dS[j] = 0;
          continue;
        }
        const T* vj = v + (tok0 + key) * ldv + size_t(h) * s.dv;
        A dp = 0;
#pragma omp simd reduction(+ : dp)
        for (int d = 0; d < s.dv; d++) dp += load(doi[d]) * load(vj[d]);
        dS[j] = dp;
        dot += load(P[j]) * dp;
      }
      std::fill_n(dqi, s.dqk, A(0));
      for (int j = 0; j < K; j++) {
        const int key = key_of(idx, i, j, s);
        if (key < 0) continue;
        const A p = load(P[j]);
        const A ds = scale * p * (dS[j] - dot);
        const T* kj = k + (tok0 + key) * ldq + size_t(h) * s.dqk;
        A* dkj = adk + size_t(key) * s.dqk;
        A* dvj = adv + size_t(key) * s.dv;
#pragma omp simd
        for (int d = 0; d < s.dqk; d++) {
          dqi[d] += ds * load(kj[d]);
          dkj[d] += ds * load(qi[d]);
        }
#pragma omp simd
        for (int d = 0; d < s.dv; d++) dvj[d] += p * load(doi[d]);
      }
      T* dqr = dq + (tok0 + i) * ldq + size_t(h) * s.dqk;
      for (int d = 0; d < s.dqk; d++) dqr[d] = store<T>(load(dqr[d]) + dqi[d]);
    }
    for (int i = 0; i < s.T; i++) {
      T* dkr = dk + (tok0 + i) * ldq + size_t(h) * s.dqk;
      T* dvr = dv + (tok0 + i) * ldv + size_t(h) * s.dv;
      for (int d = 0; d < s.dqk; d++) dkr[d] = store<T>(load(dkr[d]) + adk[size_t(i) * s.dqk + d]);
      for (int d = 0; d < s.dv; d++) dvr[d] = store<T>(load(dvr[d]) + adv[size_t(i) * s.dv + d]);
    }
  }
}

// ---- window attention in query blocks (GEMMs)
// Block [i0, i1) of queries sees keys [i0 - W + 1, i1): m rows against m + W - 1 keys, so the
// GEMMs do (m + W - 1) / W times the wanted work. Blocks of about W rows, 16 to 64, keep that
// under 2x (1.25x at W = 256) while the GEMMs stay large enough to run near the GEMM rate.
inline int window_block(int W) { return std::clamp(W, 16, 64); }

template <typename T>
void window_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                              SparseAttentionShape s) {
  using A = accum_t<T>;
  constexpr DType t = dtype_of<T>(), at = dtype_of<A>();
  const int W = s.window, Bq = window_block(W), ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const size_t blk = size_t(Bq) * (Bq + W - 1);
  const A scale = A(s.scale);
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * s.T;
    const T* qh = q + tok0 * ldq + size_t(h) * s.dqk;  // (T, dqk), row stride ldq
    const T* kh = k + tok0 * ldq + size_t(h) * s.dqk;
    const T* vh = v + tok0 * ldv + size_t(h) * s.dv;
    T* oh = out + tok0 * ldv + size_t(h) * s.dv;
    A* S = scratch<A>(blk, 0);   // (m, nk) scores, then exp
    T* Pb = scratch<T>(blk, 1);  // (m, nk) P of the block, zero outside each row's window
    for (int i0 = 0; i0 < s.T; i0 += Bq) {
      const int i1 = std::min(s.T, i0 + Bq), m = i1 - i0, k0 = std::max(0, i0 - W + 1), nk = i1 - k0;
      gemm(false, true, m, nk, s.dqk, 1.0f, qh + size_t(i0) * ldq, ldq, kh + size_t(k0) * ldq, ldq,
           0.0f, S, nk, t, at);
      std::fill_n(Pb, size_t(m) * nk, T(0.0f));
      for (int r = 0; r < m; r++) {
        const int i = i0 + r, lo = std::max(0, i - W + 1) - k0, hi = i - k0;  // columns [lo, hi]
        A* row = S + size_t(r) * nk;
        A mx = -std::numeric_limits<A>::infinity();
        for (int c = lo; c <= hi; c++) mx = std::max(mx, row[c] *= scale);
        A sum = 0;
        for (int c = lo; c <= hi; c++) sum += row[c] = exp_nonpos(row[c] - mx);
        const A inv = A(1) / sum;
        // slot j of row i is key i - W + 1 + j = column j - off; slots before column lo are empty
        T* P = probs + (size_t(bh) * s.T + i) * W;
        const int off = k0 - (i - W + 1);
        std::fill_n(P, lo + off, T(0.0f));
        for (int c = lo; c <= hi; c++) P[c + off] = Pb[size_t(r) * nk + c] = store<T>(row[c] * inv);
      }
      gemm(false, false, m, s.dv, nk, 1.0f, Pb, nk, vh + size_t(k0) * ldv, ldv, 0.0f,
           oh + size_t(i0) * ldv, ldv, t, t);
    }
  }
}

// Per block: dP = dO v_c^T, dS = scale P (dP - rowsum(P dP)) inside the window, dq += dS k_c,
// dk_c += dS^T q, dv_c += P^T dO. As dense attention: a 16-bit dk/dv is summed per head in fp32
// and rounded once.
template <typename T>
void window_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                               const T* v, const T* probs, SparseAttentionShape s) {
  using A = accum_t<T>;
  constexpr bool kSame = std::is_same_v<T, A>;
  constexpr DType t = dtype_of<T>(), at = dtype_of<A>();
  const int W = s.window, Bq = window_block(W), ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const size_t blk = size_t(Bq) * (Bq + W - 1);
  const A scale = A(s.scale);
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * s.T;
    const size_t qo = tok0 * ldq + size_t(h) * s.dqk, vo = tok0 * ldv + size_t(h) * s.dv;
    A* dP = scratch<A>(blk, 0);
    T* Pb = scratch<T>(blk, 1);
    T* dS = scratch<T>(blk, 2);
    A* acc = kSame ? nullptr : scratch<A>(size_t(s.T) * (s.dqk + s.dv), 3);
    // dk, dv targets: the tensors themselves (fp32/fp64) or the fp32 per-head accumulators
    A* dkh = kSame ? reinterpret_cast<A*>(dk + qo) : acc;
    A* dvh = kSame ? reinterpret_cast<A*>(dv + vo) : acc + size_t(s.T) * s.dqk;
    const int lddk = kSame ? ldq : s.dqk, lddv = kSame ? ldv : s.dv;
    if constexpr (!kSame) std::fill_n(acc, size_t(s.T) * (s.dqk + s.dv), A(0));
    for (int i0 = 0; i0 < s.T; i0 += Bq) {
      const int i1 = std::min(s.T, i0 + Bq), m = i1 - i0, k0 = std::max(0, i0 - W + 1), nk = i1 - k0;
      gemm(false, true, m, nk, s.dv, 1.0f, dout + vo + size_t(i0) * ldv, ldv, v + vo + size_t(k0) * ldv,
           ldv, 0.0f, dP, nk, t, at);
      std::fill_n(Pb, size_t(m) * nk, T(0.0f));
      std::fill_n(dS, size_t(m) * nk, T(0.0f));
      for (int r = 0; r < m; r++) {
        const int i = i0 + r, lo = std::max(0, i - W + 1) - k0, hi = i - k0;
        const T* P = probs + (size_t(bh) * s.T + i) * W + (k0 - (i - W + 1));  // P[c]: column c
        const A* d = dP + size_t(r) * nk;
        A dot = 0;
        for (int c = lo; c <= hi; c++) dot += load(P[c]) * d[c];
        for (int c = lo; c <= hi; c++) {
          Pb[size_t(r) * nk + c] = P[c];
          dS[size_t(r) * nk + c] = store<T>(scale * load(P[c]) * (d[c] - dot));
        }
      }
      gemm(false, false, m, s.dqk, nk, 1.0f, dS, nk, k + qo + size_t(k0) * ldq, ldq, 1.0f,
           dq + qo + size_t(i0) * ldq, ldq, t, t);
      gemm(true, false, nk, s.dqk, m, 1.0f, dS, nk, q + qo + size_t(i0) * ldq, ldq, 1.0f,
           dkh + size_t(k0) * lddk, lddk, t, kSame ? t : at);
      gemm(true, false, nk, s.dv, m, 1.0f, Pb, nk, dout + vo + size_t(i0) * ldv, ldv, 1.0f,
           dvh + size_t(k0) * lddv, lddv, t, kSame ? t : at);
    }
    if constexpr (!kSame) {
      for (int i = 0; i < s.T; i++) {
        T* dkr = dk + qo + size_t(i) * ldq;
        T* dvr = dv + vo + size_t(i) * ldv;
        for (int d = 0; d < s.dqk; d++) dkr[d] = store<T>(load(dkr[d]) + dkh[size_t(i) * s.dqk + d]);
        for (int d = 0; d < s.dv; d++) dvr[d] = store<T>(load(dvr[d]) + dvh[size_t(i) * s.dv + d]);
      }
    }
  }
}

// Window attention runs blocked; explicit key lists gather.
template <typename T>
void sparse_attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                              const int32_t* index, SparseAttentionShape s) {
  if (s.window > 0) return window_attention_forward(out, probs, q, k, v, s);
  sparse_attention_forward_gather(out, probs, q, k, v, index, s);
}
template <typename T>
void sparse_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                               const T* v, const T* probs, const int32_t* index,
                               SparseAttentionShape s) {
  if (s.window > 0) return window_attention_backward(dq, dk, dv, dout, q, k, v, probs, s);
  sparse_attention_backward_gather(dq, dk, dv, dout, q, k, v, probs, index, s);
}

#define DSV3_SPARSE_ATTENTION_INSTANTIATE(T)                                                  \
  template void sparse_attention_forward<T>(T*, T*, const T*, const T*, const T*,              \
                                            const int32_t*, SparseAttentionShape);             \
  template void sparse_attention_backward<T>(T*, T*, T*, const T*, const T*, const T*,         \
                                             const T*, const T*, const int32_t*,               \
                                             SparseAttentionShape);                    \
  template void sparse_attention_forward_gather<T>(T*, T*, const T*, const T*, const T*,       \
                                                   const int32_t*, SparseAttentionShape);      \
  template void sparse_attention_backward_gather<T>(T*, T*, T*, const T*, const T*, const T*,  \
                                                    const T*, const T*, const int32_t*,        \
                                                    SparseAttentionShape);
DSV3_SPARSE_ATTENTION_INSTANTIATE(float)
DSV3_SPARSE_ATTENTION_INSTANTIATE(double)
DSV3_SPARSE_ATTENTION_INSTANTIATE(bf16_t)
DSV3_SPARSE_ATTENTION_INSTANTIATE(f16_t)

// ---- LSH index
template <typename T>
void lsh_index(int32_t* index, int32_t* buckets, const T* q, const T* k, const float* rot, LshShape s) {
  using A = accum_t<T>;
  const int half = s.buckets / 2, ldq = s.H * s.dqk, K = s.K();
  const int n_chunks = (s.T + s.chunk - 1) / s.chunk;
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * s.T;
    // per round: query rank -> chunk, keys in sorted order
    std::vector<int> qrank(size_t(s.rounds) * s.T), ksorted(size_t(s.rounds) * s.T);
    std::vector<int> bq(static_cast<size_t>(s.T)), bk(static_cast<size_t>(s.T)), order(static_cast<size_t>(s.T));
    std::vector<int> count(static_cast<size_t>(s.buckets) + 1);
    std::vector<A> proj(static_cast<size_t>(half));
    for (int r = 0; r < s.rounds; r++) {
      const float* R = rot + (size_t(h) * s.rounds + r) * size_t(s.dqk) * half;  // (dqk, half)
      auto bucket = [&](const T* x) {
        std::fill(proj.begin(), proj.end(), A(0));
        for (int d = 0; d < s.dqk; d++) {
          const A xd = load(x[d]);
          const float* Rd = R + size_t(d) * half;
          for (int m = 0; m < half; m++) proj[size_t(m)] += xd * A(Rd[m]);
        }
        int best = 0;
        A best_v = proj[0];
        for (int m = 0; m < half; m++) {  // [xR, -xR]: ties go to the lower bucket
          if (proj[size_t(m)] > best_v) best_v = proj[size_t(m)], best = m;
          if (-proj[size_t(m)] > best_v) best_v = -proj[size_t(m)], best = half + m;
        }
        return best;
      };
      for (int t = 0; t < s.T; t++) {
        bq[size_t(t)] = bucket(q + (tok0 + t) * ldq + size_t(h) * s.dqk);
        bk[size_t(t)] = bucket(k + (tok0 + t) * ldq + size_t(h) * s.dqk);
      }
      if (buckets) {
        int32_t* out = buckets + ((size_t(bh) * s.rounds + r) * 2) * s.T;
        std::copy(bq.begin(), bq.end(), out);
        std::copy(bk.begin(), bk.end(), out + s.T);
      }
      // stable counting sort by bucket: (bucket, position) order
      auto sort_by = [&](const std::vector<int>& bkt, int* sorted) {
        std::fill(count.begin(), count.end(), 0);
        for (int t = 0; t < s.T; t++) count[size_t(bkt[size_t(t)]) + 1]++;
        for (int m = 0; m < s.buckets; m++) count[size_t(m) + 1] += count[size_t(m)];
        for (int t = 0; t < s.T; t++) sorted[count[size_t(bkt[size_t(t)])]++] = t;
      };
      sort_by(bq, order.data());
      for (int n = 0; n < s.T; n++) qrank[size_t(r) * s.T + order[size_t(n)]] = n;
      sort_by(bk, ksorted.data() + size_t(r) * s.T);
    }
    std::vector<int> keys;
    keys.reserve(size_t(K));
    for (int i = 0; i < s.T; i++) {
      keys.clear();
      keys.push_back(i);
      for (int r = 0; r < s.rounds; r++) {
        const int c = qrank[size_t(r) * s.T + i] / s.chunk;
        const int* ks = ksorted.data() + size_t(r) * s.T;
        for (int cc = std::max(0, c - 1); cc <= std::min(c, n_chunks - 1); cc++)
          for (int n = cc * s.chunk; n < std::min(s.T, (cc + 1) * s.chunk); n++)
            if (ks[n] < i) keys.push_back(ks[n]);
      }
      std::sort(keys.begin(), keys.end());
      keys.erase(std::unique(keys.begin(), keys.end()), keys.end());
      int32_t* row = index + (size_t(bh) * s.T + i) * K;
      for (int j = 0; j < K; j++) row[j] = j < int(keys.size()) ? keys[size_t(j)] : -1;
    }
  }
}

}  // namespace cpu

namespace {
void check_sparse(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
                  const Tensor& probs, const Tensor& index, SparseAttentionShape s) {
  DSV3_CHECK(s.K >= 1 && (s.window == 0 || s.window == s.K), op, ": K ", s.K, " and window ",
             s.window, " disagree (internal error)");
  const size_t N = size_t(s.B) * s.T;
  check_arg(op, "q", q, q.dtype, N * s.H * s.dqk);
  check_arg(op, "k", k, q.dtype, N * s.H * s.dqk);
  check_arg(op, "v", v, q.dtype, N * s.H * s.dv);
  check_arg(op, "out", o, q.dtype, N * s.H * s.dv);
  check_arg(op, "probs", probs, q.dtype, N * s.H * s.K);
  if (s.window == 0) check_arg(op, "index", index, DType::I32, N * s.H * s.K);
}
}  // namespace

void sparse_attention_forward(const Exec& ex, const Tensor& out, const Tensor& probs,
                              const Tensor& q, const Tensor& k, const Tensor& v,
                              const Tensor& index, SparseAttentionShape s) {
  require_cpu_kernel(ex, "sparse_attention_forward");
  const char* op = "sparse_attention_forward";
  profile::Scope prof(op, 2.0 * s.B * s.H * double(s.T) * s.K * (s.dqk + s.dv));
  check_device(ex, op, {{"out", out}, {"probs", probs}, {"q", q}, {"k", k}, {"v", v}, {"index", index}});
  check_sparse(op, q, k, v, out, probs, index, s);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const int32_t* idx = s.window == 0 ? index.as<int32_t>() : nullptr;
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::sparse_attention_forward<T>(out.as<T>(), probs.as<T>(), q.as<T>(), k.as<T>(), v.as<T>(), idx, s);
  });
}

void sparse_attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk,
                               const Tensor& dv, const Tensor& dout, const Tensor& q,
                               const Tensor& k, const Tensor& v, const Tensor& probs,
                               const Tensor& index, SparseAttentionShape s) {
  require_cpu_kernel(ex, "sparse_attention_backward");
  const char* op = "sparse_attention_backward";
  profile::Scope prof(op, 2.0 * s.B * s.H * double(s.T) * s.K * (2 * s.dqk + 2 * s.dv));
  check_device(ex, op, {{"dq", dq}, {"dk", dk}, {"dv", dv}, {"dout", dout}, {"q", q}, {"k", k},
                        {"v", v}, {"probs", probs}, {"index", index}});
  check_sparse(op, q, k, v, dout, probs, index, s);
  check_sparse(op, dq, dk, dv, dout, probs, index, s);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const int32_t* idx = s.window == 0 ? index.as<int32_t>() : nullptr;
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::sparse_attention_backward<T>(dq.as<T>(), dk.as<T>(), dv.as<T>(), dout.as<T>(), q.as<T>(),
                                      k.as<T>(), v.as<T>(), probs.as<T>(), idx, s);
  });
}

void lsh_rotations(float* out, int H, int rounds, int dqk, int buckets, uint64_t seed) {
  // one stream per (head, round): the rotation of a head does not depend on how many others exist
  const int half = buckets / 2;
  for (int h = 0; h < H; h++)
    for (int r = 0; r < rounds; r++) {
      Rng rng(seed ^ (0x15a7e5ull * uint64_t(h + 1)) ^ (0x9e3779b97f4a7c15ull * uint64_t(r + 1)));
      float* R = out + (size_t(h) * rounds + r) * size_t(dqk) * half;
      for (size_t i = 0; i < size_t(dqk) * half; i++) R[i] = rng.normal();
    }
}

void lsh_attention_index(const Exec& ex, const Tensor& index, const Tensor& buckets,
                         const Tensor& q, const Tensor& k, const Tensor& rotations, LshShape s) {
  require_cpu_kernel(ex, "lsh_attention_index");
  const char* op = "lsh_attention_index";
  profile::Scope prof(op, 2.0 * 2 * s.B * s.H * double(s.T) * s.rounds * s.dqk * (s.buckets / 2));
  check_device(ex, op, {{"index", index}, {"buckets", buckets}, {"q", q}, {"k", k}, {"rotations", rotations}});
  DSV3_CHECK(s.buckets >= 2 && s.buckets % 2 == 0 && s.rounds >= 1 && s.chunk >= 1, op,
             ": bad shape (internal error)");
  const size_t N = size_t(s.B) * s.T;
  check_arg(op, "q", q, q.dtype, N * s.H * s.dqk);
  check_arg(op, "k", k, q.dtype, N * s.H * s.dqk);
  check_arg(op, "rotations", rotations, DType::F32, size_t(s.H) * s.rounds * s.dqk * (s.buckets / 2));
  check_arg(op, "index", index, DType::I32, N * s.H * s.K());
  check_opt(op, "buckets", buckets, DType::I32, N * s.H * s.rounds * 2);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::lsh_index<T>(index.as<int32_t>(), buckets ? buckets.as<int32_t>() : nullptr, q.as<T>(),
                      k.as<T>(), rotations.as<float>(), s);
  });
}

}  // namespace dsv3
