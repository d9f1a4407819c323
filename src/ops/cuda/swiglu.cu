// CUDA launchers of ops/swiglu.h (kernels/swiglu.cuh).
#include "ops/cuda/kernels/swiglu.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

void swiglu_forward(const Exec& ex, const Tensor& out, const Tensor& h, int N, int D) {
  dispatch_device(h.dtype, "swiglu_forward", [&]<typename T>() {
    swiglu_forward_run(launcher(ex, "swiglu_forward"), ptr<T>(out), ptr<const T>(h), N, D);
  });
}

void swiglu_backward(const Exec& ex, const Tensor& dh, const Tensor& dout, const Tensor& h, int N,
                     int D, Write mode) {
  dispatch_device(h.dtype, "swiglu_backward", [&]<typename T>() {
    swiglu_backward_run(launcher(ex, "swiglu_backward"), ptr<T>(dh), ptr<const T>(dout),
                        ptr<const T>(h), N, D, mode == Write::Accumulate);
  });
}

}  // namespace dsv3::cuda
