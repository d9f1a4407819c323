// CUDA launchers of ops/moe.h (kernels/moe.cuh). The router runs in fp32 (its logits are fp32 in
// every precision).
#include "ops/cuda/kernels/moe.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

namespace {
RouterGeom geom(const RouterShape& s) {
  DSV3_CHECK(s.E <= 1024 && s.groups <= 32 && s.K <= s.E, "router on CUDA: ", s.E,
             " experts in ", s.groups, " groups (at most 1024 experts and 32 groups)");
  return {s.N, s.E, s.K, s.groups, s.topk_groups, s.segment, s.sigmoid, s.norm_topk,
          s.route_scale, s.balance_alpha};
}
void need_f32(const Tensor& t, const char* op) {
  DSV3_CHECK(t.dtype == DType::F32, op, ": the CUDA router runs in f32, not ", dtype_name(t.dtype));
}
}  // namespace

void router_forward(const Exec& ex, const RouterOutputs& out, const Tensor& logits,
                    const Tensor& bias, RouterShape s) {
  need_f32(logits, "router_forward");
  router_forward_run(launcher(ex, "router_forward"), ptr<int32_t>(out.idx), ptr<float>(out.gates),
                     ptr<float>(out.scores), ptr<int64_t>(out.loads), ptr<double>(out.stats),
                     ptr<const float>(logits), bias ? ptr<const float>(bias) : nullptr, geom(s));
}

void router_backward(const Exec& ex, const Tensor& dlogits, const Tensor& dgates, double dbalance,
                     const Tensor& scores, const Tensor& idx, RouterShape s) {
  need_f32(scores, "router_backward");
  router_backward_run(launcher(ex, "router_backward"), ptr<float>(dlogits), ptr<const float>(dgates),
                      dbalance, ptr<const float>(scores), ptr<const int32_t>(idx), geom(s));
}

void moe_permutation(const Exec& ex, const Tensor& slot_token, const Tensor& slot_of,
                     const Tensor& offsets, const Tensor& idx, int N, int K, int E) {
  DSV3_CHECK(E <= 12 * 1024, "moe_permutation on CUDA: ", E, " experts (shared memory holds 12K)");
  moe_permutation_run(launcher(ex, "moe_permutation"), ptr<int32_t>(slot_token),
                      ptr<int32_t>(slot_of), ptr<int32_t>(offsets), ptr<const int32_t>(idx), N, K, E);
}

void moe_gather(const Exec& ex, const Tensor& xp, const Tensor& x, const Tensor& slot_token,
                int NK, int C) {
  dispatch_device(x.dtype, "moe_gather", [&]<typename T>() {
    moe_gather_run(launcher(ex, "moe_gather"), ptr<T>(xp), ptr<const T>(x),
                   ptr<const int32_t>(slot_token), NK, C);
  });
}

void moe_combine(const Exec& ex, const Tensor& y, const Tensor& outp, const Tensor& gates,
                 const Tensor& slot_of, int N, int K, int C, bool accumulate) {
  dispatch_device(y.dtype, "moe_combine", [&]<typename T>() {
    moe_combine_run(launcher(ex, "moe_combine"), ptr<T>(y), ptr<const T>(outp),
                    ptr<const float>(gates), ptr<const int32_t>(slot_of), N, K, C, accumulate);
  });
}

void moe_combine_backward(const Exec& ex, const Tensor& doutp, const Tensor& dgates,
                          const Tensor& dy, const Tensor& outp, const Tensor& gates,
                          const Tensor& slot_of, int N, int K, int C) {
  dispatch_device(dy.dtype, "moe_combine_backward", [&]<typename T>() {
    moe_combine_backward_run(launcher(ex, "moe_combine_backward"), ptr<T>(doutp),
                             ptr<float>(dgates), ptr<const T>(dy), ptr<const T>(outp),
                             ptr<const float>(gates), ptr<const int32_t>(slot_of), N, K, C);
  });
}

void moe_scatter_add(const Exec& ex, const Tensor& dx, const Tensor& dxp, const Tensor& slot_of,
                     int N, int K, int C) {
  dispatch_device(dx.dtype, "moe_scatter_add", [&]<typename T>() {
    moe_scatter_add_run(launcher(ex, "moe_scatter_add"), ptr<T>(dx), ptr<const T>(dxp),
                        ptr<const int32_t>(slot_of), N, K, C);
  });
}

}  // namespace dsv3::cuda
