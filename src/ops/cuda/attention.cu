// CUDA launchers of ops/attention.h (kernels/attention.cuh): flash attention, the log-sum-exp
// per row saved for backward. DSV3_CUDA_ATTENTION=generic forces the fp32 CUDA-core kernels for
// every dtype (a cross-check of the tensor-core kernels on a GPU).
#include <cstdlib>
#include <cstring>

#include "ops/cuda/kernels/attention.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

namespace {
bool force_generic() {
  static const bool f = [] {
    const char* e = std::getenv("DSV3_CUDA_ATTENTION");
    return e && std::strcmp(e, "generic") == 0;
  }();
  return f;
}
AttnGeom geom(const AttentionShape& s) { return {s.B, s.T, s.H, s.dqk, s.dv, float(s.scale)}; }
}  // namespace

void attention_forward(const Exec& ex, const Tensor& out, const Tensor& saved, const Tensor& q,
                       const Tensor& k, const Tensor& v, AttentionShape s) {
  const AttentionPlan p = plan_attention(s.dqk, s.dv, q.dtype != DType::F32, force_generic());
  dispatch_device(q.dtype, "attention_forward", [&]<typename T>() {
    attention_forward_run(launcher(ex, "attention_forward"), ptr<T>(out), ptr<float>(saved),
                          ptr<const T>(q), ptr<const T>(k), ptr<const T>(v), geom(s), p);
  });
}

void attention_backward(const Exec& ex, const Tensor& dq, const Tensor& dk, const Tensor& dv,
                        const Tensor& dout, const Tensor& q, const Tensor& k, const Tensor& v,
                        const Tensor& out, const Tensor& saved, AttentionShape s) {
  const AttentionPlan p = plan_attention(s.dqk, s.dv, q.dtype != DType::F32, force_generic());
  dispatch_device(q.dtype, "attention_backward", [&]<typename T>() {
    attention_backward_run(launcher(ex, "attention_backward"), ptr<T>(dq), ptr<T>(dk), ptr<T>(dv),
                           ptr<const T>(dout), ptr<const T>(q), ptr<const T>(k), ptr<const T>(v),
                           ptr<const T>(out), ptr<const float>(saved), geom(s), p);
  });
}

}  // namespace dsv3::cuda
