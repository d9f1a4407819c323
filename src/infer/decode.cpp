#include "infer/decode.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "model/arena.h"
#include "ops/elementwise.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/latent_attention.h"
#include "ops/moe.h"
#include "ops/quant.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"

namespace dsv3 {

namespace {

// W_UK^T per head, (H, kv_lora, qk_nope), from kv_b_proj (H*(qk_nope+v_head), kv_lora): the
// query absorption is then q_lat[h] = q_nope[h] W_UK[h] = linear(q_nope[h], W_UK^T[h]). dtype:
// the compute dtype; an int8 kv_b (whose scales belong to its rows, not to W_UK^T's) is
// dequantised first, so the absorbed query runs in the compute dtype.
Buffer derive_w_uk_t(const Exec& ex, const ModelConfig& c, const Tensor& kv_b, DType dtype) {
  const int H = c.heads, nope = c.qk_nope, kvb = c.qk_nope + c.v_head, KV = c.kv_lora;
  const size_t es = dtype_size(dtype);
  Buffer host(Device::CPU, dtype, size_t(H) * kvb * KV), out_host(Device::CPU, dtype,
                                                                  size_t(H) * KV * nope);
  if (is_int8_weight(kv_b.dtype)) {
    Buffer raw(Device::CPU, kv_b.dtype, kv_b.numel);
    backend::copy(ex, raw.view(), kv_b);
    std::vector<float> f(host.numel());
    cpu::q8_dequantize(f.data(), size_t(KV), raw.view().data, H * kvb, KV);
    convert(Exec{Device::CPU}, host.view(), host_tensor(f));
  } else {
    backend::copy(ex, host.view(), kv_b);
  }
  const char* src = static_cast<const char*>(host.view().data);
  char* dst = static_cast<char*>(out_host.view().data);
  for (int h = 0; h < H; h++)
    for (int i = 0; i < nope; i++)      // row i of W_UK[h] (nope, kv_lora)
      for (int j = 0; j < KV; j++)      // -> row j, column i of W_UK^T[h] (kv_lora, nope)
        std::memcpy(dst + ((size_t(h) * KV + j) * nope + i) * es,
                    src + ((size_t(h) * kvb + i) * KV + j) * es, es);
  Buffer out(kv_b.device, dtype, out_host.numel());
  backend::copy(ex, out.view(), out_host.view());
  return out;
}

// The rows of one step (host): per sequence [row0, rows, pos0, page0], the pages, and per row
// its position and cache slot.
struct StepLayout {
  std::vector<LatentSeq> seqs;
  std::vector<int32_t> page_table, positions, slots;
  int rows = 0;
  void add(const KvCache& kv, const SeqCache& s, int pos0, int n) {
    seqs.push_back({rows, n, pos0, int32_t(page_table.size())});
    const int pages = kv.pages_for_tokens(pos0 + n);
    DSV3_CHECK(int(s.pages.size()) >= pages, "sequence has ", s.pages.size(), " cache pages, needs ",
               pages, " (internal error)");
    page_table.insert(page_table.end(), s.pages.begin(), s.pages.begin() + pages);
    for (int i = 0; i < n; i++) {
      positions.push_back(pos0 + i);
      slots.push_back(kv.slot(s, pos0 + i));
    }
    rows += n;
  }
};

}  // namespace

struct DecodeEngine::Impl {
  const ModelWeights& w;
  const ModelConfig& c;
  Exec ex;
  DType t;
  int R;      // max rows
  int S;      // max sequences
  int ctx;    // max context
  int page;   // tokens per cache page
  std::vector<Buffer> w_uk_t;  // per cached layer
  Buffer mem;
  // ---- workspace (rows up to R)
  Tensor ids, positions, slots, seqs, page_table, head_offsets, logit_rows;  // i32
  Tensor cos, sin;                // (ctx, qk_rope/2) accum
  Tensor x, h1, xn, out;          // (R, C)
  Tensor hidden;                  // (R, C) the last main step's final hidden states
  Tensor rstd;                    // (R) accum
  Tensor qa, qan;                 // (R, q_lora)
  Tensor q;                       // (R, H, qk_head)
  Tensor kv;                      // (R, kv_lora + qk_rope): the new cache rows
  Tensor q_nope_h;                // (H, R, qk_nope)
  Tensor q_lat_h;                 // (H, R, kv_lora)
  Tensor q_abs;                   // (R, H, kv_lora + qk_rope)
  Tensor o_lat;                   // (R, H, kv_lora)
  Tensor o_lat_h;                 // (H, R, kv_lora)
  Tensor o_h;                     // (H, R, v_head)
  Tensor o;                       // (R, H, v_head)
  FfnActs dense;
  MoeActs moe;
  Tensor moe_loads, moe_stats;
  Tensor e, cat;                  // MTP: (R, C), (R, 2C)
  Tensor head_x, head_xn, logits; // (S*, C), (S*, C), (S*, V) accum; S* = max logit rows
  Tensor targets, losses;         // (S*) i32, (S*) accum: step_logprobs
  int max_logit_rows;

  Impl(const ModelWeights& w_, const DecodeConfig& cfg, int ctx_)
      : w(w_), c(w_.config()), ex{w_.device()}, t(w_.dtype()), R(cfg.max_rows), S(cfg.max_seqs),
        ctx(ctx_), page(cfg.page_tokens),
        max_logit_rows(cfg.max_logit_rows > 0 ? cfg.max_logit_rows : 2 * cfg.max_seqs) {
    Arena measure;
    layout(measure);
    mem = Buffer(ex.device, DType::U8, measure.used);
    Arena ar{static_cast<char*>(mem.view().data), measure.used, 0, ex.device};
    layout(ar);
    rope_tables(ex, cos, sin, ctx, c.rope());
    const int cached = c.layers + (cfg.mtp ? 1 : 0);
    for (int l = 0; l < cached; l++) {
      const BlockParams& b = l < c.layers ? w.params().blocks[l] : w.params().mtp[0].block;
      w_uk_t.push_back(derive_w_uk_t(ex, c, b.attn.kv_b, w.dtype()));
    }
  }

  void layout(Arena& ar) {
    ar.device = ex.device;
    const size_t C = c.hidden, H = c.heads, Rz = R, Wd = c.kv_lora + c.qk_rope;
    const DType acc = accum_dtype(t);
    ids = ar.take(DType::I32, Rz);
    positions = ar.take(DType::I32, Rz);
    slots = ar.take(DType::I32, Rz);
    seqs = ar.take(DType::I32, size_t(S) * 4);
    page_table = ar.take(DType::I32, size_t(S) * ((ctx + page - 1) / page));
    head_offsets = ar.take(DType::I32, H + 1);
    logit_rows = ar.take(DType::I32, Rz);
    cos = ar.take(acc, size_t(ctx) * (c.qk_rope / 2));
    sin = ar.take(acc, size_t(ctx) * (c.qk_rope / 2));
    x = ar.take(t, Rz * C);
    h1 = ar.take(t, Rz * C);
    xn = ar.take(t, Rz * C);
    out = ar.take(t, Rz * C);
    hidden = ar.take(t, Rz * C);
    rstd = ar.take(acc, Rz);
    if (c.q_lora > 0) {
      qa = ar.take(t, Rz * c.q_lora);
      qan = ar.take(t, Rz * c.q_lora);
    }
    q = ar.take(t, Rz * c.q_dim());
    kv = ar.take(t, Rz * Wd);
    q_nope_h = ar.take(t, Rz * H * c.qk_nope);
    q_lat_h = ar.take(t, Rz * H * c.kv_lora);
    q_abs = ar.take(t, Rz * H * Wd);
    o_lat = ar.take(t, Rz * H * c.kv_lora);
    o_lat_h = ar.take(t, Rz * H * c.kv_lora);
    o_h = ar.take(t, Rz * H * c.v_head);
    o = ar.take(t, Rz * H * c.v_head);
    if (c.dense_layers > 0 || c.experts == 0) alloc_ffn_acts(dense, ar, t, Rz, c.dense_inter);
    if (c.experts > 0) {
      alloc_moe_acts(moe, ar, c, t, Dims{1, R});
      moe_loads = ar.take(DType::I64, size_t(c.experts));
      moe_stats = ar.take(DType::F64, 2);
    }
    e = ar.take(t, Rz * C);
    cat = ar.take(t, Rz * 2 * C);
    head_x = ar.take(t, size_t(max_logit_rows) * C);
    head_xn = ar.take(t, size_t(max_logit_rows) * C);
    logits = ar.take(acc, size_t(max_logit_rows) * c.vocab);
    targets = ar.take(DType::I32, size_t(max_logit_rows));
    losses = ar.take(acc, size_t(max_logit_rows));
  }

  template <typename V>
  void upload(const Tensor& dst, const std::vector<V>& host) {
    DSV3_CHECK(host.size() <= dst.numel, "decode step holds ", host.size(), " entries, room for ",
               dst.numel, " (internal error)");
    if (!host.empty()) backend::copy(ex, dst.slice(0, host.size()), host_tensor(host));
  }

  void upload_layout(const StepLayout& L) {
    upload(positions, L.positions);
    upload(slots, L.slots);
    DSV3_CHECK(L.page_table.size() <= page_table.numel, "decode step page table of ",
               L.page_table.size(), " entries, room for ", page_table.numel, " (internal error)");
    if (!L.page_table.empty()) upload(page_table, L.page_table);
    std::vector<int32_t> sq(L.seqs.size() * 4);
    std::memcpy(sq.data(), L.seqs.data(), sq.size() * sizeof(int32_t));
    upload(seqs, sq);
    std::vector<int32_t> off(c.heads + 1);
    for (int h = 0; h <= c.heads; h++) off[h] = h * L.rows;
    upload(head_offsets, off);
  }

  // Absorbed MLA over the step's rows: out (N, C) = attention(xn (N, C)), cache layer `layer`.
  void attention(const AttnParams& a, int layer, const KvCache& kvc, const StepLayout& L) {
    const int N = L.rows, C = c.hidden, H = c.heads, nope = c.qk_nope, rope = c.qk_rope;
    const int KV = c.kv_lora, Wd = KV + rope, dqk = c.qk_head(), dv = c.v_head;
    const float eps = float(c.rms_eps);
    if (c.q_lora > 0) {
      linear_forward(ex, qa, xn, a.q_a, N, C, c.q_lora);
      rmsnorm_forward(ex, qan, rstd, qa, a.q_a_norm, {N, c.q_lora, c.q_lora, c.q_lora}, eps);
      linear_forward(ex, q, qan, a.q_b, N, c.q_lora, c.q_dim());
    } else {
      linear_forward(ex, q, xn, a.q_proj, N, C, c.q_dim());
    }
    rope_forward_at(ex, q, cos, sin, positions, {N, ctx, H, H * dqk, dqk, nope, rope});
    // the new cache rows: [rmsnorm(c_kv) | rope(k_pe)], the norm in place
    linear_forward(ex, kv, xn, a.kv_a, N, C, Wd);
    rope_forward_at(ex, kv, cos, sin, positions, {N, ctx, 1, Wd, Wd, KV, rope});
    rmsnorm_forward(ex, kv, rstd, kv, a.kv_a_norm, {N, KV, Wd, Wd}, eps);
    const Tensor cache = kvc.layer(layer);
    latent_cache_write(ex, cache, kv, slots, N, Wd);
    // q_lat[h] = q_nope[h] W_UK[h]: head-major rows for one grouped GEMM over the heads
    swap_axes(ex, q_nope_h, q, {N, H, nope, dqk, 0, nope, 0});
    grouped_linear_forward(ex, q_lat_h, q_nope_h, w_uk_t[size_t(layer)].view(), head_offsets,
                           {H, nope, KV, size_t(KV) * nope});
    swap_axes(ex, q_abs, q_lat_h, {H, N, KV, KV, 0, Wd, 0});
    swap_axes(ex, q_abs, q, {1, N * H, rope, dqk, nope, Wd, KV});  // q_pe beside it
    latent_attention_forward(ex, o_lat, q_abs, cache, seqs, page_table,
                             {int(L.seqs.size()), N, H, KV, rope, kvc.page_tokens(),
                              c.attention_scale()});
    // o[h] = o_lat[h] W_UV[h]^T, W_UV[h] = kv_b rows h*(nope+v)+nope .. +v
    swap_axes(ex, o_lat_h, o_lat, {N, H, KV, KV, 0, KV, 0});
    // (int8 rows carry their own scales, so a range of rows is again an int8 matrix; its
    // strides are in bytes)
    const size_t row = is_int8_weight(a.kv_b.dtype) ? q8_row_bytes(KV) : size_t(KV);
    grouped_linear_forward(ex, o_h, o_lat_h, a.kv_b.slice(size_t(nope) * row), head_offsets,
                           {H, KV, dv, size_t(nope + dv) * row});
    swap_axes(ex, o, o_h, {H, N, dv, dv, 0, dv, 0});
    linear_forward(ex, out, o, a.o, N, H * dv, C);
  }

  // x (N, C) <- block(x), cache layer `layer`.
  void block(const BlockParams& b, int layer, const Tensor& xio, const KvCache& kvc,
             const StepLayout& L) {
    const int N = L.rows, C = c.hidden;
    const float eps = float(c.rms_eps);
    const size_t NC = size_t(N) * C;
    rmsnorm_forward(ex, xn, rstd, xio, b.in_norm, {N, C, C, C}, eps);
    attention(b.attn, layer, kvc, L);
    const Tensor hh = h1.slice(0, NC);
    backend::copy(ex, hh, out.slice(0, NC));
    add_inplace(ex, hh, xio.slice(0, NC));
    rmsnorm_forward(ex, xn, rstd, hh, b.post_norm, {N, C, C, C}, eps);
    if (b.moe) {
      TrainingLossConfig none;
      none.balance_alpha = 0;
      moe_forward(ex, out, xn, b.moe_p, moe, {moe_loads, moe_stats}, c, none, Dims{1, N});
    } else {
      ffn_forward(ex, out, xn, b.dense, dense, N, C);
    }
    backend::copy(ex, xio.slice(0, NC), out.slice(0, NC));
    add_inplace(ex, xio.slice(0, NC), hh);
  }

  // Logits (accum) of `rows` (indices into src) through norm_w and the head, to host fp32.
  void head(const Tensor& src, const std::vector<int32_t>& rows, const Tensor& norm_w,
            float* host) {
    const int n = int(rows.size()), C = c.hidden, V = c.vocab;
    if (n == 0) return;
    DSV3_CHECK(n <= max_logit_rows, "decode step asks for ", n, " logit rows, room for ",
               max_logit_rows, " (internal error)");
    upload(logit_rows, rows);
    moe_gather(ex, head_x, src, logit_rows, n, C);  // a row gather: head_x[i] = src[rows[i]]
    rmsnorm_forward(ex, head_xn, rstd, head_x, norm_w, {n, C, C, C}, float(c.rms_eps));
    const Tensor lg = logits.slice(0, size_t(n) * V);
    linear_forward(ex, lg, head_xn, w.params().head, n, C, V);
    const Tensor dst = host_tensor(host, size_t(n) * V);
    if (lg.device == Device::CPU) {
      convert(Exec{}, dst, lg);
    } else {
      Buffer stage(Device::CPU, lg.dtype, lg.numel);
      backend::copy(ex, stage.view(), lg);
      convert(Exec{}, dst, stage.view());
    }
  }

  // log p(tg[i]) at rows[i] (indices into src), through norm_w and the head, max_logit_rows
  // rows at a time, to host fp32.
  void head_logprobs(const Tensor& src, const std::vector<int32_t>& rows,
                     std::span<const int32_t> tg, const Tensor& norm_w, float* host) {
    const int C = c.hidden, V = c.vocab;
    DSV3_CHECK(tg.size() == rows.size(), "decode step has ", rows.size(), " logit rows and ",
               tg.size(), " targets");
    for (int32_t id : tg)
      DSV3_CHECK(id >= 0 && id < V, "target id ", id, " outside the vocabulary (", V, ")");
    const Exec host_ex{};
    for (size_t r0 = 0; r0 < rows.size(); r0 += size_t(max_logit_rows)) {
      const int n = int(std::min(rows.size() - r0, size_t(max_logit_rows)));
      upload(logit_rows, std::vector<int32_t>(rows.begin() + std::ptrdiff_t(r0),
                                              rows.begin() + std::ptrdiff_t(r0) + n));
      upload(targets, std::vector<int32_t>(tg.begin() + std::ptrdiff_t(r0),
                                           tg.begin() + std::ptrdiff_t(r0) + n));
      moe_gather(ex, head_x, src, logit_rows, n, C);
      rmsnorm_forward(ex, head_xn, rstd, head_x, norm_w, {n, C, C, C}, float(c.rms_eps));
      const Tensor lg = logits.slice(0, size_t(n) * V), ls = losses.slice(0, size_t(n));
      linear_forward(ex, lg, head_xn, w.params().head, n, C, V);
      cross_entropy_forward(ex, ls, lg, targets.slice(0, size_t(n)), n, V);  // -log p(target)
      float* out = host + r0;
      const Tensor dst = host_tensor(out, size_t(n));
      if (ls.device == Device::CPU) {
        convert(host_ex, dst, ls);
      } else {
        Buffer stage(Device::CPU, ls.dtype, ls.numel);
        backend::copy(ex, stage.view(), ls);
        convert(host_ex, dst, stage.view());
      }
      for (int i = 0; i < n; i++) out[i] = -out[i];
    }
  }
};

DecodeEngine::DecodeEngine(const ModelWeights& w, const DecodeConfig& cfg) : w_(w), cfg_(cfg) {
  const ModelConfig& c = w.config();
  DSV3_CHECK(cfg.max_rows >= 1 && cfg.max_seqs >= 1, "decode engine needs max_rows and max_seqs >= 1");
  // The latent cache's attention is dense (every cached position); a window/LSH model would
  // attend to keys its training never let it see.
  DSV3_CHECK(c.attention == AttentionKind::Dense, "the KV-cache decoder implements dense "
             "attention; this model was trained with ", attention_name(c.attention),
             " attention: sample it with --engine recompute (serving needs a dense model)");
  DSV3_CHECK(!cfg.mtp || c.mtp_depth >= 1, "speculative decoding needs a model with an MTP module "
             "(this one has mtp_depth 0)");
  max_ctx_ = cfg.max_context > 0 ? std::min(cfg.max_context, c.max_seq) : c.max_seq;
  const int layers = c.layers + (cfg.mtp ? 1 : 0);
  const int pages = KvCache::pages_for_bytes(c, w.dtype(), layers, cfg.page_tokens,
                                             cfg.kv_cache_bytes);
  cache_ = std::make_unique<KvCache>(c, w.dtype(), w.device(), layers, pages, cfg.page_tokens);
  impl_ = std::make_unique<Impl>(w, cfg, max_ctx_);
}

DecodeEngine::~DecodeEngine() = default;

size_t DecodeEngine::workspace_bytes() const { return impl_->mem.view().bytes(); }

void DecodeEngine::step(std::span<SeqStep> in, float* logits) {
  const std::vector<int32_t> rows = run_main(in);
  impl_->head(impl_->hidden, rows, w_.params().norm, logits);
}

void DecodeEngine::step_logprobs(std::span<SeqStep> in, std::span<const int32_t> targets,
                                 float* logprobs) {
  const std::vector<int32_t> rows = run_main(in);
  impl_->head_logprobs(impl_->hidden, rows, targets, w_.params().norm, logprobs);
}

std::vector<int32_t> DecodeEngine::run_main(std::span<SeqStep> in) {
  Impl& m = *impl_;
  const ModelConfig& c = w_.config();
  DSV3_CHECK(int(in.size()) <= cfg_.max_seqs, "decode step of ", in.size(), " sequences, at most ",
             cfg_.max_seqs);
  StepLayout L;
  std::vector<int32_t> ids, logit_rows;
  for (SeqStep& s : in) {
    const int n = int(s.tokens.size());
    DSV3_CHECK(n >= 1, "a sequence in a decode step has no new tokens (internal error)");
    DSV3_CHECK(s.seq->length + n <= max_ctx_, "sequence of ", s.seq->length + n,
               " tokens exceeds the context of ", max_ctx_);
    DSV3_CHECK(s.logit_rows >= 0 && s.logit_rows <= n, "logit rows ", s.logit_rows, " of ", n,
               " new tokens (internal error)");
    for (int32_t id : s.tokens)
      DSV3_CHECK(id >= 0 && id < c.vocab, "token id ", id, " outside the vocabulary (", c.vocab, ")");
    cache_->ensure(*s.seq, s.seq->length + n);
    s.row0 = L.rows;
    for (int i = n - s.logit_rows; i < n; i++) logit_rows.push_back(L.rows + i);
    L.add(*cache_, *s.seq, s.seq->length, n);
    ids.insert(ids.end(), s.tokens.begin(), s.tokens.end());
  }
  DSV3_CHECK(L.rows <= cfg_.max_rows, "decode step of ", L.rows, " tokens, at most ", cfg_.max_rows);
  if (L.rows == 0) return {};
  m.upload(m.ids, ids);
  m.upload_layout(L);
  const int C = c.hidden;
  embedding_forward(m.ex, m.hidden, m.ids, w_.params().embed, L.rows, C);
  for (int l = 0; l < c.layers; l++) m.block(w_.params().blocks[l], l, m.hidden, *cache_, L);
  for (SeqStep& s : in) s.seq->length += int(s.tokens.size());
  return logit_rows;
}

void DecodeEngine::mtp_step(std::span<const MtpStep> in, float* logits) {
  Impl& m = *impl_;
  const ModelConfig& c = w_.config();
  DSV3_CHECK(cfg_.mtp, "mtp_step without an MTP cache (internal error)");
  StepLayout L;
  std::vector<int32_t> ids, hrows, logit_rows;
  for (const MtpStep& s : in) {
    const int n = int(s.hidden_rows.size());
    DSV3_CHECK(n >= 1 && s.next_tokens.size() == size_t(n), "MTP step rows (internal error)");
    DSV3_CHECK(s.seq->mtp_length + n <= s.seq->length, "MTP positions beyond the main cache "
               "(internal error)");
    logit_rows.push_back(L.rows + n - 1);
    L.add(*cache_, *s.seq, s.seq->mtp_length, n);
    ids.insert(ids.end(), s.next_tokens.begin(), s.next_tokens.end());
    hrows.insert(hrows.end(), s.hidden_rows.begin(), s.hidden_rows.end());
  }
  if (L.rows == 0) return;
  DSV3_CHECK(L.rows <= cfg_.max_rows, "MTP step of ", L.rows, " rows, at most ", cfg_.max_rows);
  const int N = L.rows, C = c.hidden;
  const float eps = float(c.rms_eps);
  const MtpParams& p = w_.params().mtp[0];
  m.upload(m.ids, ids);
  m.upload_layout(L);
  // [rmsnorm_e(Emb(next)) | rmsnorm_h(h)] -> eh_proj -> block -> shared head (model/mtp.h)
  embedding_forward(m.ex, m.e, m.ids, w_.params().embed, N, C);
  rmsnorm_forward(m.ex, m.cat, m.rstd, m.e, p.enorm, {N, C, C, 2 * C}, eps);
  m.upload(m.logit_rows, hrows);
  moe_gather(m.ex, m.x, m.hidden, m.logit_rows, N, C);  // the hidden states' rows
  rmsnorm_forward(m.ex, m.cat.slice(C), m.rstd, m.x, p.hnorm, {N, C, C, 2 * C}, eps);
  linear_forward(m.ex, m.x, m.cat, p.eh_proj, N, 2 * C, C);
  m.block(p.block, c.layers, m.x, *cache_, L);
  for (const MtpStep& s : in) s.seq->mtp_length += int(s.hidden_rows.size());
  m.head(m.x, logit_rows, p.head_norm, logits);
}

}  // namespace dsv3
