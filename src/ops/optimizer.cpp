#include "ops/optimizer.h"

#include <algorithm>
#include <cmath>
#include <vector>

#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"

namespace dsv3 {
namespace cpu {
namespace {

// The spans cut into blocks of at most kUpdateBlock elements, in order: one parallel loop over
// all of them keeps both threads busy (most tensors are small experts' matrices).
constexpr size_t kUpdateBlock = 16384;
struct Block {
  size_t offset, numel;
  bool decay;
};
std::vector<Block> blocks_of(std::span<const ParamSpan> spans, size_t block) {
  std::vector<Block> out;
  for (const ParamSpan& s : spans)
    for (size_t i = 0; i < s.numel; i += block)
      out.push_back({s.offset + i, std::min(block, s.numel - i), s.decay});
  return out;
}

template <typename A, typename T>
void adamw(A* p, const A* g, A* m, A* v, T* compute, std::span<const ParamSpan> spans,
           const AdamwHyper& h) {
  const A b1 = A(h.beta1), b2 = A(h.beta2), eps = A(h.eps);
  const A bc1 = A(1.0 - std::pow(h.beta1, double(h.step)));
  const A bc2_sqrt = A(std::sqrt(1.0 - std::pow(h.beta2, double(h.step))));
  const A step_size = A(h.lr) / bc1;
  const A decay_on = A(1.0 - h.lr * h.weight_decay);
  const A gs = A(h.grad_scale);
  const bool scaled = h.grad_scale != 1.0;
  const std::vector<Block> blocks = blocks_of(spans, kUpdateBlock);
#pragma omp parallel for schedule(static) if (blocks.size() > 1)
  for (size_t b = 0; b < blocks.size(); b++) {
    const Block& s = blocks[b];
    const A decay = s.decay ? decay_on : A(1);
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
    if (scaled) update([&](size_t i) { return gg[i] * gs; });
    else update([&](size_t i) { return gg[i]; });
    if (compute) {
      T* cc = compute + s.offset;
#pragma omp simd
      for (size_t i = 0; i < s.numel; i++) cc[i] = store<T>(pp[i]);
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
  if (ex.device == Device::CUDA) return cuda::adamw_update(ex, master, grads, m, v, compute, spans, h);
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

void routing_bias_update(const Exec& ex, const Tensor& bias, const Tensor& loads, double gamma) {
  const char* op = "routing_bias_update";
  profile::Scope prof(op);
  check_device(ex, op, {{"bias", bias}, {"loads", loads}});
  check_arg(op, "bias", bias, DType::F32, bias.numel);
  check_arg(op, "loads", loads, DType::I64, bias.numel);
  if (ex.device == Device::CUDA) return cuda::routing_bias_update(ex, bias, loads, gamma);
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
  if (ex.device == Device::CUDA) return cuda::sum_squares(ex, x, spans);
  if (x.dtype == DType::F64) return cpu::sumsq(x.as<double>(), spans);
  DSV3_CHECK(x.dtype == DType::F32, op, ": gradients must be f32 or f64 (internal error)");
  return cpu::sumsq(x.as<float>(), spans);
}

}  // namespace dsv3
