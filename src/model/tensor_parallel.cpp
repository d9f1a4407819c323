#include "model/tensor_parallel.h"

#include "core/check.h"
#include "ops/embedding.h"
#include "ops/vocab_parallel.h"

namespace dsv3 {

void tp_sum(TensorParallel* tp, const Exec& ex, const Tensor& t) {
  if (tp && tp->size() > 1) tp->all_reduce_sum(ex, t);
}
void tp_max(TensorParallel* tp, const Exec& ex, const Tensor& t) {
  if (tp && tp->size() > 1) tp->all_reduce_max(ex, t);
}

int full_vocab(const ModelConfig& c, TensorParallel* tp) {
  return tp ? c.vocab * tp->size() : c.vocab;
}

void embed_lookup(const Exec& ex, TensorParallel* tp, const Tensor& out, const Tensor& ids,
                  const Tensor& table, int N, int C, int V) {
  if (!tp || tp->size() == 1) return embedding_forward(ex, out, ids, table, N, C);
  embedding_shard_forward(ex, out, ids, table, tp->rank() * V, V, N, C);
  tp->all_reduce_sum(ex, out.slice(0, size_t(N) * C));
}

void embed_lookup_backward(const Exec& ex, TensorParallel* tp, const Tensor& dtable,
                           const Tensor& dout, const Tensor& ids, int N, int C, int V) {
  if (!tp || tp->size() == 1) return embedding_backward(ex, dtable, dout, ids, N, C);
  embedding_shard_backward(ex, dtable, dout, ids, tp->rank() * V, V, N, C);
}

namespace {
// One block: forward o_proj's and down_proj's outputs (N x C each); backward the FFN's input
// gradient (N x C; MoE also the gate weights' (N x K) fp32), and the MLA's latent gradients
// (dqan, dckvn, d[c_kv | k_pe]) or, without q_lora, q_proj's share of the input gradient.
// (all-reduces count 2, reduce-scatters and all-gathers 1: see TpElements)
// Without sp: forward the two N x C all-reduces; with sp an all-gather of the normed rows before
// attention and the FFN and a reduce-scatter of their outputs (4 x N C once), and backward an
// all-gather of dy and of dh1, a reduce-scatter of the FFN's input gradient and the two norm
// weights' all-reduced gradients (2 C).
void add_block(TpElements& e, const ModelConfig& c, double N, bool moe, int forwards, bool sp) {
  const double C = c.hidden;
  e.act += forwards * 4 * N * C;
  e.act += sp ? 3 * N * C + 2 * 2 * C : 2 * N * C;
  e.act += 2 * (N * (c.kv_lora + c.kv_lora + c.qk_rope) + N * (c.q_lora > 0 ? c.q_lora : C));
  if (moe) e.f32 += 2 * N * c.topk;
}
}  // namespace

TpElements tp_pass_elements(const ModelConfig& c, double N, int l0, int l1, bool embed, bool head,
                            bool recompute_blocks, bool sp) {
  TpElements e;
  const double C = c.hidden;
  // the lookup's rows, each from the rank holding its token: all-reduced, or reduce-scattered
  // forward and the gradient's rows all-gathered backward
  if (embed) e.act += 2 * N * C;
  for (int l = l0; l < l1; l++)
    add_block(e, c, N, c.is_moe_layer(l), recompute_blocks ? 2 : 1, sp);
  if (!head) return e;
  // main head: row max, sum of exponentials and target logit (3 N fp32); backward its dxn;
  // with sp the last block's rows gathered first
  e.f32 += 2 * 3 * N, e.act += 2 * N * C + (sp ? N * C : 0);
  for (int k = 1; k <= c.mtp_depth; k++) {  // each MTP module: embed, block, head (all rows)
    e.act += 2 * N * C;
    add_block(e, c, N, c.experts > 0, 1, false);
    e.f32 += 2 * 3 * N, e.act += 2 * N * C;
  }
  return e;
}

void check_tensor_parallel(const ModelConfig& c, int tp) {
  if (tp <= 1) return;
  const auto divides = [&](const char* what, int n, const char* why) {
    DSV3_CHECK(n % tp == 0, "--tp ", tp, " splits ", why, " over ", tp, " ranks, but the model has ",
               n, " ", what, ", not a multiple of ", tp, " (choose a tp that divides ", n, ")");
  };
  divides("heads", c.heads, "the attention heads");
  divides("vocabulary entries (vocab)", c.vocab, "the vocabulary (embedding, head and cross-entropy)");
  if (c.dense_layers > 0)
    divides("dense FFN units (dense_inter)", c.dense_inter, "the dense FFN's intermediate dim");
  if (c.experts > 0)
    divides("units per expert (moe_inter)", c.moe_inter,
            "every expert's intermediate dim (routed and shared)");
  DSV3_CHECK(c.attention != AttentionKind::Lsh, "--tp ", tp, " with --attention lsh is not "
             "supported (the LSH rotations are drawn for all heads at once): use dense or window "
             "attention, or --tp 1");
}

ModelConfig tensor_parallel_config(const ModelConfig& c, int tp) {
  if (tp <= 1) return c;
  check_tensor_parallel(c, tp);
  ModelConfig l = c;
  l.heads = c.heads / tp;
  l.vocab = c.vocab / tp;
  l.dense_inter = c.dense_inter / tp;
  l.moe_inter = c.moe_inter / tp;
  return l;
}

namespace {
bool ends_with(const std::string& s, const char* suffix) {
  const std::string x(suffix);
  return s.size() >= x.size() && s.compare(s.size() - x.size(), x.size(), x) == 0;
}
}  // namespace

int tp_split_dim(const std::string& n) {
  if (n == "model.embed_tokens.weight" || n == "lm_head.weight") return 0;
  for (const char* col : {".self_attn.q_b_proj.weight", ".self_attn.q_proj.weight",
                          ".self_attn.kv_b_proj.weight", ".gate_proj.weight", ".up_proj.weight"})
    if (ends_with(n, col)) return 0;
  for (const char* row : {".self_attn.o_proj.weight", ".down_proj.weight"})
    if (ends_with(n, row)) return 1;
  return -1;
}

}  // namespace dsv3
