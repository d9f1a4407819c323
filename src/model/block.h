// Pre-norm Transformer block: h = x + mla(rmsnorm(x)); y = h + ffn(rmsnorm(h)), where ffn is the
// dense SwiGLU or the MoE layer.
#pragma once
#include "model/ffn.h"
#include "model/mla.h"
#include "model/moe_layer.h"

namespace dsv3 {

struct BlockWeights {
  float* in_norm = nullptr;    // (C) input_layernorm
  AttnWeights attn{};
  float* post_norm = nullptr;  // (C) post_attention_layernorm
  bool moe = false;
  FfnWeights dense;            // when !moe
  MoeWeights moe_w;            // when moe
};
BlockWeights bind_block(const ParamTable& t, float* base, int hf_layer, bool moe,
                        const ModelConfig& c);

struct BlockActs {
  float *xn1, *rstd1;  // rmsnorm(x)
  float* h1;           // x + attention
  float *xn2, *rstd2;  // rmsnorm(h1)
  AttnActs attn;
  FfnActs dense;
  MoeActs moe;
};
void alloc_block_acts(BlockActs& a, Arena& ar, const ModelConfig& c, Dims d, bool moe);

struct BlockScratch {  // backward temporaries shared by every block
  float *dh1, *dxn1, *dxn2;
  AttnScratch attn;
  FfnScratch ffn;  // dense FFN and shared experts (N rows)
  MoeScratch moe;
};
void alloc_block_scratch(BlockScratch& s, Arena& ar, const ModelConfig& c, Dims d);

struct BlockCtx {  // what every block call needs besides its own tensors
  const Exec& ex;
  const ModelConfig& c;
  const TrainingLossConfig& loss;
  Dims d;
  const RopeTables& rope;
};

void block_forward(const BlockCtx& k, float* y, const float* x, const BlockWeights& w,
                   BlockActs& a, MoeStats& stats, bool count_loads);
// dres: on entry dL/dy, on return dL/dx. g +=. dbalance: weight of this block's balance loss.
void block_backward(const BlockCtx& k, float* dres, const float* x, const BlockWeights& w,
                    const BlockWeights& g, const BlockActs& a, BlockScratch& s, double dbalance);

}  // namespace dsv3
