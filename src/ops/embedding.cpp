// Token embedding: out[n] = table[ids[n]]; the backward scatters dout rows back into the table.
#include "ops/embedding.h"

#include <omp.h>

#include <algorithm>
#include <cstddef>

#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"

namespace dsv3 {
namespace cpu {

// Rows are copied in parallel once the work is worth a thread team (~16K elements).
constexpr size_t kParallelWork = 16384;

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C > kParallelWork)
  for (int n = 0; n < N; n++) std::copy_n(table + size_t(ids[n]) * C, C, out + size_t(n) * C);
}

// Repeated ids make a scatter over tokens racy, so each thread owns a slice of the C columns and
// walks all tokens in order: every dtable element is summed in token order whatever the number
// of threads, with no atomics, and the result is bit-identical across thread counts.
template <typename T>
void embedding_backward(accum_t<T>* dtable, const T* dout, const int32_t* ids, int N, int C) {
#pragma omp parallel if (size_t(N) * C > kParallelWork)
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    // Slices of whole 16-element groups keep each thread's stores on its own cache lines.
    int groups = (C + 15) / 16;
    int c0 = std::min(C, groups * t / nt * 16), c1 = std::min(C, groups * (t + 1) / nt * 16);
    for (int n = 0; n < N; n++) {
      accum_t<T>* dst = dtable + size_t(ids[n]) * C;
      const T* src = dout + size_t(n) * C;
      for (int c = c0; c < c1; c++) dst[c] += load(src[c]);
    }
  }
}

#define DSV3_EMBEDDING_INSTANTIATE(T)                                               \
  template void embedding_forward<T>(T*, const int32_t*, const T*, int, int);       \
  template void embedding_backward<T>(accum_t<T>*, const T*, const int32_t*, int, int);
DSV3_EMBEDDING_INSTANTIATE(float)
DSV3_EMBEDDING_INSTANTIATE(double)
DSV3_EMBEDDING_INSTANTIATE(bf16_t)
DSV3_EMBEDDING_INSTANTIATE(f16_t)

}  // namespace cpu

void embedding_forward(const Exec& ex, const Tensor& out, const Tensor& ids, const Tensor& table,
                       int N, int C) {
  const char* op = "embedding_forward";
  profile::Scope prof(op);
  check_device(ex, op, {{"out", out}, {"ids", ids}, {"table", table}});
  check_arg(op, "out", out, table.dtype, size_t(N) * C);
  check_arg(op, "ids", ids, DType::I32, size_t(N));
  if (ex.device == Device::CUDA) return cuda::embedding_forward(ex, out, ids, table, N, C);
  dispatch_float(table.dtype, op, [&]<typename T>() {
    cpu::embedding_forward<T>(out.as<T>(), ids.as<int32_t>(), table.as<T>(), N, C);
  });
}

void embedding_backward(const Exec& ex, const Tensor& dtable, const Tensor& dout,
                        const Tensor& ids, int N, int C) {
  const char* op = "embedding_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"dtable", dtable}, {"dout", dout}, {"ids", ids}});
  check_arg(op, "dout", dout, dout.dtype, size_t(N) * C);
  check_arg(op, "dtable", dtable, accum_dtype(dout.dtype), size_t(C));
  check_arg(op, "ids", ids, DType::I32, size_t(N));
  if (ex.device == Device::CUDA) return cuda::embedding_backward(ex, dtable, dout, ids, N, C);
  dispatch_float(dout.dtype, op, [&]<typename T>() {
    cpu::embedding_backward<T>(dtable.as<accum_t<T>>(), dout.as<T>(), ids.as<int32_t>(), N, C);
  });
}

}  // namespace dsv3
