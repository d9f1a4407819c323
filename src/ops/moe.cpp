#include "ops/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"

namespace dsv3 {
namespace cpu {

namespace {
template <typename T>
T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
}  // namespace

template <typename T>
double router_forward(int32_t* idx, T* gates, T* scores, int64_t* loads, const T* logits,
                      const float* bias, RouterShape s) {
  const int N = s.N, E = s.E, K = s.K, G = s.groups, per_group = E / G;
#pragma omp parallel
  {
    std::vector<T> sel(E);
    std::vector<T> gscore(G);
    std::vector<int> order(std::max(E, G));
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const T* l = logits + size_t(n) * E;
      T* sc = scores + size_t(n) * E;
      if (s.sigmoid) {
        for (int e = 0; e < E; e++) sc[e] = sigmoid(l[e]);
      } else {  // softmax over experts, max-subtracted
        T m = l[0];
        for (int e = 1; e < E; e++) m = std::max(m, l[e]);
        T z = 0;
        for (int e = 0; e < E; e++) z += (sc[e] = std::exp(l[e] - m));
        for (int e = 0; e < E; e++) sc[e] /= z;
      }
      for (int e = 0; e < E; e++) sel[e] = sc[e] + (bias ? T(bias[e]) : T(0));
      // ties go to the lower index: compare by (value desc, index asc)
      auto better = [&](const std::vector<T>& v) {
        return [&v](int a, int b) { return v[a] > v[b] || (v[a] == v[b] && a < b); };
      };
      if (G > 1) {
        for (int g = 0; g < G; g++) {  // group score: sum of its top-2 selection scores
          T a = -std::numeric_limits<T>::infinity(), b = a;
          for (int e = g * per_group; e < (g + 1) * per_group; e++) {
            if (sel[e] > a) b = a, a = sel[e];
            else if (sel[e] > b) b = sel[e];
          }
          gscore[g] = a + b;
        }
        for (int g = 0; g < G; g++) order[g] = g;
        std::partial_sort(order.begin(), order.begin() + s.topk_groups, order.begin() + G,
                          better(gscore));
        std::vector<char> keep(G, 0);
        for (int i = 0; i < s.topk_groups; i++) keep[order[i]] = 1;
        for (int e = 0; e < E; e++)
          if (!keep[e / per_group]) sel[e] = -std::numeric_limits<T>::infinity();
      }
      for (int e = 0; e < E; e++) order[e] = e;
      std::partial_sort(order.begin(), order.begin() + K, order.begin() + E, better(sel));
      T sum = 0;
      for (int k = 0; k < K; k++) {
        idx[size_t(n) * K + k] = order[k];
        sum += sc[order[k]];
      }
      const T norm = s.norm_topk ? T(s.route_scale) / sum : T(s.route_scale);
      for (int k = 0; k < K; k++) gates[size_t(n) * K + k] = sc[order[k]] * norm;
    }
  }
  for (size_t i = 0; i < size_t(N) * K; i++) loads[idx[i]]++;

  if (s.balance_alpha == 0) return 0.0;
  // Balance loss: alpha * mean over segments of sum_i f_i P_i (docs/model.md).
  const int S = s.segment, nseg = N / S;
  double total = 0;
  std::vector<double> count(E), P(E);
  for (int g = 0; g < nseg; g++) {
    std::fill(count.begin(), count.end(), 0.0);
    std::fill(P.begin(), P.end(), 0.0);
    for (int n = g * S; n < (g + 1) * S; n++) {
      for (int k = 0; k < K; k++) count[idx[size_t(n) * K + k]] += 1;
      const T* sc = scores + size_t(n) * E;
      double z = 0;
      if (s.sigmoid) for (int e = 0; e < E; e++) z += sc[e];
      else z = 1;
      for (int e = 0; e < E; e++) P[e] += sc[e] / z;
    }
    double seg = 0;
    for (int e = 0; e < E; e++) seg += (double(E) / (double(K) * S) * count[e]) * (P[e] / S);
    total += seg;
  }
  return s.balance_alpha * total / nseg;
}

template <typename T>
void router_backward(T* dlogits, const T* dgates, double dbalance, const T* scores,
                     const int32_t* idx, RouterShape s) {
  const int N = s.N, E = s.E, K = s.K, S = s.segment, nseg = N / S;
  // d(balance)/d p_{t,i} = alpha * dbalance / nseg * f_i / S, constant within a segment.
  std::vector<double> coef(size_t(nseg) * E, 0.0);
  if (s.balance_alpha != 0 && dbalance != 0) {
    for (int g = 0; g < nseg; g++)
      for (int n = g * S; n < (g + 1) * S; n++)
        for (int k = 0; k < K; k++) coef[size_t(g) * E + idx[size_t(n) * K + k]] += 1;
    const double c = s.balance_alpha * dbalance / nseg * double(E) / (double(K) * S) / S;
    for (auto& v : coef) v *= c;
  }
#pragma omp parallel
  {
    std::vector<double> ds(E);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      const T* sc = scores + size_t(n) * E;
      const int32_t* id = idx + size_t(n) * K;
      const T* dg = dgates + size_t(n) * K;
      std::fill(ds.begin(), ds.end(), 0.0);
      // gates: w_k = R * s_k / S_sum (norm_topk) or R * s_k
      if (s.norm_topk) {
        double sum = 0, dot = 0;
        for (int k = 0; k < K; k++) sum += sc[id[k]];
        for (int k = 0; k < K; k++) dot += double(dg[k]) * sc[id[k]];
        for (int k = 0; k < K; k++)
          ds[id[k]] += s.route_scale / sum * (double(dg[k]) - dot / sum);
      } else {
        for (int k = 0; k < K; k++) ds[id[k]] += s.route_scale * double(dg[k]);
      }
      // balance: p = s / sum(s) for sigmoid, p = s for softmax
      const double* cf = coef.data() + size_t(n / S) * E;
      if (s.balance_alpha != 0 && dbalance != 0) {
        if (s.sigmoid) {
          double z = 0, dot = 0;
          for (int e = 0; e < E; e++) z += sc[e];
          for (int e = 0; e < E; e++) dot += cf[e] * sc[e];
          for (int e = 0; e < E; e++) ds[e] += cf[e] / z - dot / (z * z);
        } else {
          for (int e = 0; e < E; e++) ds[e] += cf[e];
        }
      }
      T* dl = dlogits + size_t(n) * E;
      if (s.sigmoid) {
        for (int e = 0; e < E; e++) dl[e] += T(ds[e] * sc[e] * (1.0 - sc[e]));
      } else {
        double dot = 0;
        for (int e = 0; e < E; e++) dot += ds[e] * sc[e];
        for (int e = 0; e < E; e++) dl[e] += T(sc[e] * (ds[e] - dot));
      }
    }
  }
}

template <typename T>
void moe_gather(T* xp, const T* x, const int32_t* slot_token, int NK, int C) {
#pragma omp parallel for schedule(static) if (size_t(NK) * C > 16384)
  for (int s = 0; s < NK; s++)
    std::copy_n(x + size_t(slot_token[s]) * C, C, xp + size_t(s) * C);
}

template <typename T>
void moe_combine(T* y, const T* outp, const T* gates, const int32_t* slot_of, int N, int K, int C,
                 bool accumulate) {
#pragma omp parallel for schedule(static) if (size_t(N) * C > 16384)
  for (int n = 0; n < N; n++) {
    T* yn = y + size_t(n) * C;
    if (!accumulate) std::fill_n(yn, C, T(0));
    for (int k = 0; k < K; k++) {
      const T g = gates[size_t(n) * K + k];
      const T* o = outp + size_t(slot_of[size_t(n) * K + k]) * C;
      for (int c = 0; c < C; c++) yn[c] += g * o[c];
    }
  }
}

template <typename T>
void moe_combine_backward(T* doutp, T* dgates, const T* dy, const T* outp, const T* gates,
                          const int32_t* slot_of, int N, int K, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C > 16384)
  for (int n = 0; n < N; n++) {
    const T* d = dy + size_t(n) * C;
    for (int k = 0; k < K; k++) {
      const size_t slot = size_t(slot_of[size_t(n) * K + k]);
      const T g = gates[size_t(n) * K + k];
      const T* o = outp + slot * C;
      T* dop = doutp + slot * C;
      T dot = 0;
      for (int c = 0; c < C; c++) {
        dot += d[c] * o[c];
        dop[c] = g * d[c];
      }
      dgates[size_t(n) * K + k] = dot;
    }
  }
}

template <typename T>
void moe_scatter_add(T* dx, const T* dxp, const int32_t* slot_of, int N, int K, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C > 16384)
  for (int n = 0; n < N; n++) {
    T* d = dx + size_t(n) * C;
    for (int k = 0; k < K; k++) {
      const T* src = dxp + size_t(slot_of[size_t(n) * K + k]) * C;
      for (int c = 0; c < C; c++) d[c] += src[c];
    }
  }
}

#define DSV3_MOE_INSTANTIATE(T)                                                                 \
  template double router_forward<T>(int32_t*, T*, T*, int64_t*, const T*, const float*,         \
                                    RouterShape);                                               \
  template void router_backward<T>(T*, const T*, double, const T*, const int32_t*, RouterShape); \
  template void moe_gather<T>(T*, const T*, const int32_t*, int, int);                          \
  template void moe_combine<T>(T*, const T*, const T*, const int32_t*, int, int, int, bool);    \
  template void moe_combine_backward<T>(T*, T*, const T*, const T*, const T*, const int32_t*,   \
                                        int, int, int);                                         \
  template void moe_scatter_add<T>(T*, const T*, const int32_t*, int, int, int);
DSV3_MOE_INSTANTIATE(float)
DSV3_MOE_INSTANTIATE(double)

}  // namespace cpu

void moe_permutation(int32_t* slot_token, int32_t* slot_of, int32_t* offsets, const int32_t* idx,
                     int N, int K, int E) {
  std::fill_n(offsets, E + 1, 0);
  for (size_t i = 0; i < size_t(N) * K; i++) {
    DSV3_CHECK(idx[i] >= 0 && idx[i] < E, "moe_permutation: expert index ", idx[i], " out of range");
    offsets[idx[i] + 1]++;
  }
  for (int e = 0; e < E; e++) offsets[e + 1] += offsets[e];
  std::vector<int32_t> next(offsets, offsets + E);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++) {
      const int32_t slot = next[idx[size_t(n) * K + k]]++;
      slot_token[slot] = n;
      slot_of[size_t(n) * K + k] = slot;
    }
}

}  // namespace dsv3

namespace dsv3 {
double router_forward(const Exec& ex, int32_t* idx, float* gates, float* scores, int64_t* loads,
                      const float* logits, const float* bias, RouterShape s) {
  require_cpu(ex, "router_forward");
  return cpu::router_forward<float>(idx, gates, scores, loads, logits, bias, s);
}
void router_backward(const Exec& ex, float* dlogits, const float* dgates, double dbalance,
                     const float* scores, const int32_t* idx, RouterShape s) {
  require_cpu(ex, "router_backward");
  cpu::router_backward<float>(dlogits, dgates, dbalance, scores, idx, s);
}
void moe_gather(const Exec& ex, float* xp, const float* x, const int32_t* slot_token, int NK,
                int C) {
  require_cpu(ex, "moe_gather");
  cpu::moe_gather<float>(xp, x, slot_token, NK, C);
}
void moe_combine(const Exec& ex, float* y, const float* outp, const float* gates,
                 const int32_t* slot_of, int N, int K, int C, bool accumulate) {
  require_cpu(ex, "moe_combine");
  cpu::moe_combine<float>(y, outp, gates, slot_of, N, K, C, accumulate);
}
void moe_combine_backward(const Exec& ex, float* doutp, float* dgates, const float* dy,
                          const float* outp, const float* gates, const int32_t* slot_of, int N,
                          int K, int C) {
  require_cpu(ex, "moe_combine_backward");
  cpu::moe_combine_backward<float>(doutp, dgates, dy, outp, gates, slot_of, N, K, C);
}
void moe_scatter_add(const Exec& ex, float* dx, const float* dxp, const int32_t* slot_of, int N,
                     int K, int C) {
  require_cpu(ex, "moe_scatter_add");
  cpu::moe_scatter_add<float>(dx, dxp, slot_of, N, K, C);
}
}  // namespace dsv3
