// Gradient compression with error feedback (P6): what each rank sends of a gradient bucket, and
// what it keeps back for the next step. Plain functions over host fp32 arrays, so the error
// bound is testable without MPI (tests/cpp/test_dist_units.cpp).
//
// Error feedback (Seide et al. 2014; Karimireddy et al. 2019): each step compresses
// v = g + residual and keeps residual = v - decompress(compress(v)). Over T steps the sum of
// what was sent equals the sum of the true gradients minus the last residual, so the error of
// the accumulated update stays bounded by one residual instead of growing with T:
//   int8:  |residual| <= scale / 2 elementwise, scale = max|v| / 127 of the element's block of
//          kInt8Block (128, DeepSeek-V3's FP8 tile) in the last step;
//   top-k: |residual| <= the largest |v| not sent in the last step (the (k+1)-th largest).
#pragma once
#include <cstddef>
#include <cstdint>

namespace dsv3::dist {

// int8 scales: one per block of kInt8Block elements (a scale per bucket alone lets a tensor with
// small gradients round to zero next to one with large ones: measured in docs/parallel.md).
constexpr size_t kInt8Block = 128;
inline size_t int8_scales(size_t n) { return (n + kInt8Block - 1) / kInt8Block; }
// v = g + residual over n elements; per block a scale = max|v| / 127 (1 when the block is all
// zero) into scales[int8_scales(n)]; q = round(v / scale) in [-127, 127]; residual = v - q scale.
void int8_compress(const float* g, float* residual, size_t n, int8_t* q, float* scales);
// out[i] += q[i] * scale of i's block
void int8_accumulate(float* out, const int8_t* q, const float* scales, size_t n);

// Entries sent per bucket of n: ceil(ratio * n), at least 1.
size_t topk_count(size_t n, double ratio);
// v = g + residual; the k entries of largest |v| (ties: lower index first) go to idx/val in
// index order; residual = v with those entries zeroed.
void topk_compress(const float* g, float* residual, size_t n, size_t k, uint32_t* idx,
                   float* val);
// out[idx[i]] += val[i]
void topk_accumulate(float* out, const uint32_t* idx, const float* val, size_t k);

}  // namespace dsv3::dist
