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
