// CUDA launchers of ops/cross_entropy.h (kernels/cross_entropy.cuh). fp32 logits only: the fp64
// oracle runs on the CPU.
#include "ops/cuda/kernels/cross_entropy.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

void cross_entropy_forward(const Exec& ex, const Tensor& losses, const Tensor& logits,
                           const Tensor& targets, int N, int V) {
  DSV3_CHECK(logits.dtype == DType::F32, "cross_entropy_forward: CUDA logits are f32, not ",
             dtype_name(logits.dtype));
  cross_entropy_forward_run(launcher(ex, "cross_entropy_forward"), ptr<float>(losses),
                            ptr<const float>(logits), ptr<const int32_t>(targets), N, V);
}

void cross_entropy_backward(const Exec& ex, const Tensor& dlogits, const Tensor& logits,
                            const Tensor& targets, const Tensor& row_scale, int N, int V) {
  DSV3_CHECK(logits.dtype == DType::F32, "cross_entropy_backward: CUDA logits are f32, not ",
             dtype_name(logits.dtype));
  dispatch_device(dlogits.dtype, "cross_entropy_backward", [&]<typename T>() {
    cross_entropy_backward_run(launcher(ex, "cross_entropy_backward"), ptr<T>(dlogits),
                               ptr<const float>(logits), ptr<const int32_t>(targets),
                               ptr<const float>(row_scale), N, V);
  });
}

}  // namespace dsv3::cuda
