#include "ops/moe.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "core/check.h"
#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"

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
                      const float* bias, RouterShape s, double* entropy) {
  const int N = s.N, E = s.E, K = s.K, G = s.groups, per_group = E / G;
  std::vector<double> token_entropy(entropy ? size_t(N) : 0);
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
      if (entropy) {  // H(p), p = scores normalised to sum 1
        double z = 0, h = 0;
        for (int e = 0; e < E; e++) z += double(sc[e]);
        for (int e = 0; e < E; e++) {
          const double p = double(sc[e]) / z;
          if (p > 0) h -= p * std::log(p);
        }
        token_entropy[n] = h;
      }
    }
  }
  for (size_t i = 0; i < size_t(N) * K; i++) loads[idx[i]]++;
  if (entropy) {  // summed in token order: independent of the thread count
    double h = 0;
    for (double v : token_entropy) h += v;
    *entropy = N > 0 ? h / N : 0.0;
  }

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
void moe_combine(T* y, const T* outp, const accum_t<T>* gates, const int32_t* slot_of, int N,
                 int K, int C, bool accumulate) {
  using A = accum_t<T>;
#pragma omp parallel
  {
    thread_local std::vector<A> row;
    if (row.size() < size_t(C)) row.resize(C);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      T* yn = y + size_t(n) * C;
      for (int c = 0; c < C; c++) row[c] = accumulate ? load(yn[c]) : A(0);
      for (int k = 0; k < K; k++) {
        const A g = gates[size_t(n) * K + k];
        const T* o = outp + size_t(slot_of[size_t(n) * K + k]) * C;
        for (int c = 0; c < C; c++) row[c] += g * load(o[c]);
      }
      for (int c = 0; c < C; c++) yn[c] = store<T>(row[c]);
    }
  }
}

template <typename T>
void moe_combine_backward(T* doutp, accum_t<T>* dgates, const T* dy, const T* outp,
                          const accum_t<T>* gates, const int32_t* slot_of, int N, int K, int C) {
  using A = accum_t<T>;
#pragma omp parallel for schedule(static) if (size_t(N) * C > 16384)
  for (int n = 0; n < N; n++) {
    const T* d = dy + size_t(n) * C;
    for (int k = 0; k < K; k++) {
      const size_t slot = size_t(slot_of[size_t(n) * K + k]);
      const A g = gates[size_t(n) * K + k];
      const T* o = outp + slot * C;
      T* dop = doutp + slot * C;
      A dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int c = 0; c < C; c++) dot += load(d[c]) * load(o[c]);
#pragma omp simd
      for (int c = 0; c < C; c++) dop[c] = store<T>(g * load(d[c]));
      dgates[size_t(n) * K + k] = dot;
    }
  }
}

template <typename T>
void moe_scatter_add(T* dx, const T* dxp, const int32_t* slot_of, int N, int K, int C) {
  using A = accum_t<T>;
#pragma omp parallel
  {
    thread_local std::vector<A> row;
    if (row.size() < size_t(C)) row.resize(C);
#pragma omp for schedule(static)
    for (int n = 0; n < N; n++) {
      T* d = dx + size_t(n) * C;
      for (int c = 0; c < C; c++) row[c] = load(d[c]);
      for (int k = 0; k < K; k++) {
        const T* src = dxp + size_t(slot_of[size_t(n) * K + k]) * C;
        for (int c = 0; c < C; c++) row[c] += load(src[c]);
      }
      for (int c = 0; c < C; c++) d[c] = store<T>(row[c]);
    }
  }
}

template double router_forward<float>(int32_t*, float*, float*, int64_t*, const float*,
                                      const float*, RouterShape, double*);
template double router_forward<double>(int32_t*, double*, double*, int64_t*, const double*,
                                       const float*, RouterShape, double*);
template void router_backward<float>(float*, const float*, double, const float*, const int32_t*,
                                     RouterShape);
template void router_backward<double>(double*, const double*, double, const double*,
                                      const int32_t*, RouterShape);
#define DSV3_MOE_INSTANTIATE(T)                                                                 \
  template void moe_gather<T>(T*, const T*, const int32_t*, int, int);                          \
  template void moe_combine<T>(T*, const T*, const accum_t<T>*, const int32_t*, int, int, int,  \
                               bool);                                                           \
  template void moe_combine_backward<T>(T*, accum_t<T>*, const T*, const T*, const accum_t<T>*, \
                                        const int32_t*, int, int, int);                         \
  template void moe_scatter_add<T>(T*, const T*, const int32_t*, int, int, int);
DSV3_MOE_INSTANTIATE(float)
DSV3_MOE_INSTANTIATE(double)
DSV3_MOE_INSTANTIATE(bf16_t)
DSV3_MOE_INSTANTIATE(f16_t)

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

}  // namespace cpu

void router_forward(const Exec& ex, const RouterOutputs& out, const Tensor& logits,
                    const Tensor& bias, RouterShape s) {
  const char* op = "router_forward";
  profile::Scope prof(op);
  check_device(ex, op, {{"idx", out.idx}, {"gates", out.gates}, {"scores", out.scores},
                        {"loads", out.loads}, {"stats", out.stats}, {"logits", logits}, {"bias", bias}});
  const DType a = logits.dtype;
  DSV3_CHECK(a == DType::F32 || a == DType::F64, op, ": logits must be f32 or f64 (internal error)");
  const size_t NE = size_t(s.N) * s.E, NK = size_t(s.N) * s.K;
  check_arg(op, "logits", logits, a, NE);
  check_arg(op, "scores", out.scores, a, NE);
  check_arg(op, "gates", out.gates, a, NK);
  check_arg(op, "idx", out.idx, DType::I32, NK);
  check_arg(op, "loads", out.loads, DType::I64, size_t(s.E));
  check_arg(op, "stats", out.stats, DType::F64, 2);
  check_opt(op, "bias", bias, DType::F32, size_t(s.E));
  DSV3_CHECK(s.segment > 0 && s.N % s.segment == 0, op, ": ", s.N, " tokens are not whole segments of ",
             s.segment, " (internal error)");
  if (ex.device == Device::CUDA) return cuda::router_forward(ex, out, logits, bias, s);
  int64_t* loads = out.loads.as<int64_t>();
  std::fill_n(loads, s.E, 0);
  double* stats = out.stats.as<double>();
  const float* b = bias ? bias.as<float>() : nullptr;
  if (a == DType::F64)
    stats[0] = cpu::router_forward(out.idx.as<int32_t>(), out.gates.as<double>(),
                                   out.scores.as<double>(), loads, logits.as<double>(), b, s, &stats[1]);
  else
    stats[0] = cpu::router_forward(out.idx.as<int32_t>(), out.gates.as<float>(),
                                   out.scores.as<float>(), loads, logits.as<float>(), b, s, &stats[1]);
}

void router_backward(const Exec& ex, const Tensor& dlogits, const Tensor& dgates, double dbalance,
                     const Tensor& scores, const Tensor& idx, RouterShape s) {
  const char* op = "router_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"dlogits", dlogits}, {"dgates", dgates}, {"scores", scores}, {"idx", idx}});
  const DType a = scores.dtype;
  DSV3_CHECK(a == DType::F32 || a == DType::F64, op, ": scores must be f32 or f64 (internal error)");
  const size_t NE = size_t(s.N) * s.E, NK = size_t(s.N) * s.K;
  check_arg(op, "scores", scores, a, NE);
  check_arg(op, "dlogits", dlogits, a, NE);
  check_arg(op, "dgates", dgates, a, NK);
  check_arg(op, "idx", idx, DType::I32, NK);
  if (ex.device == Device::CUDA) return cuda::router_backward(ex, dlogits, dgates, dbalance, scores, idx, s);
  if (a == DType::F64)
    return cpu::router_backward(dlogits.as<double>(), dgates.as<double>(), dbalance,
                                scores.as<double>(), idx.as<int32_t>(), s);
  cpu::router_backward(dlogits.as<float>(), dgates.as<float>(), dbalance, scores.as<float>(),
                       idx.as<int32_t>(), s);
}

void moe_permutation(const Exec& ex, const Tensor& slot_token, const Tensor& slot_of,
                     const Tensor& offsets, const Tensor& idx, int N, int K, int E) {
  const char* op = "moe_permutation";
  profile::Scope prof(op);
  check_device(ex, op, {{"slot_token", slot_token}, {"slot_of", slot_of}, {"offsets", offsets}, {"idx", idx}});
  const size_t NK = size_t(N) * K;
  check_arg(op, "slot_token", slot_token, DType::I32, NK);
  check_arg(op, "slot_of", slot_of, DType::I32, NK);
  check_arg(op, "offsets", offsets, DType::I32, size_t(E) + 1);
  check_arg(op, "idx", idx, DType::I32, NK);
  if (ex.device == Device::CUDA) return cuda::moe_permutation(ex, slot_token, slot_of, offsets, idx, N, K, E);
  cpu::moe_permutation(slot_token.as<int32_t>(), slot_of.as<int32_t>(), offsets.as<int32_t>(),
                       idx.as<int32_t>(), N, K, E);
}

void moe_gather(const Exec& ex, const Tensor& xp, const Tensor& x, const Tensor& slot_token,
                int NK, int C) {
  const char* op = "moe_gather";
  profile::Scope prof(op);
  check_device(ex, op, {{"xp", xp}, {"x", x}, {"slot_token", slot_token}});
  check_arg(op, "xp", xp, x.dtype, size_t(NK) * C);
  check_arg(op, "slot_token", slot_token, DType::I32, size_t(NK));
  if (ex.device == Device::CUDA) return cuda::moe_gather(ex, xp, x, slot_token, NK, C);
  dispatch_float(x.dtype, op, [&]<typename T>() {
    cpu::moe_gather<T>(xp.as<T>(), x.as<T>(), slot_token.as<int32_t>(), NK, C);
  });
}

void moe_combine(const Exec& ex, const Tensor& y, const Tensor& outp, const Tensor& gates,
                 const Tensor& slot_of, int N, int K, int C, bool accumulate) {
  const char* op = "moe_combine";
  profile::Scope prof(op);
  check_device(ex, op, {{"y", y}, {"outp", outp}, {"gates", gates}, {"slot_of", slot_of}});
  check_arg(op, "y", y, y.dtype, size_t(N) * C);
  check_arg(op, "outp", outp, y.dtype, size_t(N) * K * C);
  check_arg(op, "gates", gates, accum_dtype(y.dtype), size_t(N) * K);
  check_arg(op, "slot_of", slot_of, DType::I32, size_t(N) * K);
  if (ex.device == Device::CUDA) return cuda::moe_combine(ex, y, outp, gates, slot_of, N, K, C, accumulate);
  dispatch_float(y.dtype, op, [&]<typename T>() {
    cpu::moe_combine<T>(y.as<T>(), outp.as<T>(), gates.as<accum_t<T>>(), slot_of.as<int32_t>(), N,
                        K, C, accumulate);
  });
}

void moe_combine_backward(const Exec& ex, const Tensor& doutp, const Tensor& dgates,
                          const Tensor& dy, const Tensor& outp, const Tensor& gates,
                          const Tensor& slot_of, int N, int K, int C) {
  const char* op = "moe_combine_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"doutp", doutp}, {"dgates", dgates}, {"dy", dy}, {"outp", outp},
                        {"gates", gates}, {"slot_of", slot_of}});
  const DType t = dy.dtype;
  check_arg(op, "dy", dy, t, size_t(N) * C);
  check_arg(op, "outp", outp, t, size_t(N) * K * C);
  check_arg(op, "doutp", doutp, t, size_t(N) * K * C);
  check_arg(op, "gates", gates, accum_dtype(t), size_t(N) * K);
  check_arg(op, "dgates", dgates, accum_dtype(t), size_t(N) * K);
  check_arg(op, "slot_of", slot_of, DType::I32, size_t(N) * K);
  if (ex.device == Device::CUDA) return cuda::moe_combine_backward(ex, doutp, dgates, dy, outp, gates, slot_of, N, K, C);
  dispatch_float(t, op, [&]<typename T>() {
    cpu::moe_combine_backward<T>(doutp.as<T>(), dgates.as<accum_t<T>>(), dy.as<T>(), outp.as<T>(),
                                 gates.as<accum_t<T>>(), slot_of.as<int32_t>(), N, K, C);
  });
}

void moe_scatter_add(const Exec& ex, const Tensor& dx, const Tensor& dxp, const Tensor& slot_of,
                     int N, int K, int C) {
  const char* op = "moe_scatter_add";
  profile::Scope prof(op);
  check_device(ex, op, {{"dx", dx}, {"dxp", dxp}, {"slot_of", slot_of}});
  check_arg(op, "dx", dx, dx.dtype, size_t(N) * C);
  check_arg(op, "dxp", dxp, dx.dtype, size_t(N) * K * C);
  check_arg(op, "slot_of", slot_of, DType::I32, size_t(N) * K);
  if (ex.device == Device::CUDA) return cuda::moe_scatter_add(ex, dx, dxp, slot_of, N, K, C);
  dispatch_float(dx.dtype, op, [&]<typename T>() {
    cpu::moe_scatter_add<T>(dx.as<T>(), dxp.as<T>(), slot_of.as<int32_t>(), N, K, C);
  });
}

}  // namespace dsv3
