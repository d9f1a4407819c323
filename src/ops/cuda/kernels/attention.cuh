// Causal flash attention (ops/attention.h) for MLA's unequal head widths (V3: q/k 192, v 128).
// No T x T matrix is ever in memory: the forward keeps a running max and sum per query row
// (online softmax) and saves only the log-sum-exp per row, lse (B, H, T) fp32; the backward
// recomputes P from it. The backward runs as two kernels, one over query tiles (dq) and one over
// key tiles (dk, dv), each summing in a fixed order: no atomics, deterministic results.
//
// Two families, chosen by plan_attention (launch.h):
// - tensor core (bf16/f16): 64-row query tiles and 64-key tiles, 4 warps of 16 rows, mma.sync
//   m16n8k16 with fp32 accumulators; P and dS go from accumulators to A fragments in registers
//   (the C-fragment layout of two n8 tiles is the A-fragment layout of one k16 step). Head widths
//   padded with zeros in shared memory to the instantiated (DQK, DV): (64,64), (128,128), (192,128).
// - generic (f32, wider heads, or forced): fp32 CUDA cores, one warp per row, 32-row tiles of
//   the other side through shared memory, each lane owning columns lane, lane + 32, ...
// Both round P (and dS) to the storage dtype where the CPU kernel stores them.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

struct AttnGeom {
  int B, T, H, dqk, dv;
  float scale;
};

// Row pointers: token t of batch b, head h. q/k rows are H*dqk wide, v/out rows H*dv.
DSV3_DEVICE size_t attn_row(const AttnGeom& s, int b, int t, int h, int width) {
  return (size_t(b) * s.T + t) * size_t(s.H) * width + size_t(h) * width;
}

// Rounds v to the storage dtype and back (where the CPU kernel stores an intermediate).
template <typename T>
DSV3_DEVICE float round_to(float v) {
  return ld(st<T>(v));
}

// ================================ generic kernels ===============================================

// kAttnGenRows rows per block (one warp each), kAttnGenTile rows of the other side per
// shared-memory tile, each lane owning up to kAttnGenMaxLane columns (launch.h).
constexpr int kGenRows = kAttnGenRows, kGenTile = kAttnGenTile, kGenMaxLane = kAttnGenMaxLane;

// Rows [r0, r0 + n) of one head of a (B, T, H, width) tensor into S[r * stride + c] as fp32;
// rows past T are zero.
template <typename T>
DSV3_DEVICE void gen_stage_rows(float* S, int stride, const T* x, const AttnGeom& s, int b, int h,
                                int r0, int n, int width) {
  for (int i = int(threadIdx.x); i < n * width; i += int(blockDim.x)) {
    const int r = i / width, c = i % width;
    S[r * stride + c] = r0 + r < s.T ? ld(x[attn_row(s, b, r0 + r, h, width) + c]) : 0.0f;
  }
}

template <typename T>
__global__ void attn_fwd_generic(T* out, float* lse, const T* q, const T* k, const T* v, AttnGeom s) {
  DSV3_DYNAMIC_SMEM(smem);
  const int ldk = s.dqk + 1, ldv = s.dv + 1;
  float* Ks = reinterpret_cast<float*>(smem);
  float* Vs = Ks + kGenTile * ldk;
  float* Qs = Vs + kGenTile * ldv;
  const int bh = int(blockIdx.y), b = bh / s.H, h = bh % s.H, q0 = int(blockIdx.x) * kGenRows;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u), i = q0 + warp;
  gen_stage_rows(Qs, s.dqk, q, s, b, h, q0, kGenRows, s.dqk);
  float o[kGenMaxLane] = {};
  float m = -INFINITY, l = 0;
  const int last = imin(s.T - 1, q0 + kGenRows - 1);
  for (int j0 = 0; j0 <= last; j0 += kGenTile) {
    __syncthreads();  // the previous tile is consumed (and Qs is staged)
    gen_stage_rows(Ks, ldk, k, s, b, h, j0, kGenTile, s.dqk);
    gen_stage_rows(Vs, ldv, v, s, b, h, j0, kGenTile, s.dv);
    __syncthreads();
    if (i < s.T) {  // uniform across the warp
      const int j = j0 + lane;
      float sj = -INFINITY;
      if (j <= i) {
        float dot = 0;
        for (int d = 0; d < s.dqk; d++) dot += Qs[warp * s.dqk + d] * Ks[lane * ldk + d];
        sj = dot * s.scale;
      }
      const float mn = fmaxf(m, warp_max(sj));  // finite: key 0 is in the first tile
      const float p = j <= i ? expf(sj - mn) : 0.0f;
      const float alpha = expf(m - mn);
      l = l * alpha + warp_sum(p);
      const float pr = round_to<T>(p);  // the operand of P v, as stored by the CPU kernel
      for (int cs = 0; cs < kGenMaxLane; cs++) o[cs] *= alpha;
      for (int jj = 0; jj < kGenTile; jj++) {
        const float pj = __shfl_sync(0xffffffffu, pr, jj);
        for (int cs = 0; cs < kGenMaxLane; cs++) {
          const int c = lane + 32 * cs;
          if (c < s.dv) o[cs] += pj * Vs[jj * ldv + c];
        }
      }
      m = mn;
    }
  }
  if (i < s.T) {
    const float inv = 1.0f / l;
    T* orow = out + attn_row(s, b, i, h, s.dv);
    for (int cs = 0; cs < kGenMaxLane; cs++) {
      const int c = lane + 32 * cs;
      if (c < s.dv) orow[c] = st<T>(o[cs] * inv);
    }
    if (lane == 0) lse[size_t(bh) * s.T + i] = m + logf(l);
  }
}

// D[bh][t] = dout . out (fp32), one warp per row.
template <typename T>
__global__ void attn_bwd_dot(float* D, const T* dout, const T* out, AttnGeom s) {
  const int warps = int(blockDim.x >> 5), lane = int(threadIdx.x & 31u);
  const size_t rows = size_t(s.B) * s.H * s.T;
  for (size_t r = size_t(blockIdx.x) * warps + (threadIdx.x >> 5); r < rows;
       r += size_t(gridDim.x) * warps) {
    const int t = int(r % s.T), bh = int(r / s.T), b = bh / s.H, h = bh % s.H;
    const size_t o = attn_row(s, b, t, h, s.dv);
    float acc = 0;
    for (int c = lane; c < s.dv; c += 32) acc += ld(dout[o + c]) * ld(out[o + c]);
    acc = warp_sum(acc);
    if (lane == 0) D[r] = acc;
  }
}

// dq += scale * sum_j P_ij (dP_ij - D_i) k_j, one warp per query row.
template <typename T>
__global__ void attn_bwd_dq_generic(T* dq, const T* q, const T* k, const T* v, const T* dout,
                                    const float* lse, const float* D, AttnGeom s) {
  DSV3_DYNAMIC_SMEM(smem);
  const int ldk = s.dqk + 1, ldv = s.dv + 1;
  float* Ks = reinterpret_cast<float*>(smem);
  float* Vs = Ks + kGenTile * ldk;
  float* Qs = Vs + kGenTile * ldv;
  float* dOs = Qs + kGenRows * s.dqk;
  const int bh = int(blockIdx.y), b = bh / s.H, h = bh % s.H, q0 = int(blockIdx.x) * kGenRows;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u), i = q0 + warp;
  gen_stage_rows(Qs, s.dqk, q, s, b, h, q0, kGenRows, s.dqk);
  gen_stage_rows(dOs, s.dv, dout, s, b, h, q0, kGenRows, s.dv);
  const float lse_i = i < s.T ? lse[size_t(bh) * s.T + i] : 0.0f;
  const float D_i = i < s.T ? D[size_t(bh) * s.T + i] : 0.0f;
  float acc[kGenMaxLane] = {};
  const int last = imin(s.T - 1, q0 + kGenRows - 1);
  for (int j0 = 0; j0 <= last; j0 += kGenTile) {
    __syncthreads();
    gen_stage_rows(Ks, ldk, k, s, b, h, j0, kGenTile, s.dqk);
    gen_stage_rows(Vs, ldv, v, s, b, h, j0, kGenTile, s.dv);
    __syncthreads();
    if (i < s.T) {
      const int j = j0 + lane;
      float ds = 0;
      if (j <= i) {
        float sd = 0, dp = 0;
        for (int d = 0; d < s.dqk; d++) sd += Qs[warp * s.dqk + d] * Ks[lane * ldk + d];
        for (int c = 0; c < s.dv; c++) dp += dOs[warp * s.dv + c] * Vs[lane * ldv + c];
        const float p = round_to<T>(expf(sd * s.scale - lse_i));
        ds = round_to<T>(s.scale * p * (dp - D_i));
      }
      for (int jj = 0; jj < kGenTile; jj++) {
        const float dsj = __shfl_sync(0xffffffffu, ds, jj);
        for (int cs = 0; cs < kGenMaxLane; cs++) {
          const int c = lane + 32 * cs;
          if (c < s.dqk) acc[cs] += dsj * Ks[jj * ldk + c];
        }
      }
    }
  }
  if (i < s.T) {
    T* row = dq + attn_row(s, b, i, h, s.dqk);
    for (int cs = 0; cs < kGenMaxLane; cs++) {
      const int c = lane + 32 * cs;
      if (c < s.dqk) row[c] = st<T>(ld(row[c]) + acc[cs]);
    }
  }
}

// dk += sum_i dS_ij q_i, dv += sum_i P_ij dout_i, one warp per key row.
template <typename T>
__global__ void attn_bwd_dkdv_generic(T* dk, T* dv, const T* q, const T* k, const T* v,
                                      const T* dout, const float* lse, const float* D, AttnGeom s) {
  DSV3_DYNAMIC_SMEM(smem);
  const int ldq = s.dqk + 1, ldo = s.dv + 1;
  float* Qs = reinterpret_cast<float*>(smem);      // the query tile (kGenTile rows)
  float* dOs = Qs + kGenTile * ldq;
  float* Ks = dOs + kGenTile * ldo;                // the block's keys (kGenRows rows)
  float* Vs = Ks + kGenRows * s.dqk;
  float* Ls = Vs + kGenRows * s.dv;
  float* Ds = Ls + kGenTile;
  const int bh = int(blockIdx.y), b = bh / s.H, h = bh % s.H, k0 = int(blockIdx.x) * kGenRows;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u), tid = int(threadIdx.x);
  const int nt = int(blockDim.x), j = k0 + warp;
  gen_stage_rows(Ks, s.dqk, k, s, b, h, k0, kGenRows, s.dqk);
  gen_stage_rows(Vs, s.dv, v, s, b, h, k0, kGenRows, s.dv);
  float ak[kGenMaxLane] = {}, av[kGenMaxLane] = {};
  for (int i0 = k0 / kGenTile * kGenTile; i0 < s.T; i0 += kGenTile) {
    __syncthreads();
    gen_stage_rows(Qs, ldq, q, s, b, h, i0, kGenTile, s.dqk);
    gen_stage_rows(dOs, ldo, dout, s, b, h, i0, kGenTile, s.dv);
    for (int r = tid; r < kGenTile; r += nt) {
      Ls[r] = i0 + r < s.T ? lse[size_t(bh) * s.T + i0 + r] : 0.0f;
      Ds[r] = i0 + r < s.T ? D[size_t(bh) * s.T + i0 + r] : 0.0f;
    }
    __syncthreads();
    if (j < s.T) {
      const int i = i0 + lane;
      float p = 0, ds = 0;
      if (i >= j && i < s.T) {
        float sd = 0, dp = 0;
        for (int d = 0; d < s.dqk; d++) sd += Qs[lane * ldq + d] * Ks[warp * s.dqk + d];
        for (int c = 0; c < s.dv; c++) dp += dOs[lane * ldo + c] * Vs[warp * s.dv + c];
        p = round_to<T>(expf(sd * s.scale - Ls[lane]));
        ds = round_to<T>(s.scale * p * (dp - Ds[lane]));
      }
      for (int ii = 0; ii < kGenTile; ii++) {
        const float pi = __shfl_sync(0xffffffffu, p, ii), dsi = __shfl_sync(0xffffffffu, ds, ii);
        for (int cs = 0; cs < kGenMaxLane; cs++) {
          const int c = lane + 32 * cs;
          if (c < s.dv) av[cs] += pi * dOs[ii * ldo + c];
          if (c < s.dqk) ak[cs] += dsi * Qs[ii * ldq + c];
        }
      }
    }
  }
  if (j < s.T) {
    T* krow = dk + attn_row(s, b, j, h, s.dqk);
    T* vrow = dv + attn_row(s, b, j, h, s.dv);
    for (int cs = 0; cs < kGenMaxLane; cs++) {
      const int c = lane + 32 * cs;
      if (c < s.dqk) krow[c] = st<T>(ld(krow[c]) + ak[cs]);
      if (c < s.dv) vrow[c] = st<T>(ld(vrow[c]) + av[cs]);
    }
  }
}

// ================================ tensor-core kernels ===========================================

constexpr int kTcBM = kAttnTcRows, kTcBN = kAttnTcRows, kTcThreads = kAttnTcThreads;

template <int DQK, int DV>
struct TcLayout {  // padded row strides (shared memory sizes: launch.cpp attention_smem_*)
  static constexpr int LDQ = DQK + kAttnPad, LDV = DV + kAttnPad, LDVT = kTcBN + kAttnPad;
};

// Stages rows [r0, r0 + n) of one head of a (B, T, H, width) tensor into S[n][ld] (width padded
// with zeros to W, rows past T zero).
template <int W, typename T>
DSV3_DEVICE void tc_stage_rows(T* S, int ld, const T* x, const AttnGeom& s, int b, int h, int r0,
                               int n, int width) {
  for (int i = int(threadIdx.x); i < n * W; i += int(blockDim.x)) {
    const int r = i / W, d = i % W;
    S[r * ld + d] = r0 + r < s.T && d < width ? x[attn_row(s, b, r0 + r, h, width) + d] : st<T>(0.0f);
  }
}

// A fragment (16 rows at `rows`, k16 step at column k) from a row-major [row][k] tile.
template <typename T>
DSV3_DEVICE void tc_frag_a(uint32_t (&a)[4], const T* rows, int ld, int k) {
  const int lane = int(threadIdx.x & 31u), g = lane >> 2, t = lane & 3;
  const T* p = rows + g * ld + k + 2 * t;
  a[0] = load_u32(p);
  a[1] = load_u32(p + 8 * ld);
  a[2] = load_u32(p + 8);
  a[3] = load_u32(p + 8 * ld + 8);
}
// B fragment (8 columns n, k16 step at k) from a tile stored [n][k] (k contiguous).
template <typename T>
DSV3_DEVICE void tc_frag_b_nk(uint32_t (&b)[2], const T* cols, int ld, int k) {
  const int lane = int(threadIdx.x & 31u), g = lane >> 2, t = lane & 3;
  const T* p = cols + g * ld + k + 2 * t;
  b[0] = load_u32(p);
  b[1] = load_u32(p + 8);
}
// B fragment from a tile stored [k][n] (n contiguous): pairs along k are a row apart.
template <typename T>
DSV3_DEVICE void tc_frag_b_kn(uint32_t (&b)[2], const T* tile, int ld, int k, int n) {
  const int lane = int(threadIdx.x & 31u), g = lane >> 2, t = lane & 3;
  const T* p = tile + (k + 2 * t) * ld + n + g;
  b[0] = load_pair(p, ld);
  b[1] = load_pair(p + 8 * ld, ld);
}
// The A fragment of k16 step kc from the accumulators of n8 tiles 2kc and 2kc+1.
template <typename T, int N8>
DSV3_DEVICE void tc_acc_to_a(uint32_t (&a)[4], float (&acc)[N8][4], int kc) {
  a[0] = pack2<T>(acc[2 * kc][0], acc[2 * kc][1]);
  a[1] = pack2<T>(acc[2 * kc][2], acc[2 * kc][3]);
  a[2] = pack2<T>(acc[2 * kc + 1][0], acc[2 * kc + 1][1]);
  a[3] = pack2<T>(acc[2 * kc + 1][2], acc[2 * kc + 1][3]);
}

// acc (16 x 8 N8) += A B^T over K columns: A the warp's 16 rows at `a` (stride lda), B stored
// [n][k] with its 8 N8 rows at `b` (stride ldb). S = Q K^T, dP = dO V^T and their transposes.
template <typename T, int K, int N8>
DSV3_DEVICE void tc_mma_rows(float (&acc)[N8][4], const T* a, int lda, const T* b, int ldb) {
  DSV3_UNROLL
  for (int ks = 0; ks < K / 16; ks++) {
    uint32_t af[4];
    tc_frag_a(af, a, lda, ks * 16);
    DSV3_UNROLL
    for (int j = 0; j < N8; j++) {
      uint32_t bb[2];
      tc_frag_b_nk(bb, b + j * 8 * ldb, ldb, ks * 16);
      mma_16816<T>(acc[j], af, bb);
    }
  }
}
// acc (16 x 8 N8) += P B, P (16 x 8 P8) in accumulators (rounded to T on the way), B stored
// [k][n] at `b` (stride ldb): dq += dS K, dk += dS^T Q, dv += P^T dO.
template <typename T, int P8, int N8>
DSV3_DEVICE void tc_mma_acc_kn(float (&acc)[N8][4], float (&p)[P8][4], const T* b, int ldb) {
  DSV3_UNROLL
  for (int kc = 0; kc < P8 / 2; kc++) {
    uint32_t a[4];
    tc_acc_to_a<T>(a, p, kc);
    DSV3_UNROLL
    for (int jd = 0; jd < N8; jd++) {
      uint32_t bb[2];
      tc_frag_b_kn(bb, b, ldb, kc * 16, jd * 8);
      mma_16816<T>(acc[jd], a, bb);
    }
  }
}

template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(kTcThreads)
    attn_fwd_tc(T* out, float* lse, const T* q, const T* k, const T* v, AttnGeom s) {
  using Lt = TcLayout<DQK, DV>;
  DSV3_DYNAMIC_SMEM(smem);
  T* Qs = reinterpret_cast<T*>(smem);
  T* Ks = Qs + kTcBM * Lt::LDQ;
  T* Vt = Ks + kTcBN * Lt::LDQ;  // V transposed: [DV][key]
  const int bh = int(blockIdx.y), b = bh / s.H, h = bh % s.H, q0 = int(blockIdx.x) * kTcBM;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u), g = lane >> 2, t = lane & 3;
  tc_stage_rows<DQK>(Qs, Lt::LDQ, q, s, b, h, q0, kTcBM, s.dqk);
  __syncthreads();
  uint32_t qf[DQK / 16][4];
  DSV3_UNROLL
  for (int ks = 0; ks < DQK / 16; ks++) tc_frag_a(qf[ks], Qs + warp * 16 * Lt::LDQ, Lt::LDQ, ks * 16);
  float o[DV / 8][4] = {};
  float mrow[2] = {-INFINITY, -INFINITY}, lrow[2] = {0.0f, 0.0f};
  const int row0 = q0 + warp * 16 + g;  // rows row0 (accumulators 0, 1) and row0 + 8 (2, 3)
  const int tiles = (imin(s.T, q0 + kTcBM) - 1) / kTcBN + 1;
  for (int kt = 0; kt < tiles; kt++) {
    const int k0 = kt * kTcBN;
    __syncthreads();  // the previous tile is consumed
    tc_stage_rows<DQK>(Ks, Lt::LDQ, k, s, b, h, k0, kTcBN, s.dqk);
    for (int i = int(threadIdx.x); i < kTcBN * DV; i += int(blockDim.x)) {
      const int r = i / DV, c = i % DV;
      Vt[c * Lt::LDVT + r] = k0 + r < s.T && c < s.dv ? v[attn_row(s, b, k0 + r, h, s.dv) + c] : st<T>(0.0f);
    }
    __syncthreads();
    float sc[kTcBN / 8][4] = {};
    DSV3_UNROLL
    for (int ks = 0; ks < DQK / 16; ks++)
      DSV3_UNROLL
      for (int j = 0; j < kTcBN / 8; j++) {
        uint32_t bb[2];
        tc_frag_b_nk(bb, Ks + j * 8 * Lt::LDQ, Lt::LDQ, ks * 16);
        mma_16816<T>(sc[j], qf[ks], bb);
      }
    float mt[2] = {-INFINITY, -INFINITY};
    DSV3_UNROLL
    for (int j = 0; j < kTcBN / 8; j++)
      DSV3_UNROLL
      for (int e = 0; e < 4; e++) {
        const int row = row0 + 8 * (e >> 1), key = k0 + j * 8 + 2 * t + (e & 1);
        const float x = key <= row && key < s.T ? sc[j][e] * s.scale : -INFINITY;
        sc[j][e] = x;
        mt[e >> 1] = fmaxf(mt[e >> 1], x);
      }
    float mn[2], alpha[2], rs[2] = {0.0f, 0.0f};
    DSV3_UNROLL
    for (int r = 0; r < 2; r++) {  // the 4 lanes of a group hold one row's 64 keys
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 1));
      mt[r] = fmaxf(mt[r], __shfl_xor_sync(0xffffffffu, mt[r], 2));
      mn[r] = fmaxf(mrow[r], mt[r]);
      alpha[r] = mn[r] == -INFINITY ? 1.0f : expf(mrow[r] - mn[r]);
    }
    DSV3_UNROLL
    for (int j = 0; j < kTcBN / 8; j++)
      DSV3_UNROLL
      for (int e = 0; e < 4; e++) {
        const float p = sc[j][e] == -INFINITY ? 0.0f : expf(sc[j][e] - mn[e >> 1]);
        sc[j][e] = p;
        rs[e >> 1] += p;
      }
    DSV3_UNROLL
    for (int r = 0; r < 2; r++) {
      rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 1);
      rs[r] += __shfl_xor_sync(0xffffffffu, rs[r], 2);
      lrow[r] = lrow[r] * alpha[r] + rs[r];
      mrow[r] = mn[r];
    }
    DSV3_UNROLL
    for (int jd = 0; jd < DV / 8; jd++)
      DSV3_UNROLL
      for (int e = 0; e < 4; e++) o[jd][e] *= alpha[e >> 1];
    DSV3_UNROLL
    for (int kc = 0; kc < kTcBN / 16; kc++) {
      uint32_t a[4];
      tc_acc_to_a<T>(a, sc, kc);
      DSV3_UNROLL
      for (int jd = 0; jd < DV / 8; jd++) {
        uint32_t bb[2];
        tc_frag_b_nk(bb, Vt + jd * 8 * Lt::LDVT, Lt::LDVT, kc * 16);
        mma_16816<T>(o[jd], a, bb);
      }
    }
  }
  const float inv[2] = {lrow[0] > 0 ? 1.0f / lrow[0] : 0.0f, lrow[1] > 0 ? 1.0f / lrow[1] : 0.0f};
  DSV3_UNROLL
  for (int jd = 0; jd < DV / 8; jd++)
    DSV3_UNROLL
    for (int e = 0; e < 4; e++) {
      const int row = row0 + 8 * (e >> 1), c = jd * 8 + 2 * t + (e & 1);
      if (row < s.T && c < s.dv) out[attn_row(s, b, row, h, s.dv) + c] = st<T>(o[jd][e] * inv[e >> 1]);
    }
  if (t == 0)
    for (int r = 0; r < 2; r++)
      if (row0 + 8 * r < s.T) lse[size_t(bh) * s.T + row0 + 8 * r] = mrow[r] + logf(lrow[r]);
}

// dq += dS k over the key tiles up to the diagonal; one block per 64 query rows.
template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(kTcThreads)
    attn_bwd_dq_tc(T* dq, const T* q, const T* k, const T* v, const T* dout, const float* lse,
                   const float* D, AttnGeom s) {
  using Lt = TcLayout<DQK, DV>;
  DSV3_DYNAMIC_SMEM(smem);
  T* Qs = reinterpret_cast<T*>(smem);
  T* dOs = Qs + kTcBM * Lt::LDQ;
  T* Ks = dOs + kTcBM * Lt::LDV;
  T* Vs = Ks + kTcBN * Lt::LDQ;
  const int bh = int(blockIdx.y), b = bh / s.H, h = bh % s.H, q0 = int(blockIdx.x) * kTcBM;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u), g = lane >> 2, t = lane & 3;
  tc_stage_rows<DQK>(Qs, Lt::LDQ, q, s, b, h, q0, kTcBM, s.dqk);
  tc_stage_rows<DV>(dOs, Lt::LDV, dout, s, b, h, q0, kTcBM, s.dv);
  const int row0 = q0 + warp * 16 + g;
  float lr[2], dr[2];
  for (int r = 0; r < 2; r++) {
    const int row = row0 + 8 * r;
    lr[r] = row < s.T ? lse[size_t(bh) * s.T + row] : 0.0f;
    dr[r] = row < s.T ? D[size_t(bh) * s.T + row] : 0.0f;
  }
  float acc[DQK / 8][4] = {};
  const int tiles = (imin(s.T, q0 + kTcBM) - 1) / kTcBN + 1;
  for (int kt = 0; kt < tiles; kt++) {
    const int k0 = kt * kTcBN;
    __syncthreads();
    tc_stage_rows<DQK>(Ks, Lt::LDQ, k, s, b, h, k0, kTcBN, s.dqk);
    tc_stage_rows<DV>(Vs, Lt::LDV, v, s, b, h, k0, kTcBN, s.dv);
    __syncthreads();
    float sc[kTcBN / 8][4] = {}, dp[kTcBN / 8][4] = {};
    tc_mma_rows<T, DQK>(sc, Qs + warp * 16 * Lt::LDQ, Lt::LDQ, Ks, Lt::LDQ);   // S
    tc_mma_rows<T, DV>(dp, dOs + warp * 16 * Lt::LDV, Lt::LDV, Vs, Lt::LDV);   // dP
    DSV3_UNROLL
    for (int j = 0; j < kTcBN / 8; j++)
      DSV3_UNROLL
      for (int e = 0; e < 4; e++) {
        const int r = e >> 1, row = row0 + 8 * r, key = k0 + j * 8 + 2 * t + (e & 1);
        const bool ok = key <= row && key < s.T && row < s.T;
        const float p = ok ? round_to<T>(expf(sc[j][e] * s.scale - lr[r])) : 0.0f;
        sc[j][e] = ok ? s.scale * p * (dp[j][e] - dr[r]) : 0.0f;  // dS
      }
    tc_mma_acc_kn<T>(acc, sc, Ks, Lt::LDQ);  // dq += dS K
  }
  DSV3_UNROLL
  for (int jd = 0; jd < DQK / 8; jd++)
    DSV3_UNROLL
    for (int e = 0; e < 4; e++) {
      const int row = row0 + 8 * (e >> 1), c = jd * 8 + 2 * t + (e & 1);
      if (row < s.T && c < s.dqk) {
        T* p = dq + attn_row(s, b, row, h, s.dqk) + c;
        *p = st<T>(ld(*p) + acc[jd][e]);
      }
    }
}

// dk += dS^T q, dv += P^T dout over the query tiles from the diagonal on; one block per 64 keys.
template <typename T, int DQK, int DV>
__global__ void __launch_bounds__(kTcThreads)
    attn_bwd_dkdv_tc(T* dk, T* dv, const T* q, const T* k, const T* v, const T* dout,
                     const float* lse, const float* D, AttnGeom s) {
  using Lt = TcLayout<DQK, DV>;
  DSV3_DYNAMIC_SMEM(smem);
  T* Ks = reinterpret_cast<T*>(smem);
  T* Vs = Ks + kTcBN * Lt::LDQ;
  T* Qs = Vs + kTcBN * Lt::LDV;
  T* dOs = Qs + kTcBM * Lt::LDQ;
  float* Ls = reinterpret_cast<float*>(dOs + kTcBM * Lt::LDV);
  float* Ds = Ls + kTcBM;
  const int bh = int(blockIdx.y), b = bh / s.H, h = bh % s.H, kb0 = int(blockIdx.x) * kTcBN;
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u), g = lane >> 2, t = lane & 3;
  tc_stage_rows<DQK>(Ks, Lt::LDQ, k, s, b, h, kb0, kTcBN, s.dqk);
  tc_stage_rows<DV>(Vs, Lt::LDV, v, s, b, h, kb0, kTcBN, s.dv);
  const int key0 = kb0 + warp * 16 + g;  // keys key0 (accumulators 0, 1) and key0 + 8 (2, 3)
  float ak[DQK / 8][4] = {}, av[DV / 8][4] = {};
  for (int q0 = kb0 / kTcBM * kTcBM; q0 < s.T; q0 += kTcBM) {
    __syncthreads();
    tc_stage_rows<DQK>(Qs, Lt::LDQ, q, s, b, h, q0, kTcBM, s.dqk);
    tc_stage_rows<DV>(dOs, Lt::LDV, dout, s, b, h, q0, kTcBM, s.dv);
    for (int r = int(threadIdx.x); r < kTcBM; r += int(blockDim.x)) {
      Ls[r] = q0 + r < s.T ? lse[size_t(bh) * s.T + q0 + r] : 0.0f;
      Ds[r] = q0 + r < s.T ? D[size_t(bh) * s.T + q0 + r] : 0.0f;
    }
    __syncthreads();
    float sc[kTcBM / 8][4] = {}, dp[kTcBM / 8][4] = {};  // S^T and dP^T: keys x queries
    tc_mma_rows<T, DQK>(sc, Ks + warp * 16 * Lt::LDQ, Lt::LDQ, Qs, Lt::LDQ);
    tc_mma_rows<T, DV>(dp, Vs + warp * 16 * Lt::LDV, Lt::LDV, dOs, Lt::LDV);
    DSV3_UNROLL
    for (int j = 0; j < kTcBM / 8; j++)
      DSV3_UNROLL
      for (int e = 0; e < 4; e++) {
        const int key = key0 + 8 * (e >> 1), qi = j * 8 + 2 * t + (e & 1), row = q0 + qi;
        const bool ok = key <= row && row < s.T && key < s.T;
        const float p = ok ? round_to<T>(expf(sc[j][e] * s.scale - Ls[qi])) : 0.0f;
        dp[j][e] = ok ? s.scale * p * (dp[j][e] - Ds[qi]) : 0.0f;  // dS^T
        sc[j][e] = p;                                                // P^T
      }
    tc_mma_acc_kn<T>(av, sc, dOs, Lt::LDV);  // dv += P^T dO
    tc_mma_acc_kn<T>(ak, dp, Qs, Lt::LDQ);   // dk += dS^T Q
  }
  DSV3_UNROLL
  for (int e = 0; e < 4; e++) {
    const int key = key0 + 8 * (e >> 1);
    if (key >= s.T) continue;
    DSV3_UNROLL
    for (int jd = 0; jd < DQK / 8; jd++) {
      const int c = jd * 8 + 2 * t + (e & 1);
      if (c < s.dqk) {
        T* p = dk + attn_row(s, b, key, h, s.dqk) + c;
        *p = st<T>(ld(*p) + ak[jd][e]);
      }
    }
    DSV3_UNROLL
    for (int jd = 0; jd < DV / 8; jd++) {
      const int c = jd * 8 + 2 * t + (e & 1);
      if (c < s.dv) {
        T* p = dv + attn_row(s, b, key, h, s.dv) + c;
        *p = st<T>(ld(*p) + av[jd][e]);
      }
    }
  }
}

// ================================ run functions =================================================

template <typename L, typename T, int DQK, int DV>
void attention_forward_tc(const L& launch, T* out, float* lse, const T* q, const T* k, const T* v,
                          const AttnGeom& s, const AttentionPlan& p) {
  const dim3 grid(unsigned(ceil_div(size_t(s.T), kTcBM)), unsigned(s.B * s.H));
  launch(attn_fwd_tc<T, DQK, DV>, grid, dim3(kTcThreads), p.smem_fwd, out, lse, q, k, v, s);
}
template <typename L, typename T, int DQK, int DV>
void attention_backward_tc(const L& launch, T* dq, T* dk, T* dv, const T* dout, const T* q,
                           const T* k, const T* v, const float* lse, const float* D,
                           const AttnGeom& s, const AttentionPlan& p) {
  const dim3 grid(unsigned(ceil_div(size_t(s.T), kTcBM)), unsigned(s.B * s.H));
  launch(attn_bwd_dq_tc<T, DQK, DV>, grid, dim3(kTcThreads), p.smem_dq, dq, q, k, v, dout, lse, D, s);
  launch(attn_bwd_dkdv_tc<T, DQK, DV>, grid, dim3(kTcThreads), p.smem_dkdv, dk, dv, q, k, v, dout,
         lse, D, s);
}

// out (B,T,H,dv) overwritten, lse (B,H,T) fp32 saved for backward.
template <typename L, typename T>
void attention_forward_run(const L& launch, T* out, float* lse, const T* q, const T* k, const T* v,
                           const AttnGeom& s, const AttentionPlan& p) {
  if (s.B * s.T * s.H == 0) return;
  if constexpr (is_half_v<T>) {
    if (p.kind == AttentionPlan::TensorCore) {
      if (p.dqk_pad == 64) return attention_forward_tc<L, T, 64, 64>(launch, out, lse, q, k, v, s, p);
      if (p.dqk_pad == 128) return attention_forward_tc<L, T, 128, 128>(launch, out, lse, q, k, v, s, p);
      return attention_forward_tc<L, T, 192, 128>(launch, out, lse, q, k, v, s, p);
    }
  }
  const dim3 grid(unsigned(ceil_div(size_t(s.T), kGenRows)), unsigned(s.B * s.H));
  launch(attn_fwd_generic<T>, grid, dim3(32 * kGenRows), p.smem_fwd, out, lse, q, k, v, s);
}

// dq, dk, dv += gradients; needs the forward's output and lse.
template <typename L, typename T>
void attention_backward_run(const L& launch, T* dq, T* dk, T* dv, const T* dout, const T* q,
                            const T* k, const T* v, const T* out, const float* lse,
                            const AttnGeom& s, const AttentionPlan& p) {
  if (s.B * s.T * s.H == 0) return;
  const size_t rows = size_t(s.B) * s.H * s.T;
  float* D = static_cast<float*>(launch.scratch(rows * sizeof(float)));
  launch(attn_bwd_dot<T>, dim3(unsigned(std::min<size_t>(ceil_div(rows, 8), 132 * 16))), dim3(256),
         0, D, dout, out, s);
  if constexpr (is_half_v<T>) {
    if (p.kind == AttentionPlan::TensorCore) {
      if (p.dqk_pad == 64)
        return attention_backward_tc<L, T, 64, 64>(launch, dq, dk, dv, dout, q, k, v, lse, D, s, p);
      if (p.dqk_pad == 128)
        return attention_backward_tc<L, T, 128, 128>(launch, dq, dk, dv, dout, q, k, v, lse, D, s, p);
      return attention_backward_tc<L, T, 192, 128>(launch, dq, dk, dv, dout, q, k, v, lse, D, s, p);
    }
  }
  const dim3 grid(unsigned(ceil_div(size_t(s.T), kGenRows)), unsigned(s.B * s.H));
  launch(attn_bwd_dq_generic<T>, grid, dim3(32 * kGenRows), p.smem_dq, dq, q, k, v, dout, lse,
         static_cast<const float*>(D), s);
  launch(attn_bwd_dkdv_generic<T>, grid, dim3(32 * kGenRows), p.smem_dkdv, dk, dv, q, k, v, dout,
         lse, static_cast<const float*>(D), s);
}

}  // namespace dsv3::cuda
