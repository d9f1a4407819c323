#include "model/head.h"

#include <algorithm>
#include <vector>

#include "backend/backend.h"
#include "model/model.h"
#include "ops/cross_entropy.h"
#include "ops/distill.h"
#include "ops/elementwise.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/vocab_parallel.h"
#include "model/tensor_parallel.h"

namespace dsv3 {

void alloc_head_acts(HeadActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d, bool backward,
                     bool soft) {
  const size_t N = d.N(), C = c.hidden, rows = std::min<size_t>(kHeadChunk, N);
  const DType acc = accum_dtype(t);
  a.xn = ar.take(t, N * C);
  a.rstd = ar.take(acc, N);
  a.losses = ar.take(acc, N);
  a.logits = ar.take(acc, rows * c.vocab);
  if (backward) {
    if (t != acc) a.dlogits_t = ar.take(t, rows * c.vocab);
    a.dxn = ar.take(t, N * C);
  }
  if (soft) {
    a.t_logits = ar.take(acc, rows * c.vocab);
    a.kd_losses = ar.take(acc, N);
  }
  a.tp_stats = ar.take(acc, 3 * rows);
}

void head_forward_backward(const Exec& ex, const ModelConfig& c, const Tensor& head_w,
                           const Tensor& head_g, const HeadIo& io, const HeadActs& a, Dims d,
                           bool backward) {
  const int N = d.N(), C = c.hidden, V = c.vocab;
  const bool vp = io.tp && io.tp->size() > 1;  // vocabulary-parallel: V is this rank's shard
  const int first = vp ? io.tp->rank() * V : 0;
  DSV3_CHECK(!vp || (!io.logits_out && !io.soft), "tensor parallelism keeps each rank's share of "
             "the vocabulary: logits output and distillation need the whole logits (use --tp 1)");
  rmsnorm_forward(ex, a.xn, a.rstd, io.x, io.norm_w, {N, C, C, C}, float(c.rms_eps));
  const Tensor dxn = backward ? a.dxn.slice(0, size_t(N) * C) : Tensor{};  // chunks write their rows
  for (int r0 = 0; r0 < N; r0 += kHeadChunk) {
    const int rows = std::min(kHeadChunk, N - r0);
    const Tensor lg = a.logits.slice(0, size_t(rows) * V);
    const Tensor xn = a.xn.slice(size_t(r0) * C, size_t(rows) * C);
    const Tensor tg = io.targets.slice(r0, rows);
    linear_forward(ex, lg, xn, head_w, rows, C, V);
    const Tensor st = a.tp_stats.slice(0, 3 * size_t(rows));
    if (vp) {  // max, then sum of exponentials and the target's logit, over the ranks' shards
      ce_shard_max(ex, st, lg, rows, V);
      tp_max(io.tp, ex, st.slice(0, rows));
      ce_shard_sums(ex, st, lg, tg, first, rows, V);
      tp_sum(io.tp, ex, st.slice(rows, 2 * size_t(rows)));
      ce_shard_loss(ex, a.losses.slice(r0, rows), st, tg, rows);
    } else {
      cross_entropy_forward(ex, a.losses.slice(r0, rows), lg, tg, rows, V);
    }
    const Tensor tl = io.soft ? a.t_logits.slice(0, size_t(rows) * V) : Tensor{};
    if (io.soft) {
      io.soft->logits(r0, rows, tl);
      distill_forward(ex, a.kd_losses.slice(r0, rows), lg, tl, tg, rows, V, io.soft->temperature);
    }
    if (io.logits_out) {
      const Tensor out = host_tensor(io.logits_out + size_t(r0) * V, size_t(rows) * V);
      if (lg.device == Device::CPU) convert(Exec{}, out, lg);
      else {
        Buffer stage(Device::CPU, lg.dtype, lg.numel);
        backend::copy(ex, stage.view(), lg);
        convert(Exec{}, out, stage.view());
      }
    }
    if (!backward) continue;
    // the logits' gradient in the dtype of the head GEMMs' operands (in place when that is fp32)
    const Tensor dl = xn.dtype == lg.dtype ? lg : a.dlogits_t.slice(0, lg.numel);
    if (io.soft)
      distill_backward(ex, dl, lg, tl, tg, io.row_scale.slice(r0, rows), rows, V, io.soft->alpha,
                       io.soft->temperature);
    else if (vp)
      ce_shard_backward(ex, dl, lg, st, tg, io.row_scale.slice(r0, rows), first, rows, V);
    else
      cross_entropy_backward(ex, dl, lg, tg, io.row_scale.slice(r0, rows), rows, V);
    linear_backward(ex, dxn.slice(size_t(r0) * C, size_t(rows) * C), head_g, dl, xn, head_w, rows,
                    C, V, Write::Overwrite);
  }
  if (backward) tp_sum(io.tp, ex, dxn);  // each rank's vocabulary rows give a partial dxn
  if (backward)
    rmsnorm_backward(ex, io.dx, io.norm_g, dxn, io.x, io.norm_w, a.rstd, {N, C, C, C});
}

}  // namespace dsv3
