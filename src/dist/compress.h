// Gradient compression with error feedback (P6): what each rank sends of a gradient bucket, and
// what it keeps back for the next step. Plain functions over host fp32 arrays, so the error
// bound is testable without MPI (tests/cpp/test_dist_units.cpp).
//
// Error feedback (Seide et al. 2014; Karimireddy et al. 2019): each step compresses
// v = g + residual and keeps residual = v - decompress(compress(v)). Over T steps the sum of
// what was sent equals the sum of the true gradients minus the last residual, so the error of
// the accumulated update stays bounded by one residual instead of growing with T:
//   int8:  |residual| <= scale / 2 elementwise, scale = max|v| / 127 of the last step's piece;
//   top-k: |residual| <= the largest |v| not sent in the last step (the (k+1)-th largest).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dsv3::dist {

// v = g + residual over n elements; one scale = max|v| / 127 (1 when v is all zero);
// q = round(v / scale) in [-127, 127]; residual = v - q * scale. Returns the scale.
float int8_compress(const float* g, float* residual, size_t n, int8_t* q);
// out[i] += q[i] * scale
void int8_accumulate(float* out, const int8_t* q, float scale, size_t n);

// Entries sent per bucket of n: ceil(ratio * n), at least 1.
size_t topk_count(size_t n, double ratio);
// v = g + residual; the k entries of largest |v| (ties: lower index first) go to idx/val in
// index order; residual = v with those entries zeroed.
void topk_compress(const float* g, float* residual, size_t n, size_t k, uint32_t* idx,
                   float* val);
// out[idx[i]] += val[i]
void topk_accumulate(float* out, const uint32_t* idx, const float* val, size_t k);

}  // namespace dsv3::dist
