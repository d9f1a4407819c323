#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/embedding.h"
#include "ops/vocab_parallel.h"

namespace dsv3 {

std::vector<std::string> moe_layer_names(const ModelConfig& c) {
  std::vector<std::string> names;
  for (int l = 0; l < c.layers; l++)
    if (c.is_moe_layer(l)) names.push_back("layer " + std::to_string(l));
  if (c.experts > 0)
    for (int k = 1; k <= c.mtp_depth; k++) names.push_back("mtp " + std::to_string(k));
  return names;
}

Pass::Pass(const ModelWeights& w_, Workspace& ws_, const TrainingLossConfig& l, Dims d_,
           const ModelParams* g_, float scale)
    : w(w_), ws(ws_), loss(l), d(d_), g(g_), grad_scale(scale), exec_{w_.device()} {
  const Dims m = ws.config().max;
  DSV3_CHECK(d.B > 0 && d.T > 0, "empty micro-batch ", d.B, "x", d.T);
  DSV3_CHECK(d.T <= m.T && d.N() <= m.N(), "batch ", d.B, "x", d.T,
             " exceeds the workspace's buffers ", m.B, "x", m.T);
  DSV3_CHECK(ws.dtype() == w.dtype() && ws.device() == w.device(), "workspace is ",
             dtype_name(ws.dtype()), " on ", device_name(ws.device()), ", the weights ",
             dtype_name(w.dtype()), " on ", device_name(w.device()), " (internal error)");
  DSV3_CHECK(!g || ws.config().backward, "a backward pass needs a workspace built for backward "
             "(internal error)");
}

namespace {

// Host staging of one (N) vector in the workspace's dtype, then one copy to the device.
template <typename V>
void upload(const Pass& p, const Tensor& dst, const std::vector<V>& host) {
  backend::copy(p.ex(), dst.slice(0, host.size()), host_tensor(host));
}
void upload_scale(const Pass& p, const Tensor& dst, const std::vector<double>& host) {
  if (dst.dtype == DType::F64) return upload(p, dst, host);
  std::vector<float> f(host.begin(), host.end());
  upload(p, dst, f);
}

std::vector<double> download_accum(const Pass& p, const Tensor& src, size_t n) {
  std::vector<double> out(n);
  if (src.dtype == DType::F64) {
    backend::copy(p.ex(), host_tensor(out), src.slice(0, n));
  } else {
    std::vector<float> f(n);
    backend::copy(p.ex(), host_tensor(f), src.slice(0, n));
    std::copy(f.begin(), f.end(), out.begin());
  }
  return out;
}

// Weighted mean of the per-row cross-entropies (row order, in double); optional log-probs.
double weighted_loss(const Pass& p, const Tensor& losses, const std::vector<double>& coef,
                     double weight_sum, float* logprobs) {
  const size_t N = p.d.N();
  const std::vector<double> l = download_accum(p, losses, N);
  double sum = 0;
  for (size_t n = 0; n < N; n++) {
    sum += coef[n] * l[n];
    if (logprobs) logprobs[n] = float(-l[n]);
  }
  return weight_sum > 0 ? sum / weight_sum : 0.0;
}

// Sequence parallelism (--sp): the residual stream between the main blocks holds this rank's
// N / tp rows (block.h); the embedding reduce-scatters into them and the head gathers them.
TensorParallel* seq_parallel(const Pass& p) {
  TensorParallel* tp = p.ws.tensor_parallel();
  return tp && tp->sequence_parallel && tp->size() > 1 ? tp : nullptr;
}
// The head's (and the MTP modules') input: every row, gathered under sequence parallelism.
Tensor head_input(const Pass& p) {
  const ModelConfig& c = p.w.config();
  return seq_parallel(p) ? p.ws.sp_final : p.ws.resid[c.layers];
}

}  // namespace

void load_batch(Pass& p, const MicroBatch& mb, bool mtp) {
  const ModelConfig& c = p.w.config();
  const int B = p.d.B, T = p.d.T, N = p.d.N(), V = full_vocab(c, p.ws.tensor_parallel());
  DSV3_CHECK(mb.tokens, "micro-batch without tokens (internal error)");
  DSV3_CHECK(!(mb.loss_weights && mb.ce_coef), "a micro-batch takes loss weights or CE "
             "coefficients, not both (internal error)");
  DSV3_CHECK(mb.d.B == B && mb.d.T == T, "micro-batch dims differ from the pass (internal error)");
  if (TensorParallel* sp = seq_parallel(p))
    DSV3_CHECK(N % sp->size() == 0, "--sp splits the ", N, " rows of a micro-batch (batch x "
               "seq_len) over ", sp->size(), " tp ranks: choose a batch or seq_len that makes it a "
               "multiple of ", sp->size());
  std::vector<int32_t> in(N), tg(N);
  p.row_weight.assign(N, 0.0);
  p.targets = 0;
  p.weight_sum = 0;
  for (int b = 0; b < B; b++)
    for (int t = 0; t < T; t++) {
      const int32_t x = mb.tokens[size_t(b) * (T + 1) + t], y = mb.tokens[size_t(b) * (T + 1) + t + 1];
      DSV3_CHECK(x >= 0 && x < V, "token id ", x, " outside the vocabulary (", V, ")");
      DSV3_CHECK(y < V, "token id ", y, " outside the vocabulary (", V, ")");
      const int n = b * T + t;
      in[n] = x;
      tg[n] = y;
      if (mb.ce_coef) {
        const float cf = mb.ce_coef[n];
        DSV3_CHECK(std::isfinite(cf), "CE coefficient ", cf, " at row ", b, " position ", t);
        if (y >= 0 && cf != 0) p.row_weight[n] = cf, p.targets++;
        continue;
      }
      const float wt = mb.loss_weights ? mb.loss_weights[n] : 1.0f;
      DSV3_CHECK(std::isfinite(wt) && wt >= 0, "loss weight ", wt, " at row ", b, " position ", t,
                 " (weights must be finite and >= 0)");
      if (y >= 0 && wt > 0) {
        p.row_weight[n] = wt;
        p.weight_sum += wt;
        p.targets++;
      }
    }
  if (mb.ce_coef) p.weight_sum = 1;  // the objective is the plain sum of coef * CE
  DSV3_CHECK(!mb.soft || (p.ws.config().soft_targets && !mb.ce_coef), "soft targets need a "
             "workspace built for them and loss weights, not CE coefficients (internal error)");
  p.soft = mb.soft;
  upload(p, p.ws.inputs, in);
  upload(p, p.ws.targets, tg);
  std::vector<double> scale(N);
  for (int n = 0; n < N; n++) scale[n] = p.weight_sum > 0 ? p.grad_scale * p.row_weight[n] / p.weight_sum : 0.0;
  upload_scale(p, p.ws.row_scale, scale);

  const int D = mtp && p.ws.config().head && !mb.ce_coef ? c.mtp_depth : 0;
  p.mtp_row_weight.assign(D, {});
  p.mtp_weight_sum.assign(D, 0.0);
  const double per_module = p.loss.mtp_weight / std::max(D, 1);
  for (int k = 1; k <= D; k++) {
    MtpActs& m = p.ws.mtp[k - 1];
    std::vector<int32_t> tok(N), tgt(N);
    std::vector<double>& wk = p.mtp_row_weight[k - 1];
    wk.assign(N, 0.0);
    double& sum = p.mtp_weight_sum[k - 1];
    for (int b = 0; b < B; b++)
      for (int t = 0; t < T; t++) {
        const int32_t* row = mb.tokens + size_t(b) * (T + 1);
        const int n = b * T + t;
        // positions past the end of the row embed token 0 and predict nothing (docs/decisions)
        const int32_t x = t + k <= T ? row[t + k] : 0;
        const int32_t y = t + k + 1 <= T ? row[t + k + 1] : -1;
        tok[n] = x >= 0 ? x : 0;
        tgt[n] = x >= 0 ? y : -1;
        const float wt = t + k < T ? (mb.loss_weights ? mb.loss_weights[size_t(b) * T + t + k] : 1.0f) : 0.0f;
        if (tgt[n] >= 0 && wt > 0) wk[n] = wt, sum += wt;
        else tgt[n] = -1;
      }
    upload(p, m.tok, tok);
    upload(p, m.tgt, tgt);
    for (int n = 0; n < N; n++) scale[n] = sum > 0 ? p.grad_scale * per_module * wk[n] / sum : 0.0;
    upload_scale(p, m.row_scale, scale);
  }
}

void embed_forward(const Pass& p) {
  if (TensorParallel* sp = seq_parallel(p)) {  // every row's lookup, reduce-scattered to this rank's
    const int N = p.d.N(), C = p.w.config().hidden, V = p.w.config().vocab;
    const size_t NC = size_t(N) * C;
    const Tensor full = p.ws.sp_rows.slice(0, NC);
    embedding_shard_forward(p.ex(), full, p.ws.inputs, p.w.params().embed, sp->rank() * V, V, N, C);
    sp->reduce_scatter(p.ex(), full, p.ws.resid[0].slice(0, NC / sp->size()));
    return;
  }
  embed_lookup(p.ex(), p.ws.tensor_parallel(), p.ws.resid[0], p.ws.inputs, p.w.params().embed,
               p.d.N(), p.w.config().hidden, p.w.config().vocab);
}

void blocks_forward(const Pass& p, int l0, int l1) {
  const BlockCtx k = p.block_ctx();
  for (int l = l0; l < l1; l++) {
    const int mi = p.ws.moe_index_of_layer(l);
    block_forward(k, p.ws.resid[l + 1], p.ws.resid[l], p.w.params().blocks[l], p.ws.block_acts(l),
                  mi >= 0 ? p.ws.moe_out(mi) : MoeStatsOut{});
  }
}

double head_loss(const Pass& p, const ForwardOptions& opt) {
  const ModelConfig& c = p.w.config();
  const size_t NC = size_t(p.d.N()) * c.hidden;
  const bool bwd = p.g != nullptr;
  const Tensor dres = bwd ? p.ws.dres.slice(0, NC) : Tensor{};
  if (bwd) backend::zero(p.ex(), dres);
  if (TensorParallel* sp = seq_parallel(p)) {  // every row of the last block's output
    const size_t nC = NC / sp->size();
    backend::copy(p.ex(), p.ws.sp_final.slice(sp->rank() * nC, nC), p.ws.resid[c.layers].slice(0, nC));
    sp->all_gather(p.ex(), p.ws.sp_final.slice(0, NC));
  }
  HeadIo io{head_input(p), p.w.params().norm, bwd ? p.g->norm : Tensor{},
            p.ws.targets,         p.ws.row_scale,    dres,
            opt.logits};
  io.soft = p.soft;
  io.tp = p.ws.tensor_parallel();
  head_forward_backward(p.ex(), c, p.w.params().head, bwd ? p.g->head : Tensor{}, io, p.ws.head,
                        p.d, bwd);
  if (p.soft) p.distill_loss = weighted_loss(p, p.ws.head.kd_losses, p.row_weight, p.weight_sum, nullptr);
  return weighted_loss(p, p.ws.head.losses, p.row_weight, p.weight_sum, opt.token_logprobs);
}

namespace {
MtpIo mtp_io(const Pass& p, int k, const ForwardOptions& opt) {
  const ModelConfig& c = p.w.config();
  const bool bwd = p.g != nullptr;
  MtpIo io;
  io.hprev = k == 1 ? head_input(p) : p.ws.mtp[k - 2].hout;
  if (bwd) io.dprev = k == 1 ? p.ws.dres : p.ws.mtp[k - 2].dres;
  io.embed_w = p.w.params().embed;
  io.head_w = p.w.params().head;
  if (bwd) io.embed_g = p.g->embed, io.head_g = p.g->head;
  if (opt.mtp_logits) io.logits_out = opt.mtp_logits + size_t(k - 1) * p.d.N() * c.vocab;
  return io;
}
}  // namespace

double mtp_forward(const Pass& p, const ForwardOptions& opt) {
  const int D = int(p.mtp_weight_sum.size());
  BlockCtx bk = p.block_ctx();
  bk.sp = false;  // the MTP modules run on every row (the head's gathered input)
  double total = 0;
  for (int k = 1; k <= D; k++) {
    const int mi = p.ws.moe_index_of_mtp(k);
    mtp_forward(bk, p.w.params().mtp[k - 1], p.g ? &p.g->mtp[k - 1] : nullptr, mtp_io(p, k, opt),
                p.ws.mtp[k - 1], mi >= 0 ? p.ws.moe_out(mi) : MoeStatsOut{});
    total += weighted_loss(p, p.ws.mtp[k - 1].head.losses, p.mtp_row_weight[k - 1],
                           p.mtp_weight_sum[k - 1], nullptr);
  }
  return D > 0 ? total / D : 0.0;
}

void mtp_backward(const Pass& p) {
  const int D = int(p.mtp_weight_sum.size());
  BlockCtx bk = p.block_ctx();
  bk.sp = false;
  for (int k = D; k >= 1; k--)
    mtp_backward(bk, p.w.params().mtp[k - 1], p.g->mtp[k - 1], mtp_io(p, k, {}), p.ws.mtp[k - 1],
                 p.ws.scratch, p.ws.mtp_scratch, p.grad_scale);
  if (TensorParallel* sp = seq_parallel(p)) {  // the head's gradient is whole: keep this rank's rows
    const size_t nC = size_t(p.d.N()) * p.w.config().hidden / sp->size(), r = size_t(sp->rank());
    if (r > 0) backend::copy(p.ex(), p.ws.dres.slice(0, nC), p.ws.dres.slice(r * nC, nC));
  }
}

void blocks_backward(const Pass& p, int l0, int l1) {
  const BlockCtx k = p.block_ctx();
  const bool rerun = p.ws.config().recompute == Recompute::Block;
  for (int l = l1 - 1; l >= l0; l--) {
    const BlockParams& w = p.w.params().blocks[l];
    if (rerun) {
      const int mi = p.ws.moe_index_of_layer(l);
      block_forward(k, p.ws.resid[l + 1], p.ws.resid[l], w, p.ws.block_acts(l),
                    mi >= 0 ? p.ws.moe_out(mi) : MoeStatsOut{});
    }
    block_backward(k, p.ws.dres, p.ws.resid[l], w, p.g->blocks[l], p.ws.block_acts(l),
                   p.ws.scratch, p.grad_scale);
  }
}

void embed_backward(const Pass& p) {
  if (TensorParallel* sp = seq_parallel(p)) {  // every row's gradient, gathered
    const int N = p.d.N(), C = p.w.config().hidden, V = p.w.config().vocab;
    const size_t nC = size_t(N) * C / sp->size();
    const Tensor full = p.ws.sp_rows.slice(0, size_t(N) * C);
    backend::copy(p.ex(), full.slice(sp->rank() * nC, nC), p.ws.dres.slice(0, nC));
    sp->all_gather(p.ex(), full);
    embedding_shard_backward(p.ex(), p.g->embed, full, p.ws.inputs, sp->rank() * V, V, N, C);
    return;
  }
  embed_lookup_backward(p.ex(), p.ws.tensor_parallel(), p.g->embed, p.ws.dres, p.ws.inputs,
                        p.d.N(), p.w.config().hidden, p.w.config().vocab);
}

std::vector<MoeLayerStats> moe_stats(const Pass& p) {
  const ModelConfig& c = p.w.config();
  std::vector<MoeLayerStats> out(p.ws.n_moe);
  if (p.ws.n_moe == 0) return out;
  std::vector<int64_t> loads(size_t(p.ws.n_moe) * c.experts);
  std::vector<double> stats(size_t(p.ws.n_moe) * 2);
  backend::copy(p.ex(), host_tensor(loads), p.ws.moe_loads.slice(0, loads.size()));
  backend::copy(p.ex(), host_tensor(stats), p.ws.moe_stats.slice(0, stats.size()));
  for (int i = 0; i < p.ws.n_moe; i++) {
    out[i].loads.assign(loads.begin() + size_t(i) * c.experts, loads.begin() + size_t(i + 1) * c.experts);
    out[i].balance_loss = stats[2 * i];
    out[i].entropy = stats[2 * i + 1];
  }
  return out;
}

namespace {
// What a captured region depends on besides the workspace's buffers: the shape, the weights and
// gradients it reads and writes, and the scalars baked into its kernels (the loss scale reaches
// the router's backward as dbalance).
uint64_t graph_key(const Pass& p, int region) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](uint64_t v) { h = (h ^ v) * 1099511628211ull; };
  mix(uint64_t(region));
  mix(uint64_t(p.d.B));
  mix(uint64_t(p.d.T));
  mix(reinterpret_cast<uintptr_t>(p.w.data().data));
  mix(p.g ? reinterpret_cast<uintptr_t>(p.g->embed.data) : 0);
  uint32_t scale;
  std::memcpy(&scale, &p.grad_scale, 4);
  mix(scale);
  uint64_t alpha;
  std::memcpy(&alpha, &p.loss.balance_alpha, 8);
  mix(alpha);
  return h;
}

LossReport run(Pass& p, const MicroBatch& mb, const ForwardOptions& opt,
               const std::function<void(int)>& done = {}) {
  const ModelConfig& c = p.w.config();
  DSV3_CHECK(p.ws.config().embed && p.ws.config().head && p.ws.config().layer_begin == 0 &&
                 p.ws.layer_end() == c.layers,
             "a whole-model pass needs a workspace for the whole model (internal error)");
  const bool with_mtp = opt.mtp || p.g;  // training always trains the MTP modules
  load_batch(p, mb, with_mtp);
  // device work only (no host reads): on CUDA with cuda_graphs, one graph launch
  p.ws.graphs.run(p.ex(), graph_key(p, 0), [&] {
    embed_forward(p);
    blocks_forward(p, 0, c.layers);
  });
  LossReport rep;
  rep.targets = p.targets;
  rep.loss = head_loss(p, opt);
  rep.mtp_loss = mtp_forward(p, opt);
  rep.moe = moe_stats(p);  // before a block recompute rewrites them (with the same values)
  if (!with_mtp) {  // the MTP blocks' statistics are not from this pass
    const int main_moe = int(rep.moe.size()) - (c.experts > 0 ? c.mtp_depth : 0);
    rep.moe.resize(std::max(main_moe, 0));
  }
  for (const auto& s : rep.moe) rep.balance_loss += s.balance_loss;
  rep.total = rep.loss + p.loss.mtp_weight * rep.mtp_loss + rep.balance_loss;
  if (p.soft) {
    rep.distill_loss = p.distill_loss;
    rep.total += p.soft->alpha * (rep.distill_loss - rep.loss);
  }
  if (!p.g) return rep;
  mtp_backward(p);
  if (!done) {  // one region: a CUDA graph when config().cuda_graphs
    p.ws.graphs.run(p.ex(), graph_key(p, 1), [&] {
      blocks_backward(p, 0, c.layers);
      embed_backward(p);
    });
    return rep;
  }
  // layer by layer, telling the caller (gradient all-reduce overlap) as each finishes: eager
  done(1);
  for (int l = c.layers - 1; l >= 0; l--) {
    blocks_backward(p, l, l + 1);
    done(1 + c.layers - l);
  }
  embed_backward(p);
  done(c.layers + 2);
  return rep;
}
}  // namespace

LossReport forward(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                   const MicroBatch& mb, const ForwardOptions& opt) {
  Pass p(w, ws, loss, mb.d);
  return run(p, mb, opt);
}

LossReport forward_backward(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                            const ModelParams& grads, const MicroBatch& mb, float grad_scale,
                            const std::function<void(int)>& backward_done) {
  Pass p(w, ws, loss, mb.d, &grads, grad_scale);
  return run(p, mb, {}, backward_done);
}

}  // namespace dsv3
