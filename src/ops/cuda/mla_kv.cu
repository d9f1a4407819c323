// CUDA launchers of ops/mla_kv.h (kernels/mla_kv.cuh).
#include "ops/cuda/kernels/mla_kv.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

void mla_kv_expand_forward(const Exec& ex, const Tensor& k, const Tensor& v, const Tensor& kvb,
                           const Tensor& kv, MlaKvShape s) {
  const MlaKvGeom g{s.N, s.H, s.nope, s.rope, s.dv, s.kv_lora};
  dispatch_device(kvb.dtype, "mla_kv_expand_forward", [&]<typename T>() {
    mla_kv_expand_forward_run(launcher(ex, "mla_kv_expand_forward"), ptr<T>(k), ptr<T>(v),
                              ptr<const T>(kvb), ptr<const T>(kv), g);
  });
}

void mla_kv_expand_backward(const Exec& ex, const Tensor& dkvb, const Tensor& dkv,
                            const Tensor& dk, const Tensor& dv, MlaKvShape s) {
  const MlaKvGeom g{s.N, s.H, s.nope, s.rope, s.dv, s.kv_lora};
  dispatch_device(dkvb.dtype, "mla_kv_expand_backward", [&]<typename T>() {
    mla_kv_expand_backward_run(launcher(ex, "mla_kv_expand_backward"), ptr<T>(dkvb), ptr<T>(dkv),
                               ptr<const T>(dk), ptr<const T>(dv), g);
  });
}

}  // namespace dsv3::cuda
