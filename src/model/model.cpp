#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"

namespace dsv3 {

namespace {
constexpr int kHeadChunk = 256;  // rows of logits alive at once: the (N, V) matrix never exists
}

const char* recompute_name(Recompute r) { return r == Recompute::None ? "none" : "block"; }
Recompute parse_recompute(const std::string& s) {
  if (s == "none" || s == "off") return Recompute::None;
  if (s == "block" || s == "full" || s == "on") return Recompute::Block;
  fail("unknown recompute mode '", s, "' (expected none or block)");
}

ModelWeights bind_model(const ModelConfig& c, const ParamTable& t, float* base) {
  ModelWeights w;
  w.embed = base + t.at("model.embed_tokens.weight").offset;
  for (int l = 0; l < c.layers; l++) w.blocks.push_back(bind_block(t, base, l, c.is_moe_layer(l), c));
  for (int k = 1; k <= c.mtp_depth; k++) {
    const int hf = c.layers + k - 1;
    const std::string p = "model.layers." + std::to_string(hf);
    MtpWeights m;
    m.enorm = base + t.at(p + ".enorm.weight").offset;
    m.hnorm = base + t.at(p + ".hnorm.weight").offset;
    m.eh_proj = base + t.at(p + ".eh_proj.weight").offset;
    m.block = bind_block(t, base, hf, c.experts > 0, c);
    m.head_norm = base + t.at(p + ".shared_head.norm.weight").offset;
    w.mtp.push_back(m);
  }
  w.norm = base + t.at("model.norm.weight").offset;
  w.head = base + t.at("lm_head.weight").offset;
  return w;
}

// ---------------------------------------------------------------------------------------------
// Activation layout

struct Model::Acts {
  std::vector<float*> resid;       // L+1 of (N,C): block inputs, resid[L] = last block output
  std::vector<BlockActs> blocks;   // L, or 1 shared when recomputing
  float *xnf, *rstd_f;             // final norm (N,C), (N)
  float* logits;                   // (kHeadChunk, V)
  float *dres, *dxn;               // (N,C) each
  BlockScratch scratch;
  int32_t *inputs, *targets;       // (N)
  struct Mtp {
    int32_t *tok, *tgt;            // (N) embedded token and target of each position
    float *e, *cat, *e_rstd, *h_rstd, *hin, *hout, *xn, *rstd, *dres;
    BlockActs blk;
  };
  std::vector<Mtp> mtp;
  float *dcat, *de;                // (N,2C), (N,C)
};

namespace {
void layout(Model::Acts& a, Arena& ar, const ModelConfig& c, Dims d, Recompute r);
}

struct Model::HeadIo {
  const float* x;          // (N,C) input to the head's norm
  float* norm_w;           // (C)
  float* norm_g;           // (C) its gradient
  float* xn;               // (N,C) normalised (saved)
  float* rstd;             // (N)
  const int32_t* targets;  // (N), < 0 ignored
  float weight;            // d(total)/d(this mean CE) * grad_scale
  float* dx;               // (N,C) += gradient w.r.t. x (backward only)
  float* logits_out;       // optional (N,V)
  int64_t count;           // valid targets
};

size_t Model::measure_activation_floats(const ModelConfig& c, Dims d, Recompute r) {
  Acts a;
  Arena ar;
  layout(a, ar, c, d, r);
  return ar.used;
}

namespace {
void layout(Model::Acts& a, Arena& ar, const ModelConfig& c, Dims d, Recompute r) {
  const size_t N = d.N(), C = c.hidden;
  a.resid.resize(c.layers + 1);
  for (auto& p : a.resid) p = ar.f(N * C);
  a.blocks.resize(r == Recompute::Block ? std::min(c.layers, 1) : c.layers);
  if (r == Recompute::Block && c.layers > 0) {
    // one set of buffers big enough for either kind of block: lay out the larger kind
    const bool moe = c.experts > 0 && c.dense_layers < c.layers;
    alloc_block_acts(a.blocks[0], ar, c, d, moe);
    if (moe && c.dense_layers > 0) {  // dense FFN buffers too, for the first blocks
      alloc_ffn_acts(a.blocks[0].dense, ar, N, c.dense_inter);
    }
  } else {
    for (int l = 0; l < c.layers; l++) alloc_block_acts(a.blocks[l], ar, c, d, c.is_moe_layer(l));
  }
  a.xnf = ar.f(N * C);
  a.rstd_f = ar.f(N);
  a.logits = ar.f(size_t(kHeadChunk) * c.vocab);
  a.dres = ar.f(N * C);
  a.dxn = ar.f(N * C);
  alloc_block_scratch(a.scratch, ar, c, d);
  a.inputs = ar.i32(N);
  a.targets = ar.i32(N);
  a.mtp.resize(c.mtp_depth);
  for (auto& m : a.mtp) {
    m.tok = ar.i32(N);
    m.tgt = ar.i32(N);
    m.e = ar.f(N * C);
    m.cat = ar.f(N * 2 * C);
    m.e_rstd = ar.f(N);
    m.h_rstd = ar.f(N);
    m.hin = ar.f(N * C);
    m.hout = ar.f(N * C);
    m.xn = ar.f(N * C);
    m.rstd = ar.f(N);
    m.dres = ar.f(N * C);
    alloc_block_acts(m.blk, ar, c, d, c.experts > 0);
  }
  if (c.mtp_depth > 0) {
    a.dcat = ar.f(N * 2 * C);
    a.de = ar.f(N * C);
  }
}
}  // namespace

// ---------------------------------------------------------------------------------------------

Model::Model(const ModelConfig& c, const TrainingLossConfig& loss, Dims max_dims,
             Recompute recompute, Exec ex)
    : c_(c), loss_(loss), max_(max_dims), recompute_(recompute), ex_(ex) {
  validate(c_);
  DSV3_CHECK(max_.B > 0 && max_.T > 0, "batch and sequence length must be positive");
  DSV3_CHECK(max_.T <= c_.max_seq, "sequence length ", max_.T, " exceeds max_seq ", c_.max_seq);
  table_ = build_param_table(c_);
  params_ = static_cast<float*>(device_alloc(ex_.device, table_.total * sizeof(float)));
  grads_ = static_cast<float*>(device_alloc(ex_.device, table_.total * sizeof(float)));
  w_ = bind_model(c_, table_, params_);
  g_ = bind_model(c_, table_, grads_);
  int moe_layers = 0;
  for (int l = 0; l < c_.layers; l++) moe_layers += c_.is_moe_layer(l);
  if (c_.experts > 0) moe_layers += c_.mtp_depth;
  stats_.resize(moe_layers);
  reset_loads();
  acts_ = std::make_unique<Acts>();
  act_floats_ = measure_activation_floats(c_, max_, recompute_);
  act_mem_ = static_cast<float*>(device_alloc(ex_.device, act_floats_ * sizeof(float)));
  Arena ar{act_mem_, act_floats_, 0};
  layout(*acts_, ar, c_, max_, recompute_);
}

Model::~Model() {
  device_free(ex_.device, params_);
  device_free(ex_.device, grads_);
  device_free(ex_.device, act_mem_);
}

void Model::zero_grads() { device_zero(ex_.device, grads_, table_.total * sizeof(float)); }

void Model::reset_loads() {
  for (auto& s : stats_) s.loads.assign(c_.experts, 0);
}

std::vector<std::string> Model::moe_layer_names() const {
  std::vector<std::string> names;
  for (int l = 0; l < c_.layers; l++)
    if (c_.is_moe_layer(l)) names.push_back("layer " + std::to_string(l));
  if (c_.experts > 0)
    for (int k = 1; k <= c_.mtp_depth; k++) names.push_back("mtp " + std::to_string(k));
  return names;
}

LossReport Model::forward_backward(const int32_t* tokens, Dims d, float grad_scale) {
  return run(tokens, d, true, grad_scale, nullptr, nullptr, true);
}

LossReport Model::forward(const int32_t* tokens, Dims d, float* logits, float* mtp_logits) {
  return run(tokens, d, false, 0.0f, logits, mtp_logits, true);
}

void Model::next_token_logits(const int32_t* tokens, int T, float* logits) {
  DSV3_CHECK(T >= 1 && T <= max_.T, "context of ", T, " tokens (max ", max_.T, ")");
  std::vector<int32_t> row(tokens, tokens + T);
  row.push_back(0);  // dummy target
  std::vector<float> all(size_t(T) * c_.vocab);
  run(row.data(), {1, T}, false, 0.0f, all.data(), nullptr, false);
  std::memcpy(logits, all.data() + size_t(T - 1) * c_.vocab, sizeof(float) * c_.vocab);
}

// Final norm + output head + cross-entropy over row chunks; backward right away (the logits of a
// chunk are overwritten by their gradient), so only kHeadChunk rows of logits ever exist.
double Model::head_loss(const HeadIo& io, Dims d, bool backward) {
  const int N = d.N(), C = c_.hidden, V = c_.vocab;
  rmsnorm_forward(ex_, io.xn, io.rstd, io.x, io.norm_w, {N, C, C, C}, float(c_.rms_eps));
  const float dloss = io.count > 0 ? io.weight / float(io.count) : 0.0f;
  float* dxn = acts_->dxn;
  if (backward) std::memset(dxn, 0, size_t(N) * C * sizeof(float));
  std::vector<float> losses(kHeadChunk);
  double sum = 0;
  for (int r0 = 0; r0 < N; r0 += kHeadChunk) {
    const int rows = std::min(kHeadChunk, N - r0);
    float* lg = io.logits_out ? io.logits_out + size_t(r0) * V : acts_->logits;
    const float* xn = io.xn + size_t(r0) * C;
    linear_forward(ex_, lg, xn, w_.head, rows, C, V);
    cross_entropy_forward(ex_, losses.data(), lg, io.targets + r0, rows, V);
    for (int i = 0; i < rows; i++) sum += losses[i];
    if (!backward) continue;
    cross_entropy_backward(ex_, acts_->logits, lg, io.targets + r0, dloss, rows, V);
    linear_backward(ex_, dxn + size_t(r0) * C, g_.head, acts_->logits, xn, w_.head, rows, C, V);
  }
  if (backward)
    rmsnorm_backward(ex_, io.dx, io.norm_g, dxn, io.x, io.norm_w, io.rstd, {N, C, C, C});
  return io.count > 0 ? sum / double(io.count) : 0.0;
}

LossReport Model::run(const int32_t* tokens, Dims d, bool backward, float grad_scale,
                      float* logits_out, float* mtp_logits_out, bool with_mtp) {
  // Every buffer is sized by N = B*T or by B*T*T = N*T, so more rows of shorter sequences fit
  // (sequence-length warmup) as long as N and T stay within the maxima.
  DSV3_CHECK(d.T <= max_.T && d.N() <= max_.N(), "batch ", d.B, "x", d.T,
             " exceeds the model's buffers ", max_.B, "x", max_.T);
  Acts& a = *acts_;
  const int N = d.N(), C = c_.hidden, T = d.T, L = c_.layers;
  const size_t NC = size_t(N) * C;
  const RopeTables rope = make_rope_tables(c_, T);
  const BlockCtx ctx{ex_, c_, loss_, d, rope};
  const bool recompute = recompute_ == Recompute::Block && backward;
  auto block_acts = [&](int l) -> BlockActs& { return a.blocks[recompute_ == Recompute::Block ? 0 : l]; };

  int64_t valid = 0;
  for (int b = 0; b < d.B; b++)
    for (int t = 0; t < T; t++) {
      const int32_t x = tokens[size_t(b) * (T + 1) + t], y = tokens[size_t(b) * (T + 1) + t + 1];
      DSV3_CHECK(x >= 0 && x < c_.vocab, "token id ", x, " outside the vocabulary (", c_.vocab, ")");
      DSV3_CHECK(y < c_.vocab, "token id ", y, " outside the vocabulary (", c_.vocab, ")");
      a.inputs[b * T + t] = x;
      a.targets[b * T + t] = y;
      valid += y >= 0;
    }

  // ---- main model forward
  embedding_forward(ex_, a.resid[0], a.inputs, w_.embed, N, C);
  double balance = 0;
  size_t moe_i = 0;
  for (int l = 0; l < L; l++) {
    MoeStats dense_layer;  // dense blocks have no router
    MoeStats& st = w_.blocks[l].moe ? stats_[moe_i++] : dense_layer;
    block_forward(ctx, a.resid[l + 1], a.resid[l], w_.blocks[l], block_acts(l), st, backward);
    if (w_.blocks[l].moe) balance += st.balance_loss;
  }
  LossReport rep;
  rep.targets = valid;
  if (backward) std::memset(a.dres, 0, NC * sizeof(float));
  HeadIo main{a.resid[L], w_.norm,   g_.norm,    a.xnf,      a.rstd_f, a.targets,
              grad_scale, a.dres,    logits_out, valid};
  rep.loss = head_loss(main, d, backward);

  // ---- MTP modules: forward all, each head's backward at once, then blocks from D down to 1
  const int D = with_mtp ? c_.mtp_depth : 0;
  const float mtp_w = float(loss_.mtp_weight) / std::max(D, 1);
  for (int k = 1; k <= D; k++) {
    Acts::Mtp& m = a.mtp[k - 1];
    const MtpWeights& mw = w_.mtp[k - 1];
    int64_t count = 0;
    for (int b = 0; b < d.B; b++)
      for (int t = 0; t < T; t++) {
        const int32_t* row = tokens + size_t(b) * (T + 1);
        m.tok[b * T + t] = t + k <= T ? row[t + k] : 0;
        m.tgt[b * T + t] = t + k + 1 <= T ? row[t + k + 1] : -1;
        DSV3_CHECK(m.tok[b * T + t] >= 0, "token id ", m.tok[b * T + t], " is negative");
        count += m.tgt[b * T + t] >= 0;
      }
    const float* hprev = k == 1 ? a.resid[L] : a.mtp[k - 2].hout;
    embedding_forward(ex_, m.e, m.tok, w_.embed, N, C);
    const float eps = float(c_.rms_eps);
    rmsnorm_forward(ex_, m.cat, m.e_rstd, m.e, mw.enorm, {N, C, C, 2 * C}, eps);
    rmsnorm_forward(ex_, m.cat + C, m.h_rstd, hprev, mw.hnorm, {N, C, C, 2 * C}, eps);
    linear_forward(ex_, m.hin, m.cat, mw.eh_proj, N, 2 * C, C);
    MoeStats scratch_stats;
    MoeStats& st = c_.experts > 0 ? stats_[moe_i++] : scratch_stats;
    block_forward(ctx, m.hout, m.hin, mw.block, m.blk, st, backward);
    if (c_.experts > 0) balance += st.balance_loss;
    if (backward) std::memset(m.dres, 0, NC * sizeof(float));
    HeadIo io{m.hout, mw.head_norm, g_.mtp[k - 1].head_norm, m.xn, m.rstd, m.tgt,
              grad_scale * mtp_w, m.dres,
              mtp_logits_out ? mtp_logits_out + size_t(k - 1) * N * c_.vocab : nullptr, count};
    rep.mtp_loss += head_loss(io, d, backward) / D;
  }
  rep.balance_loss = balance;
  rep.total = rep.loss + loss_.mtp_weight * rep.mtp_loss + rep.balance_loss;
  if (!backward) return rep;

  const double dbal = grad_scale;
  for (int k = D; k >= 1; k--) {
    Acts::Mtp& m = a.mtp[k - 1];
    const MtpWeights& mw = w_.mtp[k - 1];
    const MtpWeights& mg = g_.mtp[k - 1];
    block_backward(ctx, m.dres, m.hin, mw.block, mg.block, m.blk, a.scratch, dbal);
    std::memset(a.dcat, 0, 2 * NC * sizeof(float));
    linear_backward(ex_, a.dcat, mg.eh_proj, m.dres, m.cat, mw.eh_proj, N, 2 * C, C);
    std::memset(a.de, 0, NC * sizeof(float));
    rmsnorm_backward(ex_, a.de, mg.enorm, a.dcat, m.e, mw.enorm, m.e_rstd, {N, C, C, 2 * C});
    embedding_backward(ex_, g_.embed, a.de, m.tok, N, C);
    float* dprev = k == 1 ? a.dres : a.mtp[k - 2].dres;
    const float* hprev = k == 1 ? a.resid[L] : a.mtp[k - 2].hout;
    rmsnorm_backward(ex_, dprev, mg.hnorm, a.dcat + C, hprev, mw.hnorm, m.h_rstd, {N, C, C, 2 * C});
  }

  // ---- main blocks backward, last to first
  for (int l = L - 1; l >= 0; l--) {
    if (recompute) {
      MoeStats unused;
      block_forward(ctx, a.resid[l + 1], a.resid[l], w_.blocks[l], block_acts(l), unused, false);
    }
    block_backward(ctx, a.dres, a.resid[l], w_.blocks[l], g_.blocks[l], block_acts(l), a.scratch,
                   dbal);
  }
  embedding_backward(ex_, g_.embed, a.dres, a.inputs, N, C);
  return rep;
}

}  // namespace dsv3
