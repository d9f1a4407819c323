// Token embedding: out[n] = table[ids[n]]; the backward scatters dout rows back into the table.
#include "ops/embedding.h"

#include <omp.h>

#include <algorithm>
#include <cstddef>

namespace dsv3 {
namespace cpu {

// Rows are copied in parallel once the work is worth a thread team (~16K elements).
constexpr size_t kParallelWork = 16384;

template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int N, int C) {
#pragma omp parallel for schedule(static) if (size_t(N) * C > kParallelWork)
  for (int n = 0; n < N; n++) {
    const T* src = table + size_t(ids[n]) * C;
    T* dst = out + size_t(n) * C;
    for (int c = 0; c < C; c++) dst[c] = src[c];
  }
}

// Repeated ids make a scatter over tokens racy, so each thread owns a slice of the C columns and
// walks all tokens in order: every dtable element is summed in token order whatever the number
// of threads, with no atomics, and the result is bit-identical across thread counts.
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int N, int C) {
#pragma omp parallel if (size_t(N) * C > kParallelWork)
  {
    int nt = omp_get_num_threads(), t = omp_get_thread_num();
    // Slices of whole 16-element groups keep each thread's stores on its own cache lines.
    int groups = (C + 15) / 16;
    int c0 = std::min(C, groups * t / nt * 16), c1 = std::min(C, groups * (t + 1) / nt * 16);
    for (int n = 0; n < N; n++) {
      T* dst = dtable + size_t(ids[n]) * C;
      const T* src = dout + size_t(n) * C;
      for (int c = c0; c < c1; c++) dst[c] += src[c];
    }
  }
}

template void embedding_forward<float>(float*, const int32_t*, const float*, int, int);
template void embedding_forward<double>(double*, const int32_t*, const double*, int, int);
template void embedding_backward<float>(float*, const float*, const int32_t*, int, int);
template void embedding_backward<double>(double*, const double*, const int32_t*, int, int);

}  // namespace cpu

void embedding_forward(const Exec& ex, float* out, const int32_t* ids, const float* table, int N,
                       int C) {
  require_cpu(ex, "embedding_forward");
  cpu::embedding_forward(out, ids, table, N, C);
}

void embedding_backward(const Exec& ex, float* dtable, const float* dout, const int32_t* ids,
                        int N, int C) {
  require_cpu(ex, "embedding_backward");
  cpu::embedding_backward(dtable, dout, ids, N, C);
}

}  // namespace dsv3
