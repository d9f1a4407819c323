// CUDA launchers of ops/rmsnorm.h (kernels/rmsnorm.cuh).
#include "ops/cuda/kernels/rmsnorm.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

void rmsnorm_forward(const Exec& ex, const Tensor& out, const Tensor& rstd, const Tensor& x,
                     const Tensor& w, RmsNormShape s, float eps) {
  dispatch_device(x.dtype, "rmsnorm_forward", [&]<typename T>() {
    rmsnorm_forward_run(launcher(ex, "rmsnorm_forward"), ptr<T>(out), ptr<float>(rstd),
                        ptr<const T>(x), ptr<const T>(w), s.N, s.C, s.x_stride, s.out_stride, eps);
  });
}

void rmsnorm_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dout,
                      const Tensor& x, const Tensor& w, const Tensor& rstd, RmsNormShape s) {
  dispatch_device(x.dtype, "rmsnorm_backward", [&]<typename T>() {
    rmsnorm_backward_run(launcher(ex, "rmsnorm_backward"), dx ? ptr<T>(dx) : nullptr,
                         dw ? ptr<float>(dw) : nullptr, ptr<const T>(dout), ptr<const T>(x),
                         ptr<const T>(w), ptr<const float>(rstd), s.N, s.C, s.x_stride,
                         s.out_stride);
  });
}

}  // namespace dsv3::cuda
