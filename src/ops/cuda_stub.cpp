// Linked when DSV3_CUDA=OFF: the CUDA side of the op entry points (ops/cuda/ops_cuda.h). Nothing
// can reach it (no CUDA tensor can be allocated in such a build), but every entry point names it.
#include "core/check.h"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

namespace {
[[noreturn]] void unavailable() {
  fail("this dsv3 was built without CUDA; rebuild with -DDSV3_CUDA=ON or use --device cpu");
}
}  // namespace

void embedding_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, int, int) { unavailable(); }
void embedding_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, int, int) { unavailable(); }
void rmsnorm_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, RmsNormShape,
                     float) { unavailable(); }
void rmsnorm_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                      const Tensor&, RmsNormShape) { unavailable(); }
void rope_tables(const Exec&, const Tensor&, const Tensor&, int, const RopeParams&) { unavailable(); }
void rope_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, RopeLayout) { unavailable(); }
void rope_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, RopeLayout) { unavailable(); }
void attention_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                       AttentionShape) { unavailable(); }
void attention_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                        const Tensor&, const Tensor&, const Tensor&, const Tensor&, AttentionShape) {
  unavailable();
}
void swiglu_forward(const Exec&, const Tensor&, const Tensor&, int, int) { unavailable(); }
void swiglu_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, int, int, Write) { unavailable(); }
void cross_entropy_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, int, int) { unavailable(); }
void cross_entropy_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int, int) {
  unavailable();
}
void gemm(const Exec&, bool, bool, int, int, int, float, const void*, int, const void*, int, float, void*, int,
          DType, DType) { unavailable(); }
void set_tf32(bool) {}  // nothing to switch: fp32 GEMMs on the CPU are plain fp32
bool tf32() { return false; }
double gemm_peak_gflops(DType) { unavailable(); }
void linear_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, int, int, int, Write) { unavailable(); }
void linear_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int,
                     int, int, Write) { unavailable(); }
void grouped_linear_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                            GroupedShape) { unavailable(); }
void grouped_linear_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                             const Tensor&, const Tensor&, GroupedShape, Write) { unavailable(); }
void router_forward(const Exec&, const RouterOutputs&, const Tensor&, const Tensor&, RouterShape) { unavailable(); }
void router_backward(const Exec&, const Tensor&, const Tensor&, double, const Tensor&, const Tensor&,
                     RouterShape) { unavailable(); }
void moe_permutation(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int, int, int) {
  unavailable();
}
void moe_gather(const Exec&, const Tensor&, const Tensor&, const Tensor&, int, int) { unavailable(); }
void moe_combine(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, int, int, int, bool) {
  unavailable();
}
void moe_combine_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                          const Tensor&, int, int, int) { unavailable(); }
void moe_scatter_add(const Exec&, const Tensor&, const Tensor&, const Tensor&, int, int, int) { unavailable(); }
void mla_kv_expand_forward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, MlaKvShape) {
  unavailable();
}
void mla_kv_expand_backward(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, MlaKvShape) {
  unavailable();
}
void add_inplace(const Exec&, const Tensor&, const Tensor&) { unavailable(); }
void convert(const Exec&, const Tensor&, const Tensor&) { unavailable(); }
void scale_inplace(const Exec&, const Tensor&, double) { unavailable(); }
void adamw_update(const Exec&, const Tensor&, const Tensor&, const Tensor&, const Tensor&, const Tensor&,
                  std::span<const ParamSpan>, const AdamwHyper&) { unavailable(); }
void routing_bias_update(const Exec&, const Tensor&, const Tensor&, double) { unavailable(); }
double sum_squares(const Exec&, const Tensor&, std::span<const ParamSpan>) { unavailable(); }

}  // namespace dsv3::cuda
