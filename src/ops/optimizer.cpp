#include "ops/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/profile.h"
#include "ops/dispatch.h"
#include "ops/gemm_cpu.h"

namespace dsv3 {
namespace cpu {
namespace {

// The spans cut into blocks of at most kUpdateBlock elements, in order: one parallel loop over
// all of them keeps both threads busy (most tensors are small experts' matrices).
constexpr size_t kUpdateBlock = 16384;
struct Block {
  size_t offset, numel;
  bool decay;
  float lr_mult;
  size_t span;  // index of the span it belongs to
};
std::vector<Block> blocks_of(std::span<const ParamSpan> spans, size_t block) {
  std::vector<Block> out;
  for (size_t k = 0; k < spans.size(); k++) {
    const ParamSpan& s = spans[k];
    for (size_t i = 0; i < s.numel; i += block)
      out.push_back({s.offset + i, std::min(block, s.numel - i), s.decay, s.lr_mult, k});
  }
  return out;
}

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// The gradient as an optimizer reads it: g * grad_scale (+ noise), in A.
template <typename A>
struct GradReader {
  const A* g;
  A gs;
  bool scaled;
  GradNoise noise;
  uint64_t t;
  A operator()(size_t i) const {  // i: global element index
    A x = scaled ? g[i] * gs : g[i];
    if (noise.std > 0) x += A(noise.std * noise_normal(noise.seed, t, i));
    return x;
  }
};

template <typename A, typename T>
void adamw(A* p, const A* g, A* m, A* v, T* compute, std::span<const ParamSpan> spans,
           const AdamwHyper& h) {
  const A b1 = A(h.beta1), b2 = A(h.beta2), eps = A(h.eps);
  const A bc1 = A(1.0 - std::pow(h.beta1, double(h.step)));
  const A bc2_sqrt = A(std::sqrt(1.0 - std::pow(h.beta2, double(h.step))));
  const A gs = A(h.grad_scale);
  const bool scaled = h.grad_scale != 1.0;
  const std::vector<Block> blocks = blocks_of(spans, kUpdateBlock);
#pragma omp parallel for schedule(static) if (blocks.size() > 1)
  for (size_t b = 0; b < blocks.size(); b++) {
    const Block& s = blocks[b];
    const double lr = h.lr * double(s.lr_mult);
    const A step_size = A(lr) / bc1;
    const A decay = s.decay ? A(1.0 - lr * h.weight_decay) : A(1);
    A* pp = p + s.offset;
    const A* gg = g + s.offset;
    A* mm = m + s.offset;
    A* vv = v + s.offset;
    auto update = [&](auto read_g) {
#pragma omp simd
      for (size_t i = 0; i < s.numel; i++) {
        const A gi = read_g(i);
        mm[i] = b1 * mm[i] + (A(1) - b1) * gi;
        vv[i] = b2 * vv[i] + (A(1) - b2) * gi * gi;
        const A denom = std::sqrt(vv[i]) / bc2_sqrt + eps;
        pp[i] = pp[i] * decay - step_size * mm[i] / denom;
      }
    };
    if (h.noise.std > 0) {
      const GradReader<A> rd{g, gs, scaled, h.noise, uint64_t(h.step)};
      update([&](size_t i) { return rd(s.offset + i); });
    } else if (scaled) {
      update([&](size_t i) { return gg[i] * gs; });
    } else {
      update([&](size_t i) { return gg[i]; });
    }
    if (compute) {
      T* cc = compute + s.offset;
#pragma omp simd
      for (size_t i = 0; i < s.numel; i++) cc[i] = store<T>(pp[i]);
    }
  }
}

template <typename A, typename T>
void lamb(A* p, const A* g, A* m, A* v, T* compute, std::span<const ParamSpan> spans,
          const AdamwHyper& h) {
  const A b1 = A(h.beta1), b2 = A(h.beta2), eps = A(h.eps), wd = A(h.weight_decay);
  const A bc1 = A(1.0 - std::pow(h.beta1, double(h.step)));
  const A bc2 = A(1.0 - std::pow(h.beta2, double(h.step)));
  const GradReader<A> rd{g, A(h.grad_scale), h.grad_scale != 1.0, h.noise, uint64_t(h.step)};
  const std::vector<Block> blocks = blocks_of(spans, kUpdateBlock);
  auto r_of = [&](const Block& s, size_t i) {  // i global
    const A r = (m[i] / bc1) / (std::sqrt(v[i] / bc2) + eps);
    return s.decay ? r + wd * p[i] : r;
  };
  // 1: moments, and per block the squared norms of p and of the update direction r
  std::vector<double> pn(blocks.size()), rn(blocks.size());
#pragma omp parallel for schedule(static) if (blocks.size() > 1)
  for (size_t b = 0; b < blocks.size(); b++) {
    const Block& s = blocks[b];
    double sp = 0, sr = 0;
    for (size_t i = s.offset; i < s.offset + s.numel; i++) {
      const A gi = rd(i);
      m[i] = b1 * m[i] + (A(1) - b1) * gi;
      v[i] = b2 * v[i] + (A(1) - b2) * gi * gi;
      const A r = r_of(s, i);
      sp += double(p[i]) * double(p[i]), sr += double(r) * double(r);
    }
    pn[b] = sp, rn[b] = sr;
  }
  // per tensor, block sums in order
  std::vector<double> trust(spans.size(), 1.0), psum(spans.size(), 0.0), rsum(spans.size(), 0.0);
  for (size_t b = 0; b < blocks.size(); b++) psum[blocks[b].span] += pn[b], rsum[blocks[b].span] += rn[b];
  for (size_t k = 0; k < spans.size(); k++)
    if (spans[k].decay && psum[k] > 0 && rsum[k] > 0) trust[k] = std::sqrt(psum[k]) / std::sqrt(rsum[k]);
  // 2: the update
#pragma omp parallel for schedule(static) if (blocks.size() > 1)
  for (size_t b = 0; b < blocks.size(); b++) {
    const Block& s = blocks[b];
    const A step = A(h.lr * double(s.lr_mult) * trust[s.span]);
    for (size_t i = s.offset; i < s.offset + s.numel; i++) p[i] -= step * r_of(s, i);
    if (compute)
      for (size_t i = s.offset; i < s.offset + s.numel; i++) compute[i] = store<T>(p[i]);
  }
}

template <typename A>
A* muon_scratch(size_t n, int which) {
  thread_local std::vector<A> buf[5];
  if (buf[which].size() < n) buf[which].resize(n);
  return buf[which].data();
}

template <typename A, typename T>
void muon(A* p, const A* g, A* buf, T* compute, std::span<const MatrixSpan> mats, const MuonHyper& h) {
  constexpr DType at = dtype_of<A>();
  const A mu = A(h.momentum);
  const GradReader<A> rd{g, A(h.grad_scale), h.grad_scale != 1.0, h.noise, uint64_t(h.step)};
  // Always inside a parallel region (no `if`): each matrix's GEMMs run single-threaded on one
  // thread, so the bits do not depend on the thread count.
#pragma omp parallel for schedule(dynamic)
  for (size_t k = 0; k < mats.size(); k++) {
    const MatrixSpan& ms = mats[k];
    const size_t n = size_t(ms.rows) * ms.cols, o = ms.offset;
    const bool tall = ms.rows > ms.cols;
    const int a = tall ? ms.cols : ms.rows, bw = tall ? ms.rows : ms.cols;  // X is (a, bw), a <= bw
    A* X = muon_scratch<A>(n, 0);
    A* Y = muon_scratch<A>(n, 1);
    A* Am = muon_scratch<A>(size_t(a) * a, 2);
    A* Bm = muon_scratch<A>(size_t(a) * a, 3);
    A* U = muon_scratch<A>(n, 4);
    double norm2 = 0;
    for (size_t i = 0; i < n; i++) {
      const A gi = rd(o + i);
      buf[o + i] = mu * buf[o + i] + gi;
      U[i] = h.nesterov ? gi + mu * buf[o + i] : buf[o + i];
      norm2 += double(U[i]) * double(U[i]);
    }
    const A inv = A(1) / (A(std::sqrt(norm2)) + A(1e-7));
    for (int r = 0; r < ms.rows; r++)
      for (int c = 0; c < ms.cols; c++) {
        const A x = U[size_t(r) * ms.cols + c] * inv;
        if (tall) X[size_t(c) * ms.rows + r] = x;
        else X[size_t(r) * ms.cols + c] = x;
      }
    const A ca = A(3.4445), cb = A(-4.7750), cc = A(2.0315);
    for (int it = 0; it < h.ns_steps; it++) {
      gemm(false, true, a, a, bw, 1.0f, X, bw, X, bw, 0.0f, Am, a, at, at);  // A = X X^T
      gemm(false, false, a, a, a, 1.0f, Am, a, Am, a, 0.0f, Bm, a, at, at);  // A A
      for (size_t i = 0; i < size_t(a) * a; i++) Bm[i] = cb * Am[i] + cc * Bm[i];
      gemm(false, false, a, bw, a, 1.0f, Bm, a, X, bw, 0.0f, Y, bw, at, at);  // B X
      for (size_t i = 0; i < n; i++) X[i] = ca * X[i] + Y[i];
    }
    const double lr = h.lr * double(ms.lr_mult);
    const A scale = A(lr * 0.2 * std::sqrt(double(std::max(ms.rows, ms.cols))));
    const A decay = A(1.0 - lr * h.weight_decay);
    for (int r = 0; r < ms.rows; r++)
      for (int c = 0; c < ms.cols; c++) {
        const size_t i = size_t(r) * ms.cols + c;
        const A x = tall ? X[size_t(c) * ms.rows + r] : X[i];
        p[o + i] = p[o + i] * decay - scale * x;
        if (compute) compute[o + i] = store<T>(p[o + i]);
      }
  }
}

constexpr size_t kSumBlock = 8192;

template <typename A>
double sumsq(const A* x, std::span<const ParamSpan> spans) {
  // Blocks of kSumBlock elements inside each span, each summed serially in double; block sums
  // are added in order. The blocks (hence the bits) do not depend on the thread count.
  std::vector<std::pair<size_t, size_t>> blocks;
  for (const ParamSpan& s : spans)
    for (size_t i = 0; i < s.numel; i += kSumBlock)
      blocks.push_back({s.offset + i, std::min(kSumBlock, s.numel - i)});
  std::vector<double> part(blocks.size());
#pragma omp parallel for schedule(static) if (blocks.size() > 8)
  for (size_t b = 0; b < blocks.size(); b++) {
    const A* p = x + blocks[b].first;
    double s = 0;
    for (size_t i = 0; i < blocks[b].second; i++) s += double(p[i]) * double(p[i]);
    part[b] = s;
  }
  double total = 0;
  for (double s : part) total += s;
  return total;
}

}  // namespace
}  // namespace cpu

void adamw_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& m,
                  const Tensor& v, const Tensor& compute, std::span<const ParamSpan> spans,
                  const AdamwHyper& h) {
  const char* op = "adamw_update";
  profile::Scope prof(op);
  check_device(ex, op, {{"master", master}, {"grads", grads}, {"m", m}, {"v", v}, {"compute", compute}});
  const DType a = master.dtype;
  DSV3_CHECK(a == DType::F32 || a == DType::F64, op, ": master weights must be f32 or f64 (internal error)");
  size_t end = 0;
  for (const ParamSpan& s : spans) end = std::max(end, s.offset + s.numel);
  check_arg(op, "master", master, a, end);
  check_arg(op, "grads", grads, a, end);
  check_arg(op, "m", m, a, end);
  check_arg(op, "v", v, a, end);
  if (compute) check_arg(op, "compute", compute, compute.dtype, end);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  auto run = [&]<typename A>() {
    if (!compute) {
      cpu::adamw<A, A>(master.as<A>(), grads.as<A>(), m.as<A>(), v.as<A>(), nullptr, spans, h);
      return;
    }
    dispatch_float(compute.dtype, op, [&]<typename T>() {
      cpu::adamw<A, T>(master.as<A>(), grads.as<A>(), m.as<A>(), v.as<A>(), compute.as<T>(), spans, h);
    });
  };
  if (a == DType::F64) run.template operator()<double>();
  else run.template operator()<float>();
}

double noise_normal(uint64_t seed, uint64_t t, uint64_t i) {
  const uint64_t key = cpu::splitmix(cpu::splitmix(seed ^ (t * 0xd1b54a32d192ed03ull)) ^ i);
  const uint64_t h1 = cpu::splitmix(key), h2 = cpu::splitmix(key ^ 0x5851f42d4c957f2dull);
  const double u1 = (double(h1 >> 11) + 0.5) * 0x1p-53, u2 = double(h2 >> 11) * 0x1p-53;
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

namespace {
// The master-weight dtype A (f32, or f64 for the oracle), then the compute copy's T.
template <typename Fn>
void dispatch_update(const char* op, const Tensor& master, const Tensor& compute, Fn&& fn) {
  auto run = [&]<typename A>() {
    if (!compute) {
      fn.template operator()<A, A>();
      return;
    }
    dispatch_float(compute.dtype, op, [&]<typename T>() { fn.template operator()<A, T>(); });
  };
  if (master.dtype == DType::F64) run.template operator()<double>();
  else run.template operator()<float>();
}
}  // namespace

void lamb_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& m,
                 const Tensor& v, const Tensor& compute, std::span<const ParamSpan> spans,
                 const AdamwHyper& h) {
  const char* op = "lamb_update";
  profile::Scope prof(op);
  check_device(ex, op, {{"master", master}, {"grads", grads}, {"m", m}, {"v", v}, {"compute", compute}});
  const DType a = master.dtype;
  DSV3_CHECK(a == DType::F32 || a == DType::F64, op, ": master weights must be f32 or f64 (internal error)");
  size_t end = 0;
  for (const ParamSpan& s : spans) end = std::max(end, s.offset + s.numel);
  for (auto [name, t] : {std::pair{"master", &master}, {"grads", &grads}, {"m", &m}, {"v", &v}})
    check_arg(op, name, *t, a, end);
  if (compute) check_arg(op, "compute", compute, compute.dtype, end);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  dispatch_update(op, master, compute, [&]<typename A, typename T>() {
    cpu::lamb<A, T>(master.as<A>(), grads.as<A>(), m.as<A>(), v.as<A>(),
                    compute ? compute.as<T>() : nullptr, spans, h);
  });
}

void muon_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& buf,
                 const Tensor& compute, std::span<const MatrixSpan> mats, const MuonHyper& h) {
  const char* op = "muon_update";
  double flops = 0;
  for (const MatrixSpan& s : mats) {
    const double a = std::min(s.rows, s.cols), b = std::max(s.rows, s.cols);
    flops += h.ns_steps * (4 * a * a * b + 2 * a * a * a);
  }
  profile::Scope prof(op, flops);
  check_device(ex, op, {{"master", master}, {"grads", grads}, {"buf", buf}, {"compute", compute}});
  const DType a = master.dtype;
  DSV3_CHECK(a == DType::F32 || a == DType::F64, op, ": master weights must be f32 or f64 (internal error)");
  size_t end = 0;
  for (const MatrixSpan& s : mats) end = std::max(end, s.offset + size_t(s.rows) * s.cols);
  check_arg(op, "master", master, a, end);
  check_arg(op, "grads", grads, a, end);
  check_arg(op, "buf", buf, a, end);
  if (compute) check_arg(op, "compute", compute, compute.dtype, end);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  dispatch_update(op, master, compute, [&]<typename A, typename T>() {
    cpu::muon<A, T>(master.as<A>(), grads.as<A>(), buf.as<A>(), compute ? compute.as<T>() : nullptr, mats, h);
  });
}

void routing_bias_update(const Exec& ex, const Tensor& bias, const Tensor& loads, double gamma) {
  const char* op = "routing_bias_update";
  profile::Scope prof(op);
  check_device(ex, op, {{"bias", bias}, {"loads", loads}});
  check_arg(op, "bias", bias, DType::F32, bias.numel);
  check_arg(op, "loads", loads, DType::I64, bias.numel);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const int64_t* l = loads.as<int64_t>();
  float* b = bias.as<float>();
  const size_t E = bias.numel;
  double mean = 0;
  for (size_t e = 0; e < E; e++) mean += double(l[e]);
  mean /= double(E);
  for (size_t e = 0; e < E; e++) {
    const double diff = mean - double(l[e]);
    b[e] += float(gamma * double((diff > 0) - (diff < 0)));
  }
}

double sum_squares(const Exec& ex, const Tensor& x, std::span<const ParamSpan> spans) {
  const char* op = "sum_squares";
  profile::Scope prof(op);
  check_device(ex, op, {{"x", x}});
  size_t end = 0;
  for (const ParamSpan& s : spans) end = std::max(end, s.offset + s.numel);
  check_arg(op, "x", x, x.dtype, end);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  if (x.dtype == DType::F64) return cpu::sumsq(x.as<double>(), spans);
  DSV3_CHECK(x.dtype == DType::F32, op, ": gradients must be f32 or f64 (internal error)");
  return cpu::sumsq(x.as<float>(), spans);
}

}  // namespace dsv3
