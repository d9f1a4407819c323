#include "ops/elementwise.h"

#include <cstddef>

#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"

namespace dsv3 {
namespace cpu {
namespace {
constexpr size_t kParallelWork = 1 << 15;

template <typename T>
void add(T* y, const T* x, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelWork)
  for (size_t i = 0; i < n; i++) y[i] = store<T>(load(y[i]) + load(x[i]));
}

template <typename D, typename S>
void convert_n(D* d, const S* s, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelWork)
  for (size_t i = 0; i < n; i++) {
    if constexpr (std::is_same_v<D, double> || std::is_same_v<S, double>)
      d[i] = D(double(load(s[i])));
    else
      d[i] = D(float(load(s[i])));
  }
}

template <typename T>
void scale(T* x, accum_t<T> s, size_t n) {
#pragma omp parallel for simd schedule(static) if (n > kParallelWork)
  for (size_t i = 0; i < n; i++) x[i] = store<T>(load(x[i]) * s);
}
}  // namespace
}  // namespace cpu

void add_inplace(const Exec& ex, const Tensor& y, const Tensor& x) {
  const char* op = "add_inplace";
  profile::Scope prof(op);
  check_device(ex, op, {{"y", y}, {"x", x}});
  check_arg(op, "x", x, y.dtype, y.numel);
  if (ex.device == Device::CUDA) return cuda::add_inplace(ex, y, x);
  dispatch_float(y.dtype, op, [&]<typename T>() { cpu::add<T>(y.as<T>(), x.as<T>(), y.numel); });
}

void convert(const Exec& ex, const Tensor& dst, const Tensor& src) {
  const char* op = "convert";
  profile::Scope prof(op);
  check_device(ex, op, {{"dst", dst}, {"src", src}});
  check_arg(op, "src", src, src.dtype, dst.numel);
  if (src.dtype == dst.dtype) return backend::copy(ex, dst, src.slice(0, dst.numel));
  if (ex.device == Device::CUDA) return cuda::convert(ex, dst, src);
  dispatch_float(dst.dtype, op, [&]<typename D>() {
    dispatch_float(src.dtype, op, [&]<typename S>() {
      cpu::convert_n<D, S>(dst.as<D>(), src.as<S>(), dst.numel);
    });
  });
}

void scale_inplace(const Exec& ex, const Tensor& x, double s) {
  const char* op = "scale_inplace";
  profile::Scope prof(op);
  check_device(ex, op, {{"x", x}});
  if (ex.device == Device::CUDA) return cuda::scale_inplace(ex, x, s);
  dispatch_float(x.dtype, op, [&]<typename T>() {
    cpu::scale<T>(x.as<T>(), accum_t<T>(s), x.numel);
  });
}

Tensor as_dtype(const Exec& ex, const Tensor& src, DType want, const Tensor& scratch) {
  if (src.dtype == want) return src;
  const Tensor dst = scratch.slice(0, src.numel);
  DSV3_CHECK(dst.dtype == want, "as_dtype: scratch is ", dtype_name(dst.dtype), ", wanted ",
             dtype_name(want), " (internal error)");
  convert(ex, dst, src);
  return dst;
}

}  // namespace dsv3
