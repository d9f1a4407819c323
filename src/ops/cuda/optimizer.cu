// CUDA launchers of ops/optimizer.h (kernels/optimizer.cuh). The block lists of the parameter
// spans are built on the host once per span list and kept on the device (training passes the
// same list every step).
#include <cmath>
#include <map>
#include <mutex>
#include <vector>

#include "ops/cuda/kernels/optimizer.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

namespace {

// A device copy of span_blocks(spans, block), cached by the spans' contents.
struct DeviceBlocks {
  Buffer buf;
  size_t count = 0;
};
const DeviceBlocks& device_blocks(const Exec& ex, std::span<const ParamSpan> spans, size_t block) {
  static std::mutex mu;
  // never destroyed: device memory must not be freed after the CUDA runtime has shut down
  static auto& cache = *new std::map<std::vector<uint64_t>, DeviceBlocks>;
  std::vector<uint64_t> key = {block};
  for (const ParamSpan& s : spans) key.insert(key.end(), {s.offset, s.numel, uint64_t(s.decay)});
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) return it->second;
  const std::vector<SpanBlock> host = span_blocks(spans, block);
  DeviceBlocks d;
  d.count = host.size();
  d.buf = Buffer(Device::CUDA, DType::U8, std::max<size_t>(1, host.size() * sizeof(SpanBlock)));
  if (!host.empty())
    backend::copy(ex, d.buf.view().slice(0, host.size() * sizeof(SpanBlock)),
                  Tensor(const_cast<SpanBlock*>(host.data()), host.size() * sizeof(SpanBlock), DType::U8));
  backend::synchronize(ex);  // the host vector goes away
  if (cache.size() > 16) cache.clear();  // a handful of span lists per process
  return cache.emplace(std::move(key), std::move(d)).first->second;
}

}  // namespace

void adamw_update(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& m,
                  const Tensor& v, const Tensor& compute, std::span<const ParamSpan> spans,
                  const AdamwHyper& h) {
  DSV3_CHECK(master.dtype == DType::F32, "adamw_update: CUDA master weights are f32");
  const DeviceBlocks& b = device_blocks(ex, spans, kAdamBlock);
  // the per-update scalars exactly as the CPU kernel computes them
  const float bc1 = float(1.0 - std::pow(h.beta1, double(h.step)));
  const AdamwScalars sc{float(h.beta1), float(h.beta2), float(h.eps),
                        float(std::sqrt(1.0 - std::pow(h.beta2, double(h.step)))),
                        float(h.lr) / bc1, float(1.0 - h.lr * h.weight_decay), float(h.grad_scale),
                        h.grad_scale != 1.0};
  const auto* blocks = static_cast<const SpanBlock*>(b.buf.view().data);
  const CudaLaunch L = launcher(ex, "adamw_update");
  if (!compute)
    return adamw_run(L, ptr<float>(master), ptr<const float>(grads), ptr<float>(m), ptr<float>(v),
                     static_cast<float*>(nullptr), blocks, b.count, sc);
  dispatch_device(compute.dtype, "adamw_update", [&]<typename T>() {
    adamw_run(L, ptr<float>(master), ptr<const float>(grads), ptr<float>(m), ptr<float>(v),
              ptr<T>(compute), blocks, b.count, sc);
  });
}

void routing_bias_update(const Exec& ex, const Tensor& bias, const Tensor& loads, double gamma) {
  routing_bias_run(launcher(ex, "routing_bias_update"), ptr<float>(bias), ptr<const int64_t>(loads),
                   int(bias.numel), gamma);
}

double sum_squares(const Exec& ex, const Tensor& x, std::span<const ParamSpan> spans) {
  DSV3_CHECK(x.dtype == DType::F32, "sum_squares: CUDA gradients are f32");
  const DeviceBlocks& b = device_blocks(ex, spans, kSumBlock);
  return sum_squares_run(launcher(ex, "sum_squares"), ptr<const float>(x),
                         static_cast<const SpanBlock*>(b.buf.view().data), b.count);
}

}  // namespace dsv3::cuda
