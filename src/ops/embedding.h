// Token embedding lookup: out[n] = table[ids[n]]. T is the compute dtype of the table and the
// activations; the table's gradient is in the accumulation dtype (fp32, or fp64 for the oracle).
#pragma once
#include "backend/backend.h"

namespace dsv3 {
namespace cpu {
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int N, int C);  // out (N,C)
template <typename T>
void embedding_backward(accum_t<T>* dtable, const T* dout, const int32_t* ids, int N, int C);  // +=
}  // namespace cpu
// out (N,C) T, ids (N) i32, table (V,C) T.
void embedding_forward(const Exec& ex, const Tensor& out, const Tensor& ids, const Tensor& table,
                       int N, int C);
// dtable (V,C) accum +=, dout (N,C) T.
void embedding_backward(const Exec& ex, const Tensor& dtable, const Tensor& dout,
                        const Tensor& ids, int N, int C);
}  // namespace dsv3
