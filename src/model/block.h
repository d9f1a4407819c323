// Pre-norm Transformer block: h = x + mla(rmsnorm(x)); y = h + ffn(rmsnorm(h)), where ffn is the
// dense SwiGLU or the MoE layer.
#pragma once
#include <string>

#include "model/ffn.h"
#include "model/mla.h"
#include "model/moe_layer.h"
#include "model/tensor_parallel.h"

namespace dsv3 {

// Activation recomputation (T4).
enum class Recompute : uint8_t {
  None,       // keep every block's activations
  Selective,  // DeepSeek-V3: recompute the RMSNorm outputs and MLA up-projections in backward
  Block,      // keep only block inputs; re-run each block's forward inside backward
};
const char* recompute_name(Recompute r);
Recompute parse_recompute(const std::string& s);

struct BlockParams {
  Tensor in_norm;    // (C) input_layernorm
  AttnParams attn;
  Tensor post_norm;  // (C) post_attention_layernorm
  bool moe = false;
  FfnParams dense;   // when !moe
  MoeParams moe_p;   // when moe
};
BlockParams bind_block(const ParamTable& t, const Tensor& base, const Tensor& buffers,
                       int hf_layer, bool moe, const ModelConfig& c);

struct BlockActs {
  Tensor xn1, rstd1;  // rmsnorm(x): (N,C), (N) accum     xn1 recomputable
  Tensor h1;          // x + attention
  Tensor xn2, rstd2;  // rmsnorm(h1)                        xn2 recomputable
  AttnActs attn;
  FfnActs dense;
  MoeActs moe;
};
// shared: where the recomputable members go under selective recompute (null: own memory).
void alloc_block_acts(BlockActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d, bool moe,
                      const BlockActs* shared = nullptr);
// The recomputable members alone (the shared set of selective recompute).
void alloc_recomputable(BlockActs& a, Arena& ar, const ModelConfig& c, DType t, Dims d);

struct BlockScratch {  // backward temporaries shared by every block
  Tensor dh1, dxn1, dxn2;
  AttnScratch attn;
  FfnScratch ffn;  // dense FFN and shared experts (N rows)
  MoeScratch moe;
};
void alloc_block_scratch(BlockScratch& s, Arena& ar, const ModelConfig& c, DType t, Dims d);

struct BlockCtx {  // what every block call needs besides its own tensors
  const Exec& ex;
  const ModelConfig& c;
  const TrainingLossConfig& loss;
  Dims d;
  const RopeTables& rope;
  Recompute recompute;
  ExpertExchange* experts = nullptr;  // expert parallelism (moe_layer.h); null: all local
  TensorParallel* tp = nullptr;       // tensor parallelism (tensor_parallel.h); null: whole
  // Sequence parallelism (tp->sequence_parallel, main blocks): x, y and dres hold this rank's
  // N / tp rows; sp_rows (N,C) is the gathered/partial rows' scratch, sp_normg (C) accum the
  // norm weights' gradient before it is summed over tp (each rank normalises its own rows).
  bool sp = false;
  Tensor sp_rows, sp_normg;
};

// y (N,C) = block(x), overwriting y. Under k.sp x and y are this rank's rows (N / tp): the norms
// and residual adds run on them, the normed rows are all-gathered before attention and the FFN,
// whose partial outputs are reduce-scattered back (Megatron's sequence parallelism). MoE blocks write their router statistics to st.
void block_forward(const BlockCtx& k, const Tensor& y, const Tensor& x, const BlockParams& w,
                   const BlockActs& a, const MoeStatsOut& st);
// dres: on entry dL/dy, on return dL/dx. g +=. dbalance: the factor of this block's balance loss
// in what is differentiated (the pass's grad scale).
// Under selective recompute it first rebuilds the recomputable activations from x and a.
void block_backward(const BlockCtx& k, const Tensor& dres, const Tensor& x, const BlockParams& w,
                    const BlockParams& g, const BlockActs& a, const BlockScratch& s,
                    double dbalance);

}  // namespace dsv3
