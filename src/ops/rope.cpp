// Interleaved rotary position embedding with YaRN, following DeepSeek-V3's inference/model.py
// (precompute_freqs_cis, apply_rotary_emb).
#include "ops/rope.h"

#include "core/profile.h"
#include "ops/dispatch.h"

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
template <typename A>
void rope_tables(A* cos, A* sin, int seq_len, const RopeParams& p) {
  const int half = p.dim / 2;
  std::vector<double> f(half);
  rope_frequencies(f.data(), p);
  for (int t = 0; t < seq_len; t++)
    for (int i = 0; i < half; i++) {
      double a = double(t) * f[i];
      cos[size_t(t) * half + i] = A(std::cos(a));
      sin[size_t(t) * half + i] = A(std::sin(a));
    }
}

// sign = +1 rotates by +angle (forward), -1 by -angle (backward: R^T = R(-angle)).
template <typename T>
static void rope_rotate(T* x, const accum_t<T>* cos, const accum_t<T>* sin, RopeLayout l,
                        accum_t<T> sign, const int32_t* positions = nullptr) {
  using A = accum_t<T>;
  const int half = l.dim / 2;
#pragma omp parallel for schedule(static) if (size_t(l.N) * l.heads * l.dim > 16384)
  for (int n = 0; n < l.N; n++) {
    const size_t t = positions ? size_t(positions[n]) : size_t(n % l.T);
    const A* c = cos + t * half;
    const A* s = sin + t * half;
    for (int h = 0; h < l.heads; h++) {
      T* v = x + size_t(n) * l.row_stride + size_t(h) * l.head_stride + l.offset;
      for (int i = 0; i < half; i++) {
        const A x0 = load(v[2 * i]), x1 = load(v[2 * i + 1]), si = sign * s[i];
        v[2 * i] = store<T>(x0 * c[i] - x1 * si);
        v[2 * i + 1] = store<T>(x0 * si + x1 * c[i]);
      }
    }
  }
}

template <typename T>
void rope_forward(T* x, const accum_t<T>* cos, const accum_t<T>* sin, RopeLayout l) {
  rope_rotate(x, cos, sin, l, accum_t<T>(1));
}

template <typename T>
void rope_backward(T* dx, const accum_t<T>* cos, const accum_t<T>* sin, RopeLayout l) {
  rope_rotate(dx, cos, sin, l, accum_t<T>(-1));
}

template <typename T>
void rope_forward_at(T* x, const accum_t<T>* cos, const accum_t<T>* sin, const int32_t* positions,
                     RopeLayout l) {
  rope_rotate(x, cos, sin, l, accum_t<T>(1), positions);
}

template void rope_tables<float>(float*, float*, int, const RopeParams&);
template void rope_tables<double>(double*, double*, int, const RopeParams&);
#define DSV3_ROPE_INSTANTIATE(T)                                                               \
  template void rope_forward<T>(T*, const accum_t<T>*, const accum_t<T>*, RopeLayout);         \
  template void rope_backward<T>(T*, const accum_t<T>*, const accum_t<T>*, RopeLayout);        \
  template void rope_forward_at<T>(T*, const accum_t<T>*, const accum_t<T>*, const int32_t*,     \
                                   RopeLayout);
DSV3_ROPE_INSTANTIATE(float)
DSV3_ROPE_INSTANTIATE(double)
DSV3_ROPE_INSTANTIATE(bf16_t)
DSV3_ROPE_INSTANTIATE(f16_t)

}  // namespace cpu

namespace {
void check_rope(const Exec& ex, const char* op, const Tensor& x, const Tensor& cos,
                const Tensor& sin, RopeLayout l) {
  check_device(ex, op, {{"x", x}, {"cos", cos}, {"sin", sin}});
  const size_t span = l.N > 0 ? size_t(l.N - 1) * l.row_stride + size_t(l.heads - 1) * l.head_stride +
                                    l.offset + l.dim
                              : 0;
  check_arg(op, "x", x, x.dtype, span);
  const size_t table = size_t(std::min(l.N, l.T)) * (l.dim / 2);
  check_arg(op, "cos", cos, accum_dtype(x.dtype), table);
  check_arg(op, "sin", sin, accum_dtype(x.dtype), table);
  if (ex.device != Device::CPU) no_kernel(ex, op);
}
}  // namespace

void rope_tables(const Exec& ex, const Tensor& cos, const Tensor& sin, int seq_len,
                 const RopeParams& p) {
  const char* op = "rope_tables";
  profile::Scope prof(op);
  check_device(ex, op, {{"cos", cos}, {"sin", sin}});
  check_arg(op, "cos", cos, cos.dtype, size_t(seq_len) * (p.dim / 2));
  check_arg(op, "sin", sin, cos.dtype, size_t(seq_len) * (p.dim / 2));
  if (ex.device != Device::CPU) no_kernel(ex, op);
  if (cos.dtype == DType::F64) return cpu::rope_tables<double>(cos.as<double>(), sin.as<double>(), seq_len, p);
  cpu::rope_tables<float>(cos.as<float>(), sin.as<float>(), seq_len, p);
}

void rope_forward(const Exec& ex, const Tensor& x, const Tensor& cos, const Tensor& sin,
                  RopeLayout l) {
  profile::Scope prof("rope_forward");
  check_rope(ex, "rope_forward", x, cos, sin, l);
  dispatch_float(x.dtype, "rope_forward", [&]<typename T>() {
    cpu::rope_forward<T>(x.as<T>(), cos.as<accum_t<T>>(), sin.as<accum_t<T>>(), l);
  });
}

void rope_forward_at(const Exec& ex, const Tensor& x, const Tensor& cos, const Tensor& sin,
                     const Tensor& positions, RopeLayout l) {
  const char* op = "rope_forward_at";
  profile::Scope prof(op);
  check_device(ex, op, {{"x", x}, {"cos", cos}, {"sin", sin}, {"positions", positions}});
  check_arg(op, "positions", positions, DType::I32, size_t(l.N));
  const size_t span = l.N > 0 ? size_t(l.N - 1) * l.row_stride + size_t(l.heads - 1) * l.head_stride +
                                    l.offset + l.dim
                              : 0;
  check_arg(op, "x", x, x.dtype, span);
  check_arg(op, "cos", cos, accum_dtype(x.dtype), size_t(l.T) * (l.dim / 2));
  check_arg(op, "sin", sin, accum_dtype(x.dtype), size_t(l.T) * (l.dim / 2));
  if (ex.device != Device::CPU) no_kernel(ex, op);
  // every position must have a row in the tables (T = their rows here)
  const int32_t* pos = positions.as<int32_t>();
  for (int n = 0; n < l.N; n++)
    DSV3_CHECK(pos[n] >= 0 && pos[n] < l.T, op, ": position ", pos[n], " outside the tables' ", l.T,
               " rows (internal error)");
  dispatch_float(x.dtype, op, [&]<typename T>() {
    cpu::rope_forward_at<T>(x.as<T>(), cos.as<accum_t<T>>(), sin.as<accum_t<T>>(), pos, l);
  });
}

void rope_backward(const Exec& ex, const Tensor& dx, const Tensor& cos, const Tensor& sin,
                   RopeLayout l) {
  profile::Scope prof("rope_backward");
  check_rope(ex, "rope_backward", dx, cos, sin, l);
  dispatch_float(dx.dtype, "rope_backward", [&]<typename T>() {
    cpu::rope_backward<T>(dx.as<T>(), cos.as<accum_t<T>>(), sin.as<accum_t<T>>(), l);
  });
}

}  // namespace dsv3
