#include "model/mtp.h"

#include "model/weights.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"

namespace dsv3 {

void alloc_mtp_acts(MtpActs& m, Arena& ar, const ModelConfig& c, DType t, Dims d, bool backward,
                    const BlockActs* shared) {
  const size_t N = d.N(), C = c.hidden;
  const DType acc = accum_dtype(t);
  m.tok = ar.take(DType::I32, N);
  m.tgt = ar.take(DType::I32, N);
  m.row_scale = ar.take(acc, N);
  m.e = ar.take(t, N * C);
  m.cat = ar.take(t, N * 2 * C);
  m.e_rstd = ar.take(acc, N);
  m.h_rstd = ar.take(acc, N);
  m.hin = ar.take(t, N * C);
  m.hout = ar.take(t, N * C);
  alloc_block_acts(m.blk, ar, c, t, d, c.experts > 0, shared);
  alloc_head_acts(m.head, ar, c, t, d, backward);
  if (backward) m.dres = ar.take(t, N * C);
}

void alloc_mtp_scratch(MtpScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d) {
  s.dcat = ar.take(t, size_t(d.N()) * 2 * c.hidden);
  s.de = ar.take(t, size_t(d.N()) * c.hidden);
}

void mtp_forward(const BlockCtx& k, const MtpParams& w, const MtpParams* g, const MtpIo& io,
                 const MtpActs& m, const MoeStatsOut& st) {
  const int N = k.d.N(), C = k.c.hidden;
  const float eps = float(k.c.rms_eps);
  embed_lookup(k.ex, k.tp, m.e, m.tok, io.embed_w, N, C, k.c.vocab);
  rmsnorm_forward(k.ex, m.cat, m.e_rstd, m.e, w.enorm, {N, C, C, 2 * C}, eps);
  rmsnorm_forward(k.ex, m.cat.slice(C), m.h_rstd, io.hprev, w.hnorm, {N, C, C, 2 * C}, eps);
  linear_forward(k.ex, m.hin, m.cat, w.eh_proj, N, 2 * C, C);
  block_forward(k, m.hout, m.hin, w.block, m.blk, st);
  const bool backward = g != nullptr;
  const Tensor dres = backward ? m.dres.slice(0, size_t(N) * C) : Tensor{};
  if (backward) backend::zero(k.ex, dres);
  HeadIo h{m.hout, w.head_norm, backward ? g->head_norm : Tensor{}, m.tgt, m.row_scale, dres,
           io.logits_out};
  h.tp = k.tp;
  head_forward_backward(k.ex, k.c, io.head_w, io.head_g, h, m.head, k.d, backward);
}

void mtp_backward(const BlockCtx& k, const MtpParams& w, const MtpParams& g, const MtpIo& io,
                  const MtpActs& m, const BlockScratch& bs, const MtpScratch& s, double dbalance) {
  const int N = k.d.N(), C = k.c.hidden;
  const size_t NC = size_t(N) * C;
  block_backward(k, m.dres, m.hin, w.block, g.block, m.blk, bs, dbalance);
  const Tensor dcat = s.dcat.slice(0, 2 * NC), de = s.de.slice(0, NC);
  linear_backward(k.ex, dcat, g.eh_proj, m.dres, m.cat, w.eh_proj, N, 2 * C, C, Write::Overwrite);
  backend::zero(k.ex, de);
  rmsnorm_backward(k.ex, de, g.enorm, dcat, m.e, w.enorm, m.e_rstd, {N, C, C, 2 * C});
  embed_lookup_backward(k.ex, k.tp, io.embed_g, de, m.tok, N, C, k.c.vocab);
  rmsnorm_backward(k.ex, io.dprev, g.hnorm, dcat.slice(C), io.hprev, w.hnorm, m.h_rstd,
                   {N, C, C, 2 * C});
}

}  // namespace dsv3
