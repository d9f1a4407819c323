// Tile choices and shared-memory sizes of the CUDA kernels (launch.h). Compiled into every build:
// the unit tests check them without a GPU.
#include "ops/cuda/launch.h"

#include "core/check.h"

namespace dsv3::cuda {

namespace {
// The tensor-core attention instantiations (attention.cuh): MLA V3 is (192, 128).
constexpr int kTcCombos[][2] = {{64, 64}, {128, 128}, {192, 128}};
}  // namespace

int attention_pad(int d) {
  for (int p : {64, 128, 192, 256})
    if (d <= p) return p;
  return 0;
}

size_t attention_tc_smem(int dqk_pad, int dv_pad, int which) {
  const size_t ldq = size_t(dqk_pad) + kAttnPad, ldv = size_t(dv_pad) + kAttnPad;
  const size_t rows = kAttnTcRows;
  if (which == 0)  // Q, K tiles [rows][ldq] and V transposed [dv][rows + pad]
    return 2 * (2 * rows * ldq + size_t(dv_pad) * (rows + kAttnPad));
  // dq and dk/dv: Q, dO, K and V tiles, then (dk/dv) lse and D of the query tile
  return 2 * (2 * rows) * (ldq + ldv) + (which == 2 ? 2 * rows * sizeof(float) : 0);
}

size_t attention_generic_smem(int dqk, int dv, int which) {
  size_t f = size_t(kAttnGenTile) * (dqk + 1) + size_t(kAttnGenTile) * (dv + 1) +
             size_t(kAttnGenRows) * dqk;
  if (which >= 1) f += size_t(kAttnGenRows) * dv;
  if (which == 2) f += 2 * size_t(kAttnGenTile);
  return f * sizeof(float);
}

AttentionPlan plan_attention(int dqk, int dv, bool half_dtype, bool force_generic) {
  DSV3_CHECK(dqk >= 1 && dv >= 1, "attention head widths must be positive (", dqk, ", ", dv, ")");
  AttentionPlan p;
  if (half_dtype && !force_generic)
    for (const auto& c : kTcCombos)
      if (dqk <= c[0] && dv <= c[1]) {
        p.kind = AttentionPlan::TensorCore;
        p.dqk_pad = c[0];
        p.dv_pad = c[1];
        p.bm = p.bn = kAttnTcRows;
        p.threads = kAttnTcThreads;
        p.smem_fwd = attention_tc_smem(c[0], c[1], 0);
        p.smem_dq = attention_tc_smem(c[0], c[1], 1);
        p.smem_dkdv = attention_tc_smem(c[0], c[1], 2);
        return p;
      }
  DSV3_CHECK(dqk <= 32 * kAttnGenMaxLane && dv <= 32 * kAttnGenMaxLane,
             "attention on CUDA supports head widths up to ", 32 * kAttnGenMaxLane, ", got q/k ",
             dqk, " and v ", dv);
  p.kind = AttentionPlan::Generic;
  p.bm = kAttnGenRows;
  p.bn = kAttnGenTile;
  p.threads = 32 * kAttnGenRows;
  p.smem_fwd = attention_generic_smem(dqk, dv, 0);
  p.smem_dq = attention_generic_smem(dqk, dv, 1);
  p.smem_dkdv = attention_generic_smem(dqk, dv, 2);
  DSV3_CHECK(p.smem_dkdv <= kMaxSmemPerBlock, "attention head widths ", dqk, "/", dv,
             " need more shared memory than a block has");
  return p;
}

}  // namespace dsv3::cuda
