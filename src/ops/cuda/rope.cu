// CUDA launchers of ops/rope.h (kernels/rope.cuh). The tables are computed on the host by the
// CPU kernel (angles in double) and copied: the same bits as a CPU run.
#include <vector>

#include "ops/cuda/kernels/rope.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

void rope_tables(const Exec& ex, const Tensor& cos, const Tensor& sin, int seq_len,
                 const RopeParams& p) {
  DSV3_CHECK(cos.dtype == DType::F32, "rope_tables: CUDA tables are f32 (internal error)");
  const size_t n = size_t(seq_len) * (p.dim / 2);
  std::vector<float> c(n), s(n);
  cpu::rope_tables<float>(c.data(), s.data(), seq_len, p);
  backend::copy(ex, cos.slice(0, n), host_tensor(c));
  backend::copy(ex, sin.slice(0, n), host_tensor(s));
}

namespace {
void rope(const Exec& ex, const Tensor& x, const Tensor& cos, const Tensor& sin, RopeLayout l,
          float sign, const char* op) {
  const RopeGeom g{l.N, l.T, l.heads, l.row_stride, l.head_stride, l.offset, l.dim};
  dispatch_device(x.dtype, op, [&]<typename T>() {
    rope_run(launcher(ex, op), ptr<T>(x), ptr<const float>(cos), ptr<const float>(sin), g, sign);
  });
}
}  // namespace

void rope_forward(const Exec& ex, const Tensor& x, const Tensor& cos, const Tensor& sin,
                  RopeLayout l) {
  rope(ex, x, cos, sin, l, 1.0f, "rope_forward");
}
void rope_backward(const Exec& ex, const Tensor& dx, const Tensor& cos, const Tensor& sin,
                   RopeLayout l) {
  rope(ex, dx, cos, sin, l, -1.0f, "rope_backward");
}

}  // namespace dsv3::cuda
