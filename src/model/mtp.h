// Multi-token prediction modules (M5). Module k: h' = eh_proj [rmsnorm_e(Emb(t_{i+k})) ;
// rmsnorm_h(h^{k-1}_i)], one Transformer block, its own final norm, then the SHARED output head
// predicts t_{i+k+1}. Embedding and head are the main model's (ModelParams::embed/head).
#pragma once
#include "model/block.h"
#include "model/head.h"

namespace dsv3 {

struct MtpParams;

struct MtpActs {
  Tensor tok, tgt;       // (N) i32: embedded token and target of each position
  Tensor row_scale;      // (N) accum: d(total)/d(CE of each row)
  Tensor e;              // (N,C) embedding of tok
  Tensor cat;            // (N,2C) [rmsnorm_e(e) | rmsnorm_h(h_prev)]
  Tensor e_rstd, h_rstd; // (N) accum
  Tensor hin, hout;      // (N,C) block input / output
  BlockActs blk;
  HeadActs head;
  Tensor dres;           // (N,C) gradient w.r.t. hout, then hin
};
// shared: the recomputable set under selective recompute (null: own memory).
void alloc_mtp_acts(MtpActs& m, Arena& ar, const ModelConfig& c, DType t, Dims d, bool backward,
                    const BlockActs* shared = nullptr);

struct MtpScratch {  // shared by every module's backward
  Tensor dcat;       // (N,2C)
  Tensor de;         // (N,C)
};
void alloc_mtp_scratch(MtpScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d);

struct MtpIo {
  Tensor hprev;      // (N,C) h^{k-1}: the main model's last hidden or module k-1's hout
  Tensor dprev;      // (N,C) += its gradient (backward)
  Tensor embed_w, embed_g, head_w, head_g;  // the shared embedding and head (and gradients)
  float* logits_out = nullptr;              // optional host (N, V)
};

// Forward of module k, and its head's backward into m.dres when g is non-null; leaves the
// per-row cross-entropy in m.head.losses.
void mtp_forward(const BlockCtx& k, const MtpParams& w, const MtpParams* g, const MtpIo& io,
                 const MtpActs& m, const MoeStatsOut& st);
// The rest of module k's backward (its block, eh_proj, the norms, the embedding), after every
// later module's: dprev +=, embed_g +=, g +=.
void mtp_backward(const BlockCtx& k, const MtpParams& w, const MtpParams& g, const MtpIo& io,
                  const MtpActs& m, const BlockScratch& bs, const MtpScratch& s, double dbalance);

}  // namespace dsv3
