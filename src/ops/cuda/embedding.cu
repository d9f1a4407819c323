// CUDA launchers of ops/embedding.h (kernels/embedding.cuh).
#include "ops/cuda/kernels/embedding.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

void embedding_forward(const Exec& ex, const Tensor& out, const Tensor& ids, const Tensor& table,
                       int N, int C) {
  const int V = int(table.numel / size_t(std::max(C, 1)));
  dispatch_device(table.dtype, "embedding_forward", [&]<typename T>() {
    embedding_forward_run(launcher(ex, "embedding_forward"), ptr<T>(out), ptr<const int32_t>(ids),
                          ptr<const T>(table), N, C, V);
  });
}

void embedding_backward(const Exec& ex, const Tensor& dtable, const Tensor& dout,
                        const Tensor& ids, int N, int C) {
  DSV3_CHECK(dtable.dtype == DType::F32, "embedding_backward: the table gradient is ",
             dtype_name(dtable.dtype), " (internal error)");
  const int V = int(dtable.numel / size_t(std::max(C, 1)));
  dispatch_device(dout.dtype, "embedding_backward", [&]<typename T>() {
    embedding_backward_run(launcher(ex, "embedding_backward"), ptr<float>(dtable),
                           ptr<const T>(dout), ptr<const int32_t>(ids), N, C, V);
  });
}

}  // namespace dsv3::cuda
