// CUDA launchers of ops/elementwise.h (kernels/elementwise.cuh).
#include "ops/cuda/kernels/elementwise.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

void add_inplace(const Exec& ex, const Tensor& y, const Tensor& x) {
  dispatch_device(y.dtype, "add_inplace", [&]<typename T>() {
    add_run(launcher(ex, "add_inplace"), ptr<T>(y), ptr<const T>(x), y.numel);
  });
}

void convert(const Exec& ex, const Tensor& dst, const Tensor& src) {
  dispatch_device(dst.dtype, "convert", [&]<typename D>() {
    dispatch_device(src.dtype, "convert", [&]<typename S>() {
      convert_run(launcher(ex, "convert"), ptr<D>(dst), ptr<const S>(src), dst.numel);
    });
  });
}

void scale_inplace(const Exec& ex, const Tensor& x, double s) {
  dispatch_device(x.dtype, "scale_inplace", [&]<typename T>() {
    scale_run(launcher(ex, "scale_inplace"), ptr<T>(x), float(s), x.numel);
  });
}

}  // namespace dsv3::cuda
