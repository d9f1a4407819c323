// Rotary position embedding, INTERLEAVED as DeepSeek: pairs (x0,x1), (x2,x3), ... rotate by
// angle pos * freq[i]. YaRN (factor > 1) blends each frequency between freq/factor and freq with
// a linear ramp between the correction dims of beta_fast and beta_slow, and multiplies the
// attention softmax scale by mscale^2, mscale = 0.1 * mscale_cfg * ln(factor) + 1.
#pragma once
#include "backend/backend.h"

namespace dsv3 {

struct RopeParams {
  int dim = 64;                 // rotary width per head (qk_rope_head_dim), even
  double theta = 10000.0;
  double factor = 1.0;          // YaRN scaling factor; 1 = plain RoPE
  int original_max_pos = 4096;  // context the model was pre-trained on
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double mscale = 1.0;          // deepseek "mscale" (== mscale_all_dim in HF configs)
  bool yarn() const { return factor > 1.0; }
};

// freqs[i], i < dim/2, after YaRN blending.
void rope_frequencies(double* freqs, const RopeParams& p);
// Multiplier for the softmax scale: mscale^2 with YaRN, else 1.
double rope_softmax_scale_multiplier(const RopeParams& p);

// Where the rotary slices sit: for token n (position n % T) and head h the rotated vector starts
// at x + n*row_stride + h*head_stride + offset and is `dim` wide.
struct RopeLayout {
  int N, T, heads, row_stride, head_stride, offset, dim;
};

namespace cpu {
template <typename A>
void rope_tables(A* cos, A* sin, int seq_len, const RopeParams& p);  // each (seq_len, dim/2)
// x in place; the tables are in the accumulation dtype of T.
template <typename T>
void rope_forward(T* x, const accum_t<T>* cos, const accum_t<T>* sin, RopeLayout l);
// In place on the gradient: applies the inverse rotation (not +=; rotation is orthogonal).
template <typename T>
void rope_backward(T* dx, const accum_t<T>* cos, const accum_t<T>* sin, RopeLayout l);
// Token n at its own position positions[n] instead of n % T (decoding: rows of several
// sequences at different offsets).
template <typename T>
void rope_forward_at(T* x, const accum_t<T>* cos, const accum_t<T>* sin, const int32_t* positions,
                     RopeLayout l);
}  // namespace cpu
// cos, sin: (seq_len, dim/2) in an accumulation dtype (f32 or f64); angles computed in double.
void rope_tables(const Exec& ex, const Tensor& cos, const Tensor& sin, int seq_len,
                 const RopeParams& p);
// x (T, in place) with tables in accum_dtype(x.dtype).
void rope_forward(const Exec& ex, const Tensor& x, const Tensor& cos, const Tensor& sin,
                  RopeLayout l);
void rope_backward(const Exec& ex, const Tensor& dx, const Tensor& cos, const Tensor& sin,
                   RopeLayout l);
// Inference: token n rotated by its position positions[n] (i32 (N), each < l.T, the tables' rows).
void rope_forward_at(const Exec& ex, const Tensor& x, const Tensor& cos, const Tensor& sin,
                     const Tensor& positions, RopeLayout l);

}  // namespace dsv3
