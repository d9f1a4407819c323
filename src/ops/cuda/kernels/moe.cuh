// MoE kernels (ops/moe.h): the router (scores, group-limited top-k, gates, loads, balance loss
// and entropy), the stable counting sort of (token, expert) pairs by expert, and the row
// gather / combine / scatter around the grouped expert GEMMs. Every reduction runs in a fixed
// order (trees, or loops in token order) and integer counts use atomics, so results reproduce
// bit for bit; choices break ties towards the lower index, as the CPU does.
#pragma once
#include "ops/cuda/device.cuh"
#include "ops/cuda/launch.h"

namespace dsv3::cuda {

struct RouterGeom {
  int N, E, K, groups, topk_groups, segment;
  bool sigmoid, norm_topk;
  double route_scale;
  double balance_alpha;
};

constexpr int kRouterWarps = 4;  // tokens per block (one warp each)
inline size_t router_smem(int E, int K) {
  return size_t(kRouterWarps) * (2 * size_t(E) * sizeof(float) + size_t(K) * sizeof(int));
}

// (v, i) beats (w, j): larger value, ties to the lower index.
DSV3_DEVICE bool beats(float v, int i, float w, int j) { return v > w || (v == w && i < j); }

// One warp per token. Writes scores (N,E), idx/gates (N,K), adds each choice to loads, and the
// token's entropy of the normalised scores and (sigmoid) score sum to tok_entropy / tok_z.
// Requires groups <= 32 and E <= 1024.
template <typename = void>
__global__ void router_forward_kernel(int32_t* idx, float* gates, float* scores, int64_t* loads,
                                      double* tok_entropy, double* tok_z, const float* logits,
                                      const float* bias, RouterGeom s) {
  DSV3_DYNAMIC_SMEM(smem);
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u);
  const int n = int(blockIdx.x) * kRouterWarps + warp;
  const int E = s.E, K = s.K;
  float* sc = reinterpret_cast<float*>(smem) + size_t(warp) * 2 * E;
  float* sel = sc + E;
  int* chosen = reinterpret_cast<int*>(reinterpret_cast<float*>(smem) + size_t(kRouterWarps) * 2 * E) + warp * K;
  if (n >= s.N) return;  // whole warps leave together (n is uniform across the warp)
  const float* l = logits + size_t(n) * E;
  if (s.sigmoid) {
    for (int e = lane; e < E; e += 32) sc[e] = 1.0f / (1.0f + expf(-l[e]));
  } else {
    float m = -INFINITY;
    for (int e = lane; e < E; e += 32) m = fmaxf(m, l[e]);
    m = warp_max(m);
    float z = 0;
    for (int e = lane; e < E; e += 32) z += (sc[e] = expf(l[e] - m));
    z = warp_sum(z);
    for (int e = lane; e < E; e += 32) sc[e] /= z;
  }
  for (int e = lane; e < E; e += 32) sel[e] = sc[e] + (bias ? bias[e] : 0.0f);
  __syncwarp();
  const int G = s.groups;
  if (G > 1) {  // keep the topk_groups groups with the best sums of their top-2 selection scores
    const int per = E / G;
    float gs = -INFINITY;
    if (lane < G) {
      float a = -INFINITY, b = -INFINITY;
      for (int e = lane * per; e < (lane + 1) * per; e++) {
        if (sel[e] > a) b = a, a = sel[e];
        else if (sel[e] > b) b = sel[e];
      }
      gs = a + b;
    }
    unsigned keep = 0;
    for (int r = 0; r < s.topk_groups; r++) {
      float bv = (keep >> lane) & 1u || lane >= G ? -INFINITY : gs;
      int bi = (keep >> lane) & 1u || lane >= G ? 1 << 30 : lane;
      for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (beats(ov, oi, bv, bi)) bv = ov, bi = oi;
      }
      if (bi < G) keep |= 1u << bi;
    }
    for (int e = lane; e < E; e += 32)
      if (!((keep >> (e / per)) & 1u)) sel[e] = -INFINITY;
    __syncwarp();
  }
  // top-K by (value desc, index asc); lane L owns experts L, L+32, ...: bit j of `taken` is
  // expert L + 32 j.
  unsigned taken = 0;
  float sum = 0;
  for (int k = 0; k < K; k++) {
    float bv = -INFINITY;
    int bi = 1 << 30;
    for (int j = 0, e = lane; e < E; j++, e += 32)
      if (!((taken >> j) & 1u) && beats(sel[e], e, bv, bi)) bv = sel[e], bi = e;
    for (int o = 16; o > 0; o >>= 1) {
      const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
      if (beats(ov, oi, bv, bi)) bv = ov, bi = oi;
    }
    if (bi < E && (bi & 31) == lane) taken |= 1u << (bi >> 5);
    if (lane == 0) chosen[k] = bi;
    sum += bi < E ? sc[bi] : 0.0f;
  }
  __syncwarp();
  const float norm = s.norm_topk ? float(s.route_scale) / sum : float(s.route_scale);
  for (int k = lane; k < K; k += 32) {
    const int e = chosen[k];
    idx[size_t(n) * K + k] = e;
    gates[size_t(n) * K + k] = sc[e] * norm;
    atomicAdd(reinterpret_cast<unsigned long long*>(loads + e), 1ull);
  }
  // entropy of p = s / sum(s), in double as the CPU
  double z = 0;
  for (int e = lane; e < E; e += 32) z += double(sc[e]);
  z = warp_sum(z);
  double h = 0;
  for (int e = lane; e < E; e += 32) {
    const double p = double(sc[e]) / z;
    if (p > 0) h -= p * log(p);
  }
  h = warp_sum(h);
  for (int e = lane; e < E; e += 32) scores[size_t(n) * E + e] = sc[e];
  if (lane == 0) {
    tok_entropy[n] = h;
    tok_z[n] = z;
  }
}

// One block per balance segment: count[e] (choices of the segment), P[e] = sum over its tokens
// of the normalised scores, seg_out[g] = sum_e (E / (K S) count[e]) (P[e] / S). With `coef`
// (backward) it writes coef[g][e] = count[e] * c instead.
template <typename = void>
__global__ void router_segment_kernel(double* seg_out, double* coef, double c, const int32_t* idx,
                                      const float* scores, const double* tok_z, RouterGeom s) {
  DSV3_DYNAMIC_SMEM(smem);
  int* count = reinterpret_cast<int*>(smem);
  __shared__ double red[32];
  const int g = int(blockIdx.x), S = s.segment, E = s.E, K = s.K;
  for (int e = int(threadIdx.x); e < E; e += int(blockDim.x)) count[e] = 0;
  __syncthreads();
  for (int i = int(threadIdx.x); i < S * K; i += int(blockDim.x)) {
    const int e = idx[size_t(g) * S * K + i];
    if (e >= 0 && e < E) atomicAdd(count + e, 1);
  }
  __syncthreads();
  if (coef) {
    for (int e = int(threadIdx.x); e < E; e += int(blockDim.x))
      coef[size_t(g) * E + e] = double(count[e]) * c;
    return;
  }
  double part = 0;
  for (int e = int(threadIdx.x); e < E; e += int(blockDim.x)) {
    double P = 0;
    for (int n = g * S; n < (g + 1) * S; n++)
      P += double(scores[size_t(n) * E + e]) / (s.sigmoid ? tok_z[n] : 1.0);
    part += (double(E) / (double(K) * S) * double(count[e])) * (P / S);
  }
  const double seg = block_sum(part, red);
  if (threadIdx.x == 0) seg_out[g] = seg;
}

// stats[0] = alpha * mean of the segment terms, stats[1] = mean token entropy. One block.
template <typename = void>
__global__ void router_stats_kernel(double* stats, const double* seg, int nseg,
                                    const double* tok_entropy, int N, double alpha) {
  __shared__ double red[32];
  double a = 0, h = 0;
  for (int i = int(threadIdx.x); i < nseg; i += int(blockDim.x)) a += seg[i];
  for (int i = int(threadIdx.x); i < N; i += int(blockDim.x)) h += tok_entropy[i];
  a = block_sum(a, red);
  h = block_sum(h, red);
  if (threadIdx.x == 0) {
    stats[0] = alpha == 0 || nseg == 0 ? 0.0 : alpha * a / nseg;
    stats[1] = N > 0 ? h / N : 0.0;
  }
}

// One warp per token: dlogits += from the gate gradients and (coef) the balance loss.
template <typename = void>
__global__ void router_backward_kernel(float* dlogits, const float* dgates, const float* scores,
                                       const int32_t* idx, const double* coef, RouterGeom s) {
  DSV3_DYNAMIC_SMEM(smem);
  const int warp = int(threadIdx.x >> 5), lane = int(threadIdx.x & 31u);
  const int n = int(blockIdx.x) * kRouterWarps + warp;
  const int E = s.E, K = s.K;
  double* ds = reinterpret_cast<double*>(smem) + size_t(warp) * E;
  if (n >= s.N) return;
  const float* sc = scores + size_t(n) * E;
  const int32_t* id = idx + size_t(n) * K;
  const float* dg = dgates + size_t(n) * K;
  for (int e = lane; e < E; e += 32) ds[e] = 0;
  __syncwarp();
  if (s.norm_topk) {  // w_k = R s_k / sum_j s_j over the chosen
    double sum = 0, dot = 0;
    for (int k = 0; k < K; k++) {
      sum += sc[id[k]];
      dot += double(dg[k]) * sc[id[k]];
    }
    for (int k = lane; k < K; k += 32) ds[id[k]] += s.route_scale / sum * (double(dg[k]) - dot / sum);
  } else {
    for (int k = lane; k < K; k += 32) ds[id[k]] += s.route_scale * double(dg[k]);
  }
  __syncwarp();
  if (coef) {
    const double* cf = coef + size_t(n / s.segment) * E;
    if (s.sigmoid) {  // p = s / sum(s)
      double z = 0, dot = 0;
      for (int e = lane; e < E; e += 32) {
        z += sc[e];
        dot += cf[e] * sc[e];
      }
      z = warp_sum(z);
      dot = warp_sum(dot);
      for (int e = lane; e < E; e += 32) ds[e] += cf[e] / z - dot / (z * z);
    } else {
      for (int e = lane; e < E; e += 32) ds[e] += cf[e];
    }
    __syncwarp();
  }
  float* dl = dlogits + size_t(n) * E;
  if (s.sigmoid) {
    for (int e = lane; e < E; e += 32) dl[e] += float(ds[e] * sc[e] * (1.0 - sc[e]));
  } else {
    double dot = 0;
    for (int e = lane; e < E; e += 32) dot += ds[e] * sc[e];
    dot = warp_sum(dot);
    for (int e = lane; e < E; e += 32) dl[e] += float(sc[e] * (ds[e] - dot));
  }
}

// Scratch of router_forward_run: per-token entropy and score sums, per-segment terms.
inline size_t router_scratch_bytes(int N, int segment) {
  return (2 * size_t(N) + size_t(N / std::max(segment, 1))) * sizeof(double);
}

template <typename L>
void router_forward_run(const L& launch, int32_t* idx, float* gates, float* scores, int64_t* loads,
                        double* stats, const float* logits, const float* bias, RouterGeom s) {
  launch.zero(loads, size_t(s.E) * sizeof(int64_t));
  const int nseg = s.N / s.segment;
  double* tok_entropy = static_cast<double*>(launch.scratch(router_scratch_bytes(s.N, s.segment)));
  double* tok_z = tok_entropy + s.N;
  double* seg = tok_z + s.N;
  if (s.N > 0)
    launch(router_forward_kernel<>, dim3(unsigned(ceil_div(size_t(s.N), kRouterWarps))),
           dim3(32 * kRouterWarps), router_smem(s.E, s.K), idx, gates, scores, loads, tok_entropy,
           tok_z, logits, bias, s);
  if (s.balance_alpha != 0 && nseg > 0)
    launch(router_segment_kernel<>, dim3(unsigned(nseg)), dim3(256), size_t(s.E) * sizeof(int), seg,
           static_cast<double*>(nullptr), 0.0, static_cast<const int32_t*>(idx),
           static_cast<const float*>(scores), static_cast<const double*>(tok_z), s);
  launch(router_stats_kernel<>, dim3(1), dim3(256), 0, stats, static_cast<const double*>(seg),
         s.balance_alpha != 0 ? nseg : 0, static_cast<const double*>(tok_entropy), s.N,
         s.balance_alpha);
}

template <typename L>
void router_backward_run(const L& launch, float* dlogits, const float* dgates, double dbalance,
                         const float* scores, const int32_t* idx, RouterGeom s) {
  if (s.N == 0) return;
  const int S = s.segment, nseg = s.N / S;
  double* coef = nullptr;
  if (s.balance_alpha != 0 && dbalance != 0 && nseg > 0) {
    // d(balance)/d p_{t,i} = alpha * dbalance / nseg * f_i / S, constant within a segment
    const double c = s.balance_alpha * dbalance / nseg * double(s.E) / (double(s.K) * S) / S;
    coef = static_cast<double*>(launch.scratch(size_t(nseg) * s.E * sizeof(double)));
    launch(router_segment_kernel<>, dim3(unsigned(nseg)), dim3(256), size_t(s.E) * sizeof(int),
           static_cast<double*>(nullptr), coef, c, idx, scores, static_cast<const double*>(nullptr), s);
  }
  launch(router_backward_kernel<>, dim3(unsigned(ceil_div(size_t(s.N), kRouterWarps))),
         dim3(32 * kRouterWarps), size_t(kRouterWarps) * s.E * sizeof(double), dlogits, dgates,
         scores, idx, static_cast<const double*>(coef), s);
}

// ---- permutation: a stable counting sort of the N*K (token, expert) pairs by expert -----------

// Per chunk of kPermChunk pairs: rank[i] = pairs before i in the chunk with the same expert;
// counts[chunk][e] = pairs of expert e in the chunk. Pairs with an expert outside [0, E) are
// reported and get no slot.
template <typename = void>
__global__ void perm_chunk_kernel(int32_t* rank, int32_t* counts, const int32_t* idx, int NK, int E,
                                  int* err) {
  __shared__ int32_t ids[kPermChunk];
  DSV3_DYNAMIC_SMEM(smem);
  int* hist = reinterpret_cast<int*>(smem);
  const int c0 = int(blockIdx.x) * kPermChunk, t = int(threadIdx.x), i = c0 + t;
  for (int e = t; e < E; e += int(blockDim.x)) hist[e] = 0;
  const int e = i < NK ? idx[i] : -1;
  const bool valid = e >= 0 && e < E;
  if (i < NK && !valid) raise(err, DeviceError::ExpertIndexOutOfRange);
  ids[t] = valid ? e : -1;
  __syncthreads();
  if (valid) {
    int r = 0;
    for (int j = 0; j < t; j++) r += ids[j] == e;
    rank[i] = r;
    atomicAdd(hist + e, 1);
  }
  __syncthreads();
  for (int x = t; x < E; x += int(blockDim.x)) counts[size_t(blockIdx.x) * E + x] = hist[x];
}

// One block: counts[chunk][e] becomes the exclusive prefix over chunks (the chunk's first slot
// within expert e) and offsets[e] the exclusive prefix over experts.
template <typename = void>
__global__ void perm_scan_kernel(int32_t* offsets, int32_t* counts, int chunks, int E) {
  DSV3_DYNAMIC_SMEM(smem);
  int* total = reinterpret_cast<int*>(smem);
  for (int e = int(threadIdx.x); e < E; e += int(blockDim.x)) {
    int run = 0;
    for (int c = 0; c < chunks; c++) {
      const int v = counts[size_t(c) * E + e];
      counts[size_t(c) * E + e] = run;
      run += v;
    }
    total[e] = run;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int run = 0;
    for (int e = 0; e < E; e++) {
      offsets[e] = run;
      run += total[e];
    }
    offsets[E] = run;
  }
}

template <typename = void>
__global__ void perm_scatter_kernel(int32_t* slot_token, int32_t* slot_of, const int32_t* rank,
                                    const int32_t* base, const int32_t* offsets, const int32_t* idx,
                                    int NK, int K, int E) {
  const int i = int(blockIdx.x * blockDim.x + threadIdx.x);
  if (i >= NK) return;
  const int e = idx[i];
  if (e < 0 || e >= E) {
    slot_of[i] = -1;
    return;
  }
  const int slot = offsets[e] + base[size_t(i / kPermChunk) * E + e] + rank[i];
  slot_token[slot] = i / K;
  slot_of[i] = slot;
}

template <typename L>
void moe_permutation_run(const L& launch, int32_t* slot_token, int32_t* slot_of, int32_t* offsets,
                         const int32_t* idx, int N, int K, int E) {
  const int NK = N * K, chunks = int(ceil_div(size_t(NK), kPermChunk));
  int32_t* rank = static_cast<int32_t*>(
      launch.scratch((size_t(NK) + size_t(std::max(chunks, 1)) * E) * sizeof(int32_t)));
  int32_t* counts = rank + NK;
  if (chunks > 0)
    launch(perm_chunk_kernel<>, dim3(unsigned(chunks)), dim3(kPermChunk), size_t(E) * sizeof(int),
           rank, counts, idx, NK, E, launch.error_flag());
  launch(perm_scan_kernel<>, dim3(1), dim3(256), size_t(E) * sizeof(int), offsets, counts, chunks, E);
  if (chunks > 0)
    launch(perm_scatter_kernel<>, dim3(unsigned(chunks)), dim3(kPermChunk), 0, slot_token, slot_of,
           static_cast<const int32_t*>(rank), static_cast<const int32_t*>(counts),
           static_cast<const int32_t*>(offsets), idx, NK, K, E);
}

// ---- rows around the expert GEMMs ------------------------------------------------------------

template <typename T>
__global__ void moe_gather_kernel(T* xp, const T* x, const int32_t* slot_token, int NK, int C) {
  const size_t total = size_t(NK) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x)
    xp[i] = x[size_t(slot_token[i / C]) * C + i % C];
}

// y[n] (+)= sum_k gates[n,k] outp[slot_of[n,k]], in k order, one rounding.
template <typename T>
__global__ void moe_combine_kernel(T* y, const T* outp, const float* gates, const int32_t* slot_of,
                                   int N, int K, int C, bool accumulate) {
  const size_t total = size_t(N) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t n = i / C, c = i % C;
    float acc = accumulate ? ld(y[i]) : 0.0f;
    for (int k = 0; k < K; k++)
      acc += gates[n * K + k] * ld(outp[size_t(slot_of[n * K + k]) * C + c]);
    y[i] = st<T>(acc);
  }
}

// One block per token: doutp[slot] = gate * dy[n]; dgates[n,k] = dy[n] . outp[slot].
template <typename T>
__global__ void moe_combine_backward_kernel(T* doutp, float* dgates, const T* dy, const T* outp,
                                            const float* gates, const int32_t* slot_of, int K,
                                            int C) {
  __shared__ float red[32];
  const size_t n = blockIdx.x;
  const T* d = dy + n * C;
  for (int k = 0; k < K; k++) {
    const size_t slot = size_t(slot_of[n * K + k]);
    const float g = gates[n * K + k];
    const T* o = outp + slot * C;
    T* dop = doutp + slot * C;
    float dot = 0;
    for (int c = int(threadIdx.x); c < C; c += int(blockDim.x)) {
      dot += ld(d[c]) * ld(o[c]);
      dop[c] = st<T>(g * ld(d[c]));
    }
    dot = block_sum(dot, red);
    if (threadIdx.x == 0) dgates[n * K + k] = dot;
  }
}

// dx[n] += sum_k dxp[slot_of[n,k]], in k order, one rounding.
template <typename T>
__global__ void moe_scatter_add_kernel(T* dx, const T* dxp, const int32_t* slot_of, int N, int K,
                                       int C) {
  const size_t total = size_t(N) * C;
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < total;
       i += size_t(gridDim.x) * blockDim.x) {
    const size_t n = i / C, c = i % C;
    float acc = ld(dx[i]);
    for (int k = 0; k < K; k++) acc += ld(dxp[size_t(slot_of[n * K + k]) * C + c]);
    dx[i] = st<T>(acc);
  }
}

template <typename L, typename T>
void moe_gather_run(const L& launch, T* xp, const T* x, const int32_t* slot_token, int NK, int C) {
  if (size_t(NK) * C == 0) return;
  const Launch1D p = plan_elementwise(size_t(NK) * C);
  launch(moe_gather_kernel<T>, dim3(p.grid), dim3(p.block), 0, xp, x, slot_token, NK, C);
}
template <typename L, typename T>
void moe_combine_run(const L& launch, T* y, const T* outp, const float* gates,
                     const int32_t* slot_of, int N, int K, int C, bool accumulate) {
  if (size_t(N) * C == 0) return;
  const Launch1D p = plan_elementwise(size_t(N) * C);
  launch(moe_combine_kernel<T>, dim3(p.grid), dim3(p.block), 0, y, outp, gates, slot_of, N, K, C,
         accumulate);
}
template <typename L, typename T>
void moe_combine_backward_run(const L& launch, T* doutp, float* dgates, const T* dy, const T* outp,
                              const float* gates, const int32_t* slot_of, int N, int K, int C) {
  if (N == 0) return;
  launch(moe_combine_backward_kernel<T>, dim3(unsigned(N)), dim3(row_threads(size_t(C))), 0, doutp,
         dgates, dy, outp, gates, slot_of, K, C);
}
template <typename L, typename T>
void moe_scatter_add_run(const L& launch, T* dx, const T* dxp, const int32_t* slot_of, int N, int K,
                         int C) {
  if (size_t(N) * C == 0) return;
  const Launch1D p = plan_elementwise(size_t(N) * C);
  launch(moe_scatter_add_kernel<T>, dim3(p.grid), dim3(p.block), 0, dx, dxp, slot_of, N, K, C);
}

}  // namespace dsv3::cuda
