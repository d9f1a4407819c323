// Token embedding lookup: out[n] = table[ids[n]].
#pragma once
#include <cstdint>

#include "backend/backend.h"

namespace dsv3 {
namespace cpu {
template <typename T>
void embedding_forward(T* out, const int32_t* ids, const T* table, int N, int C);  // out (N,C)
template <typename T>
void embedding_backward(T* dtable, const T* dout, const int32_t* ids, int N, int C);  // +=
}  // namespace cpu
void embedding_forward(const Exec& ex, float* out, const int32_t* ids, const float* table, int N,
                       int C);
void embedding_backward(const Exec& ex, float* dtable, const float* dout, const int32_t* ids,
                        int N, int C);
}  // namespace dsv3
