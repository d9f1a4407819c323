// Interleaved rotary position embedding with YaRN, following DeepSeek-V3's inference/model.py
// (precompute_freqs_cis, apply_rotary_emb).
#include "ops/rope.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <vector>

namespace dsv3 {

// The dimension index whose wavelength completes `num_rot` rotations over `max_seq_len` tokens.
static double find_correction_dim(double num_rot, int dim, double base, int max_seq_len) {
  return dim * std::log(max_seq_len / (num_rot * 2 * M_PI)) / (2 * std::log(base));
}

void rope_frequencies(double* freqs, const RopeParams& p) {
  const int half = p.dim / 2;
  for (int i = 0; i < half; i++) freqs[i] = 1.0 / std::pow(p.theta, double(2 * i) / p.dim);
  if (!p.yarn()) return;
  // Dims below `low` rotate fast (kept as is), above `high` slowly (divided by factor); linear
  // blend in between.
  int low = int(std::floor(find_correction_dim(p.beta_fast, p.dim, p.theta, p.original_max_pos)));
  int high = int(std::ceil(find_correction_dim(p.beta_slow, p.dim, p.theta, p.original_max_pos)));
  low = std::max(low, 0);
  high = std::min(high, p.dim - 1);
  double hi = high == low ? high + 0.001 : high;  // avoid 0/0 as DeepSeek does
  for (int i = 0; i < half; i++) {
    double ramp = std::clamp((i - low) / (hi - low), 0.0, 1.0);
    double smooth = 1.0 - ramp;
    freqs[i] = freqs[i] / p.factor * (1.0 - smooth) + freqs[i] * smooth;
  }
}

double rope_softmax_scale_multiplier(const RopeParams& p) {
  if (!p.yarn()) return 1.0;
  double m = 0.1 * p.mscale * std::log(p.factor) + 1.0;
  return m * m;
}

namespace cpu {

// cos, sin: (seq_len, dim/2), angles computed in double.
template <typename T>
void rope_tables(T* cos, T* sin, int seq_len, const RopeParams& p) {
  const int half = p.dim / 2;
  std::vector<double> f(half);
  rope_frequencies(f.data(), p);
  for (int t = 0; t < seq_len; t++)
    for (int i = 0; i < half; i++) {
      double a = double(t) * f[i];
      cos[size_t(t) * half + i] = T(std::cos(a));
      sin[size_t(t) * half + i] = T(std::sin(a));
    }
}

// sign = +1 rotates by +angle (forward), -1 by -angle (backward: R^T = R(-angle)).
template <typename T>
static void rope_rotate(T* x, const T* cos, const T* sin, RopeLayout l, T sign) {
  const int half = l.dim / 2;
#pragma omp parallel for schedule(static) if (size_t(l.N) * l.heads * l.dim > 16384)
  for (int n = 0; n < l.N; n++) {
    const T* c = cos + size_t(n % l.T) * half;
    const T* s = sin + size_t(n % l.T) * half;
    for (int h = 0; h < l.heads; h++) {
      T* v = x + size_t(n) * l.row_stride + size_t(h) * l.head_stride + l.offset;
      for (int i = 0; i < half; i++) {
        T x0 = v[2 * i], x1 = v[2 * i + 1], si = sign * s[i];
        v[2 * i] = x0 * c[i] - x1 * si;
        v[2 * i + 1] = x0 * si + x1 * c[i];
      }
    }
  }
}

template <typename T>
void rope_forward(T* x, const T* cos, const T* sin, RopeLayout l) {
  rope_rotate(x, cos, sin, l, T(1));
}

template <typename T>
void rope_backward(T* dx, const T* cos, const T* sin, RopeLayout l) {
  rope_rotate(dx, cos, sin, l, T(-1));
}

template void rope_tables<float>(float*, float*, int, const RopeParams&);
template void rope_tables<double>(double*, double*, int, const RopeParams&);
template void rope_forward<float>(float*, const float*, const float*, RopeLayout);
template void rope_forward<double>(double*, const double*, const double*, RopeLayout);
template void rope_backward<float>(float*, const float*, const float*, RopeLayout);
template void rope_backward<double>(double*, const double*, const double*, RopeLayout);

}  // namespace cpu

void rope_forward(const Exec& ex, float* x, const float* cos, const float* sin, RopeLayout l) {
  require_cpu(ex, "rope_forward");
  cpu::rope_forward(x, cos, sin, l);
}

void rope_backward(const Exec& ex, float* dx, const float* cos, const float* sin, RopeLayout l) {
  require_cpu(ex, "rope_backward");
  cpu::rope_backward(dx, cos, sin, l);
}

}  // namespace dsv3
