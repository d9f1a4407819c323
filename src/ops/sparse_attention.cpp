// Sparse causal attention, three kernels:
//   window: query blocks against the key range they see, as GEMMs (window_attention_*);
//   LSH:    per (round, bucket chunk) on gathered rows, as GEMMs (lsh_attention_*);
//   explicit key lists: each query row gathers its K keys, one dot product per key
//           (*_gather; also the oracle of the two blocked kernels).
// Heads run in parallel, each serially: every result (the scattered dk/dv included) is
// independent of the thread count.
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

// ---- LSH: bucket-sorted orders
// For one (batch, head): per round r, order[r][0] = the query positions sorted by (bucket,
// position), order[r][1] = the key positions likewise; buckets[r][0/1] = the buckets by position
// (if not null).
template <typename T>
void lsh_sort(int32_t* order, int32_t* buckets, const T* q, const T* k, const float* rot, LshShape s,
              int bh) {
  using A = accum_t<T>;
  const int half = s.buckets / 2, ldq = s.H * s.dqk;
  const int b = bh / s.H, h = bh % s.H;
  const size_t tok0 = size_t(b) * s.T;
  std::vector<int> bq(static_cast<size_t>(s.T)), bk(static_cast<size_t>(s.T));
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
      int32_t* out = buckets + size_t(r) * 2 * s.T;
      std::copy(bq.begin(), bq.end(), out);
      std::copy(bk.begin(), bk.end(), out + s.T);
    }
    // stable counting sort by bucket: (bucket, position) order
    auto sort_by = [&](const std::vector<int>& bkt, int32_t* sorted) {
      std::fill(count.begin(), count.end(), 0);
      for (int t = 0; t < s.T; t++) count[size_t(bkt[size_t(t)]) + 1]++;
      for (int m = 0; m < s.buckets; m++) count[size_t(m) + 1] += count[size_t(m)];
      for (int t = 0; t < s.T; t++) sorted[count[size_t(bkt[size_t(t)])]++] = t;
    };
    sort_by(bq, order + size_t(r) * 2 * s.T);
    sort_by(bk, order + (size_t(r) * 2 + 1) * s.T);
  }
}

// ---- LSH key lists (for the gather kernel: the oracle of the blocked LSH attention below)
template <typename T>
void lsh_index(int32_t* index, int32_t* buckets, const T* q, const T* k, const float* rot, LshShape s) {
  const int K = s.K();
  const int n_chunks = (s.T + s.chunk - 1) / s.chunk;
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    std::vector<int32_t> order(size_t(s.rounds) * 2 * s.T);
    lsh_sort(order.data(), buckets ? buckets + size_t(bh) * s.rounds * 2 * s.T : nullptr, q, k, rot, s, bh);
    std::vector<int> qrank(size_t(s.rounds) * s.T);  // per round: query position -> sorted rank
    for (int r = 0; r < s.rounds; r++)
      for (int n = 0; n < s.T; n++) qrank[size_t(r) * s.T + order[(size_t(r) * 2) * s.T + n]] = n;
    std::vector<int> keys;
    keys.reserve(size_t(K));
    for (int i = 0; i < s.T; i++) {
      keys.clear();
      keys.push_back(i);
      for (int r = 0; r < s.rounds; r++) {
        const int c = qrank[size_t(r) * s.T + i] / s.chunk;
        const int32_t* ks = order.data() + (size_t(r) * 2 + 1) * s.T;
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

// ---- LSH attention in bucket chunks (GEMMs)
// Block (round r, chunk c): the queries of sorted ranks [cC, cC + C) against the keys of sorted
// ranks [(c-1)C, (c+1)C), gathered into contiguous rows. Slots of a P row: 2C key slots, the
// first C for chunk c-1 (empty for c = 0) and the rest for chunk c (empty past T), then self.
namespace {
struct LshBlock {
  int n0, m;    // query ranks [n0, n0 + m)
  int kn0, nk;  // key ranks [kn0, kn0 + nk)
  int off;      // slot of key rank kn0
};
LshBlock lsh_block(int c, int C, int T) {
  const int n0 = c * C, kn0 = std::max(0, n0 - C);
  return {n0, std::min(T, n0 + C) - n0, kn0, std::min(T, n0 + C) - kn0, kn0 - (n0 - C)};
}
template <typename T>
void gather_rows(T* dst, const T* src, int ld, int width, const int32_t* pos, int n) {
  for (int r = 0; r < n; r++) std::copy_n(src + size_t(pos[r]) * ld, width, dst + size_t(r) * width);
}
template <typename T, typename A>
A dot_loaded(const T* a, const T* b, int n) {
  A s = 0;
#pragma omp simd reduction(+ : s)
  for (int d = 0; d < n; d++) s += load(a[d]) * load(b[d]);
  return s;
}
}  // namespace

// Several rounds: one softmax over all copies of a row, each score lowered by log(n) where n is
// the number of rounds whose blocks hold that (query, key) pair (Reformer's duplicate
// correction), so the copies of a key together get exactly its share of the union's softmax.
template <typename T>
void lsh_attention_forward(T* out, T* probs, int32_t* order, const T* q, const T* k, const T* v,
                           const float* rot, LshAttentionShape s) {
  using A = accum_t<T>;
  constexpr DType t = dtype_of<T>(), at = dtype_of<A>();
  const int C = s.chunk, L = 2 * C + 1, R = s.rounds, Tn = s.T;
  const int n_chunks = (Tn + C - 1) / C, ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const A scale = A(s.scale), neg_inf = -std::numeric_limits<A>::infinity();
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * Tn;
    const T* qh = q + tok0 * ldq + size_t(h) * s.dqk;  // row t at t * ldq
    const T* kh = k + tok0 * ldq + size_t(h) * s.dqk;
    const T* vh = v + tok0 * ldv + size_t(h) * s.dv;
    int32_t* ord = order + size_t(bh) * R * 2 * Tn;
    lsh_sort(ord, nullptr, q, k, rot, s.lsh(), bh);
    // the chunk of each query and key position per round: duplicate counts
    int32_t* qc = scratch<int32_t>(size_t(R) * 2 * Tn, 0);
    int32_t* kc = qc + size_t(R) * Tn;
    for (int r = 0; r < R && R > 1; r++)
      for (int n = 0; n < Tn; n++) {
        qc[size_t(r) * Tn + ord[size_t(r) * 2 * Tn + n]] = n / C;
        kc[size_t(r) * Tn + ord[(size_t(r) * 2 + 1) * Tn + n]] = n / C;
      }
    A* S = scratch<A>(size_t(R) * Tn * L, 0);  // (rounds, T ranks, L): scores, then exp
    A* mx = scratch<A>(size_t(Tn) * (2 + s.dv) + size_t(C) * s.dv, 1);
    A* sum = mx + Tn;
    A* oacc = sum + Tn;                    // (T, dv) by position
    A* Ob = oacc + size_t(Tn) * s.dv;      // (C, dv)
    T* Qg = scratch<T>(size_t(C) * s.dqk + size_t(2 * C) * (s.dqk + s.dv), 2);
    T* Kg = Qg + size_t(C) * s.dqk;
    T* Vg = Kg + size_t(2 * C) * s.dqk;
    std::fill_n(mx, Tn, neg_inf);
    std::fill_n(sum, Tn, A(0));
    std::fill_n(oacc, size_t(Tn) * s.dv, A(0));
    for (int r = 0; r < R; r++) {
      const int32_t* qs = ord + size_t(r) * 2 * Tn;
      const int32_t* ks = qs + Tn;
      for (int c = 0; c < n_chunks; c++) {
        const LshBlock bl = lsh_block(c, C, Tn);
        gather_rows(Qg, qh, ldq, s.dqk, qs + bl.n0, bl.m);
        gather_rows(Kg, kh, ldq, s.dqk, ks + bl.kn0, bl.nk);
        A* Sb = S + (size_t(r) * Tn + bl.n0) * L;
        gemm(false, true, bl.m, bl.nk, s.dqk, 1.0f, Qg, s.dqk, Kg, s.dqk, 0.0f, Sb + bl.off, L, t, at);
        for (int rr = 0; rr < bl.m; rr++) {
          const int i = qs[bl.n0 + rr];
          A* row = Sb + size_t(rr) * L;
          for (int j = 0; j < L - 1; j++) {
            const int key = j >= bl.off && j < bl.off + bl.nk ? ks[bl.kn0 + j - bl.off] : Tn;
            if (key >= i) {  // empty slot, or not causal (the query itself comes as self)
              row[j] = neg_inf;
              continue;
            }
            A x = row[j] * scale;
            if (R > 1) {
              int n = 0;
              for (int r2 = 0; r2 < R; r2++) {
                const int cq = qc[size_t(r2) * Tn + i], ck = kc[size_t(r2) * Tn + key];
                n += ck == cq || ck == cq - 1;
              }
              x -= std::log(A(n));
            }
            mx[i] = std::max(mx[i], row[j] = x);
          }
          A self = dot_loaded<T, A>(qh + size_t(i) * ldq, kh + size_t(i) * ldq, s.dqk) * scale;
          if (R > 1) self -= std::log(A(R));
          mx[i] = std::max(mx[i], row[L - 1] = self);
        }
      }
    }
    // exp and the row sums over every round, in round order (thread-count independent)
    for (int r = 0; r < R; r++)
      for (int n = 0; n < Tn; n++) {
        const int i = ord[size_t(r) * 2 * Tn + n];
        A* row = S + (size_t(r) * Tn + n) * L;
        A z = 0;
        for (int j = 0; j < L; j++) z += row[j] = row[j] == neg_inf ? A(0) : exp_nonpos(row[j] - mx[i]);
        sum[i] += z;
      }
    T* Pbh = probs + size_t(bh) * R * Tn * L;
    for (int r = 0; r < R; r++) {
      const int32_t* qs = ord + size_t(r) * 2 * Tn;
      const int32_t* ks = qs + Tn;
      for (int c = 0; c < n_chunks; c++) {
        const LshBlock bl = lsh_block(c, C, Tn);
        const size_t at0 = (size_t(r) * Tn + bl.n0) * L;
        for (int rr = 0; rr < bl.m; rr++) {
          const A inv = A(1) / sum[qs[bl.n0 + rr]];
          for (int j = 0; j < L; j++) Pbh[at0 + size_t(rr) * L + j] = store<T>(S[at0 + size_t(rr) * L + j] * inv);
        }
        gather_rows(Vg, vh, ldv, s.dv, ks + bl.kn0, bl.nk);
        gemm(false, false, bl.m, s.dv, bl.nk, 1.0f, Pbh + at0 + bl.off, L, Vg, s.dv, 0.0f, Ob, s.dv, t, at);
        for (int rr = 0; rr < bl.m; rr++) {
          const int i = qs[bl.n0 + rr];
          const A ps = load(Pbh[at0 + size_t(rr) * L + L - 1]);
          const T* vi = vh + size_t(i) * ldv;
          A* o = oacc + size_t(i) * s.dv;
          for (int d = 0; d < s.dv; d++) o[d] += Ob[size_t(rr) * s.dv + d] + ps * load(vi[d]);
        }
      }
    }
    T* oh = out + tok0 * ldv + size_t(h) * s.dv;
    for (int i = 0; i < Tn; i++)
      for (int d = 0; d < s.dv; d++) oh[size_t(i) * ldv + d] = store<T>(oacc[size_t(i) * s.dv + d]);
  }
}

// dP = dO v^T per block (and the self slot), D_i = sum over every copy of P dP, dS = scale P
// (dP - D_i); dq += dS k, dk += dS^T q, dv += P^T dO, scattered back by position into fp32
// (fp64) per-head sums, added to dq, dk, dv once.
template <typename T>
void lsh_attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* q, const T* k,
                            const T* v, const T* probs, const int32_t* order, LshAttentionShape s) {
  using A = accum_t<T>;
  constexpr DType t = dtype_of<T>(), at = dtype_of<A>();
  const int C = s.chunk, L = 2 * C + 1, R = s.rounds, Tn = s.T;
  const int n_chunks = (Tn + C - 1) / C, ldq = s.H * s.dqk, ldv = s.H * s.dv;
  const A scale = A(s.scale);
#pragma omp parallel for schedule(static) if (s.B * s.H > 1)
  for (int bh = 0; bh < s.B * s.H; bh++) {
    const int b = bh / s.H, h = bh % s.H;
    const size_t tok0 = size_t(b) * Tn;
    const size_t qo = tok0 * ldq + size_t(h) * s.dqk, vo = tok0 * ldv + size_t(h) * s.dv;
    const T *qh = q + qo, *kh = k + qo, *vh = v + vo, *gh = dout + vo;
    const int32_t* ord = order + size_t(bh) * R * 2 * Tn;
    const T* Pbh = probs + size_t(bh) * R * Tn * L;
    A* dP = scratch<A>(size_t(R) * Tn * L, 0);
    const size_t nacc = size_t(Tn) * (1 + 2 * s.dqk + s.dv);
    const size_t nblk = size_t(2 * C) * std::max(s.dqk, s.dv);
    A* D = scratch<A>(nacc + nblk, 1);
    A* adq = D + Tn;
    A* adk = adq + size_t(Tn) * s.dqk;
    A* adv = adk + size_t(Tn) * s.dqk;
    A* blk = adv + size_t(Tn) * s.dv;  // one GEMM result at a time: (m, dqk), (nk, dqk), (nk, dv)
    T* Qg = scratch<T>(size_t(C) * (s.dqk + s.dv) + size_t(2 * C) * (s.dqk + s.dv + C), 2);
    T* Gg = Qg + size_t(C) * s.dqk;        // gathered dO (m, dv)
    T* Kg = Gg + size_t(C) * s.dv;         // (nk, dqk)
    T* Vg = Kg + size_t(2 * C) * s.dqk;    // (nk, dv)
    T* dS = Vg + size_t(2 * C) * s.dv;     // (m, nk)
    std::fill_n(D, nacc, A(0));
    for (int r = 0; r < R; r++) {
      const int32_t* qs = ord + size_t(r) * 2 * Tn;
      const int32_t* ks = qs + Tn;
      for (int c = 0; c < n_chunks; c++) {
        const LshBlock bl = lsh_block(c, C, Tn);
        const size_t at0 = (size_t(r) * Tn + bl.n0) * L;
        gather_rows(Gg, gh, ldv, s.dv, qs + bl.n0, bl.m);
        gather_rows(Vg, vh, ldv, s.dv, ks + bl.kn0, bl.nk);
        gemm(false, true, bl.m, bl.nk, s.dv, 1.0f, Gg, s.dv, Vg, s.dv, 0.0f, dP + at0 + bl.off, L, t, at);
        for (int rr = 0; rr < bl.m; rr++) {
          const int i = qs[bl.n0 + rr];
          const T* P = Pbh + at0 + size_t(rr) * L;
          A* d = dP + at0 + size_t(rr) * L;
          d[L - 1] = dot_loaded<T, A>(gh + size_t(i) * ldv, vh + size_t(i) * ldv, s.dv);
          A z = load(P[L - 1]) * d[L - 1];
          for (int j = bl.off; j < bl.off + bl.nk; j++) z += load(P[j]) * d[j];
          D[i] += z;
        }
      }
    }
    for (int r = 0; r < R; r++) {
      const int32_t* qs = ord + size_t(r) * 2 * Tn;
      const int32_t* ks = qs + Tn;
      for (int c = 0; c < n_chunks; c++) {
        const LshBlock bl = lsh_block(c, C, Tn);
        const size_t at0 = (size_t(r) * Tn + bl.n0) * L;
        gather_rows(Qg, qh, ldq, s.dqk, qs + bl.n0, bl.m);
        gather_rows(Gg, gh, ldv, s.dv, qs + bl.n0, bl.m);
        gather_rows(Kg, kh, ldq, s.dqk, ks + bl.kn0, bl.nk);
        for (int rr = 0; rr < bl.m; rr++) {
          const int i = qs[bl.n0 + rr];
          const T* P = Pbh + at0 + size_t(rr) * L;
          const A* d = dP + at0 + size_t(rr) * L;
          for (int j = 0; j < bl.nk; j++)
            dS[size_t(rr) * bl.nk + j] = store<T>(scale * load(P[bl.off + j]) * (d[bl.off + j] - D[i]));
          // the self slot: no GEMM
          const A ps = load(P[L - 1]), ds = scale * ps * (d[L - 1] - D[i]);
          const T *qi = qh + size_t(i) * ldq, *ki = kh + size_t(i) * ldq, *gi = gh + size_t(i) * ldv;
          for (int e = 0; e < s.dqk; e++) {
            adq[size_t(i) * s.dqk + e] += ds * load(ki[e]);
            adk[size_t(i) * s.dqk + e] += ds * load(qi[e]);
          }
          for (int e = 0; e < s.dv; e++) adv[size_t(i) * s.dv + e] += ps * load(gi[e]);
        }
        gemm(false, false, bl.m, s.dqk, bl.nk, 1.0f, dS, bl.nk, Kg, s.dqk, 0.0f, blk, s.dqk, t, at);
        for (int rr = 0; rr < bl.m; rr++) {
          A* a = adq + size_t(qs[bl.n0 + rr]) * s.dqk;
          for (int e = 0; e < s.dqk; e++) a[e] += blk[size_t(rr) * s.dqk + e];
        }
        gemm(true, false, bl.nk, s.dqk, bl.m, 1.0f, dS, bl.nk, Qg, s.dqk, 0.0f, blk, s.dqk, t, at);
        for (int j = 0; j < bl.nk; j++) {
          A* a = adk + size_t(ks[bl.kn0 + j]) * s.dqk;
          for (int e = 0; e < s.dqk; e++) a[e] += blk[size_t(j) * s.dqk + e];
        }
        gemm(true, false, bl.nk, s.dv, bl.m, 1.0f, Pbh + at0 + bl.off, L, Gg, s.dv, 0.0f, blk, s.dv, t, at);
        for (int j = 0; j < bl.nk; j++) {
          A* a = adv + size_t(ks[bl.kn0 + j]) * s.dv;
          for (int e = 0; e < s.dv; e++) a[e] += blk[size_t(j) * s.dv + e];
        }
      }
    }
    for (int i = 0; i < Tn; i++) {
      T* dqr = dq + qo + size_t(i) * ldq;
      T* dkr = dk + qo + size_t(i) * ldq;
      T* dvr = dv + vo + size_t(i) * ldv;
      for (int e = 0; e < s.dqk; e++) {
        dqr[e] = store<T>(load(dqr[e]) + adq[size_t(i) * s.dqk + e]);
        dkr[e] = store<T>(load(dkr[e]) + adk[size_t(i) * s.dqk + e]);
      }
      for (int e = 0; e < s.dv; e++) dvr[e] = store<T>(load(dvr[e]) + adv[size_t(i) * s.dv + e]);
    }
  }
}

#define DSV3_LSH_ATTENTION_INSTANTIATE(T)                                                      \
  template void lsh_attention_forward<T>(T*, T*, int32_t*, const T*, const T*, const T*,        \
                                         const float*, LshAttentionShape);                      \
  template void lsh_attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*,   \
                                          const T*, const int32_t*, LshAttentionShape);
DSV3_LSH_ATTENTION_INSTANTIATE(float)
DSV3_LSH_ATTENTION_INSTANTIATE(double)
DSV3_LSH_ATTENTION_INSTANTIATE(bf16_t)
DSV3_LSH_ATTENTION_INSTANTIATE(f16_t)

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

namespace {
void check_lsh(const char* op, const Tensor& q, const Tensor& k, const Tensor& v, const Tensor& o,
               const Tensor& probs, const Tensor& order, const LshAttentionShape& s) {
  DSV3_CHECK(s.buckets >= 2 && s.buckets % 2 == 0 && s.rounds >= 1 && s.chunk >= 1, op,
             ": bad shape (internal error)");
  const size_t N = size_t(s.B) * s.T;
  check_arg(op, "q", q, q.dtype, N * s.H * s.dqk);
  check_arg(op, "k", k, q.dtype, N * s.H * s.dqk);
  check_arg(op, "v", v, q.dtype, N * s.H * s.dv);
  check_arg(op, "out", o, q.dtype, N * s.H * s.dv);
  check_arg(op, "probs", probs, q.dtype, N * s.H * s.slots());
  check_arg(op, "order", order, DType::I32, N * s.H * s.rounds * 2);
}
}  // namespace

void lsh_attention_forward(const Exec& ex, const Tensor& out, const Tensor& probs,
                           const Tensor& order, const Tensor& q, const Tensor& k, const Tensor& v,
                           const Tensor& rotations, LshAttentionShape s) {
  require_cpu_kernel(ex, "lsh_attention_forward");
  const char* op = "lsh_attention_forward";
  // the GEMMs' work: 2 chunk keys per query per round, plus self
  profile::Scope prof(op, 2.0 * s.B * s.H * double(s.T) * s.slots() * (s.dqk + s.dv));
  check_device(ex, op, {{"out", out}, {"probs", probs}, {"order", order}, {"q", q}, {"k", k},
                        {"v", v}, {"rotations", rotations}});
  check_lsh(op, q, k, v, out, probs, order, s);
  check_arg(op, "rotations", rotations, DType::F32, size_t(s.H) * s.rounds * s.dqk * (s.buckets / 2));
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::lsh_attention_forward<T>(out.as<T>(), probs.as<T>(), order.as<int32_t>(), q.as<T>(), k.as<T>(),
                                  v.as<T>(), rotations.as<float>(), s);
  });
}

void lsh_attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                            const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                            const Tensor& probs, const Tensor& order, LshAttentionShape s) {
  require_cpu_kernel(ex, "lsh_attention_backward");
  const char* op = "lsh_attention_backward";
  profile::Scope prof(op, 2.0 * s.B * s.H * double(s.T) * s.slots() * (2 * s.dqk + 2 * s.dv));
  check_device(ex, op, {{"dq", dq}, {"dk", dk}, {"dv", dv}, {"dout", dout}, {"q", q}, {"k", k},
                        {"v", v}, {"probs", probs}, {"order", order}});
  check_lsh(op, q, k, v, dout, probs, order, s);
  check_lsh(op, dq, dk, dv, dout, probs, order, s);
  dispatch_float(q.dtype, op, [&]<typename T>() {
    cpu::lsh_attention_backward<T>(dq.as<T>(), dk.as<T>(), dv.as<T>(), dout.as<T>(), q.as<T>(), k.as<T>(),
                                   v.as<T>(), probs.as<T>(), order.as<int32_t>(), s);
  });
}

}  // namespace dsv3
