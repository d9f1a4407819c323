#include "train/grad_sync.h"

#include <algorithm>
#include <cstring>

#include "core/check.h"
#include "dist/compress.h"
#include "ops/elementwise.h"

namespace dsv3 {

namespace {

// The backward part after which a tensor's gradient is final (model.h forward_backward).
int ready_part(const std::string& name, int L) {
  const std::string layers = "model.layers.";
  if (name.rfind("model.embed_tokens", 0) == 0) return L + 2;
  if (name.rfind(layers, 0) == 0) {
    const int h = std::atoi(name.c_str() + layers.size());
    return h < L ? 1 + L - h : 1;
  }
  return 1;  // final norm, output head
}

struct Pair {  // one top-k entry on the wire
  uint32_t idx;
  float val;
};

}  // namespace

struct GradSync::Bucket {
  dist::Group* g = nullptr;
  int n = 1, me = 0;
  size_t begin = 0, end = 0, P = 0;
  int ready = 0;
  size_t own_begin = 0, own_len = 0, own_shard = 0;
  bool launched = false, done = false;
  int phase = 0;
  dist::Pending op;
  Buffer stage;                 // fp32 n*P: ragged buckets (ZeRO), padded compression input
  std::vector<float> piece;     // P: the reduced own piece (ZeRO) or int8 partial sum
  std::vector<float> residual, residual2;  // error feedback (compression)
  std::vector<uint8_t> tx, rx;  // compressed payloads
  size_t k = 0;                 // top-k entries
  Buffer gather;                // compute dtype n*P: ragged parameter all-gather
  size_t len() const { return end - begin; }
  bool exact() const { return len() == P * size_t(n); }
};

GradSync::GradSync(const ParamTable& t, const ModelConfig& c, dist::Group& dp, dist::Group* edp,
                   dist::Collectives& coll, const DistConfig& cfg, Device device,
                   dist::Group* dp_mirror, dist::Group* edp_mirror)
    : t_(t), coll_(coll), cfg_(cfg), device_(device), zero_(cfg.zero) {
  DSV3_CHECK(!(cfg.grad_compress != GradCompress::None && cfg.zero == 2),
             "--grad_compress ", grad_compress_name(cfg.grad_compress), " works with --zero 0 "
             "or 1, not 2 (ZeRO-2 reduces every micro-batch: compress with --zero 1)");
  DSV3_CHECK(!t.sharded() || edp, "internal: an expert-shard table needs the edp group");
  DSV3_CHECK(t.shared_end == 0 || dp_mirror, "internal: tensors shared with a mirror stage need dp_mirror");
  DSV3_CHECK(t.shared_experts_end == t.experts_begin || edp_mirror,
             "internal: experts shared with a mirror stage need edp_mirror");
  const auto domain = [&](size_t a, size_t b, dist::Group* g) {
    if (a < b) domains_.push_back({a, b, g});
  };
  domain(0, t.shared_end, dp_mirror);
  domain(t.shared_end, t.experts_begin, &dp);
  domain(t.experts_begin, t.shared_experts_end, edp_mirror);
  domain(t.shared_experts_end, t.total, edp);
  // Per-tensor readiness, for the buckets' (a bucket is ready when its last tensor is).
  std::vector<std::pair<size_t, int>> ready;  // (end offset, part) in table order
  for (const ParamInfo& p : t.list) ready.push_back({p.offset + p.numel, ready_part(p.name, c.layers)});
  const size_t bucket_elems = std::max<size_t>(1, size_t(cfg.bucket_mb * 1048576.0 / 4));
  for (const Domain& d : domains_) {
    const int n = d.group->size();
    const size_t B = std::max<size_t>(size_t(n), bucket_elems / size_t(n) * size_t(n));
    for (size_t hi = d.end; hi > d.begin;) {
      const size_t lo = hi - std::min(B, hi - d.begin);
      auto b = std::make_unique<Bucket>();
      b->g = d.group, b->n = n, b->me = d.group->rank();
      b->begin = lo, b->end = hi;
      b->P = (b->len() + size_t(n) - 1) / size_t(n);
      for (const ParamInfo& p : t.list)
        if (p.offset < hi && p.offset + p.numel > lo)
          b->ready = std::max(b->ready, ready_part(p.name, c.layers));
      const size_t o0 = std::min(lo + size_t(b->me) * b->P, hi);
      b->own_begin = o0;
      b->own_len = std::min(o0 + b->P, hi) - o0;
      b->own_shard = shard_size_;
      shard_size_ += b->own_len;
      own_.push_back({b->own_begin, b->own_len, b->own_shard});
      buckets_.push_back(std::move(b));
      hi = lo;
    }
  }
  // own pieces x trainable tensors
  for (const Piece& pc : own_)
    for (const ParamSpan& s : trainable_spans(t)) {
      const size_t a = std::max(pc.flat, s.offset), e = std::min(pc.flat + pc.len, s.offset + s.numel);
      if (a >= e) continue;
      own_flat_.push_back({a, e - a, s.decay});
      own_shard_.push_back({pc.shard + (a - pc.flat), e - a, s.decay});
    }
  if (zero_ > 0) shard_grads_ = Buffer(device, DType::F32, std::max<size_t>(shard_size_, 1));
  for (auto& b : buckets_) {
    b->piece.assign(b->P, 0.0f);
    if (b->n == 1) continue;  // nothing to compress or stage
    if (cfg.grad_compress == GradCompress::Int8) {
      b->residual.assign(b->P * size_t(b->n), 0.0f);
      if (zero_ == 0) b->residual2.assign(b->P, 0.0f);
    } else if (cfg.grad_compress == GradCompress::TopK) {
      b->residual.assign(b->len(), 0.0f);
      b->k = dist::topk_count(b->len(), cfg.topk_ratio);
    } else if (zero_ > 0 && !b->exact()) {
      b->stage = Buffer(device, DType::F32, b->P * size_t(b->n));
    }
  }
}

GradSync::~GradSync() = default;

void GradSync::begin_micro(int a, int micro, const Tensor& grads) {
  DSV3_CHECK(grads.dtype == DType::F32 && grads.numel == t_.total,
             "internal: gradients do not match the parameter table");
  grads_ = grads;
  micro_ = a, micros_ = micro;
  reducing_ = zero_ == 2 || a == micro - 1;
  if (a == 0) wire_ = coll_.ledger().purpose_bytes[size_t(dist::Purpose::Grads)];
  if (reducing_)
    for (auto& b : buckets_) b->launched = b->done = false, b->phase = 0;
}

void GradSync::part_done(int parts) {
  if (!reducing_ || !cfg_.overlap) return;
  for (auto& b : buckets_)
    if (!b->launched && b->ready <= parts) launch(*b);
  for (auto& b : buckets_)
    if (b->launched && !b->done) progress(*b, false);
}

void GradSync::end_micro() {
  if (!reducing_) return;
  for (auto& b : buckets_)
    if (!b->launched) launch(*b);
  if (micro_ == micros_ - 1) return;  // the last micro-batch completes in finish()
  for (auto& b : buckets_) progress(*b, true);
  backend::zero({device_}, grads_);  // ZeRO-2: the next micro-batch starts from zero
}

void GradSync::finish() {
  for (auto& b : buckets_)
    if (b->launched) progress(*b, true);
  wire_ = coll_.ledger().purpose_bytes[size_t(dist::Purpose::Grads)] - wire_;
}

void GradSync::launch(Bucket& b) {
  b.launched = true;
  float* g = grads_.as<float>() + b.begin;
  const size_t n = size_t(b.n), P = b.P, len = b.len();
  if (b.n == 1) {  // a group of one: the sum is the gradient itself
    if (zero_ > 0) deliver_piece(b, g);
    b.done = true;
    return;
  }
  switch (cfg_.grad_compress) {
    case GradCompress::None:
      if (zero_ == 0) {
        b.op = coll_.all_reduce(*b.g, dist::Purpose::Grads, g, len, DType::F32);
      } else {
        const float* send = g;
        if (!b.exact()) {
          float* st = b.stage.view().as<float>();
          std::memcpy(st, g, len * sizeof(float));
          std::fill(st + len, st + n * P, 0.0f);
          send = st;
        }
        b.op = coll_.reduce_scatter(*b.g, dist::Purpose::Grads, send, b.piece.data(), P,
                                    DType::F32);
      }
      break;
    case GradCompress::Int8: {
      // piece i of (g + residual): [scales f32][P x int8], one block per destination rank
      const size_t ns = dist::int8_scales(P), blk = ns * sizeof(float) + P;
      b.tx.resize(n * blk), b.rx.resize(n * blk);
      std::vector<float> v(n * P, 0.0f);
      std::memcpy(v.data(), g, len * sizeof(float));
      std::vector<float> scales(ns);
      for (size_t i = 0; i < n; i++) {
        uint8_t* out = b.tx.data() + i * blk;
        dist::int8_compress(v.data() + i * P, b.residual.data() + i * P, P,
                            reinterpret_cast<int8_t*>(out + ns * sizeof(float)), scales.data());
        std::memcpy(out, scales.data(), ns * sizeof(float));
      }
      b.op = coll_.all_to_all(*b.g, dist::Purpose::Grads, b.tx.data(), b.rx.data(), blk,
                              DType::U8);
      b.phase = 1;
      break;
    }
    case GradCompress::TopK: {
      b.tx.resize(b.k * sizeof(Pair)), b.rx.resize(n * b.k * sizeof(Pair));
      std::vector<uint32_t> idx(b.k);
      std::vector<float> val(b.k);
      dist::topk_compress(g, b.residual.data(), len, b.k, idx.data(), val.data());
      Pair* out = reinterpret_cast<Pair*>(b.tx.data());
      for (size_t i = 0; i < b.k; i++) out[i] = {idx[i], val[i]};
      b.op = coll_.all_gather(*b.g, dist::Purpose::Grads, b.tx.data(), b.rx.data(),
                              b.k * sizeof(Pair), DType::U8);
      break;
    }
  }
}

void GradSync::progress(Bucket& b, bool block) {
  while (!b.done) {
    if (block) coll_.wait(b.op);
    else if (!coll_.test(b.op)) return;
    // Every rank must start collectives in the same order: a second exchange (int8, zero 0)
    // starts only from finish(), in bucket order, never when a test happens to see the first
    // one complete.
    if (!block && cfg_.grad_compress == GradCompress::Int8 && zero_ == 0 && b.phase == 1) return;
    float* g = grads_.as<float>() + b.begin;
    const size_t n = size_t(b.n), P = b.P, len = b.len();
    switch (cfg_.grad_compress) {
      case GradCompress::None:
        if (zero_ > 0) deliver_piece(b, b.piece.data());
        b.done = true;
        break;
      case GradCompress::Int8: {
        const size_t ns = dist::int8_scales(P), blk = ns * sizeof(float) + P;
        std::vector<float> scales(ns);
        const auto add_block = [&](float* out, const uint8_t* in) {  // [scales][q] of P values
          std::memcpy(scales.data(), in, ns * sizeof(float));
          dist::int8_accumulate(out, reinterpret_cast<const int8_t*>(in + ns * sizeof(float)),
                                scales.data(), P);
        };
        if (b.phase == 1) {  // my piece from every rank, summed in rank order
          std::fill(b.piece.begin(), b.piece.end(), 0.0f);
          for (size_t q = 0; q < n; q++) add_block(b.piece.data(), b.rx.data() + q * blk);
          if (zero_ > 0) {
            deliver_piece(b, b.piece.data());
            b.done = true;
            break;
          }
          // zero 0: every rank needs every piece: re-quantise the sum (own residual), all-gather
          std::vector<uint8_t> mine(blk);
          dist::int8_compress(b.piece.data(), b.residual2.data(), P,
                              reinterpret_cast<int8_t*>(mine.data() + ns * sizeof(float)),
                              scales.data());
          std::memcpy(mine.data(), scales.data(), ns * sizeof(float));
          b.tx = std::move(mine);
          b.op = coll_.all_gather(*b.g, dist::Purpose::Grads, b.tx.data(), b.rx.data(), blk,
                                  DType::U8);
          b.phase = 2;
          break;
        }
        std::vector<float> full(n * P, 0.0f);
        for (size_t q = 0; q < n; q++) add_block(full.data() + q * P, b.rx.data() + q * blk);
        std::memcpy(g, full.data(), len * sizeof(float));
        b.done = true;
        break;
      }
      case GradCompress::TopK: {
        std::vector<float> sum(len, 0.0f);
        const Pair* in = reinterpret_cast<const Pair*>(b.rx.data());
        for (size_t q = 0; q < n; q++)
          for (size_t i = 0; i < b.k; i++) {
            const Pair& e = in[q * b.k + i];
            DSV3_CHECK(e.idx < len, "top-k gradient entry ", e.idx, " from rank ",
                       b.g->world_ranks[q], " is outside its bucket of ", len);
            sum[e.idx] += e.val;
          }
        if (zero_ > 0) deliver_piece(b, sum.data() + (b.own_begin - b.begin));
        else std::memcpy(g, sum.data(), len * sizeof(float));
        b.done = true;
        break;
      }
    }
  }
}

void GradSync::deliver_piece(Bucket& b, const float* sum) {
  if (b.own_len == 0) return;
  float* dst = shard_grads_.view().as<float>() + b.own_shard;
  if (zero_ == 2 && micro_ > 0)
    for (size_t i = 0; i < b.own_len; i++) dst[i] += sum[i];
  else
    std::memcpy(dst, sum, b.own_len * sizeof(float));
}

void GradSync::all_gather_params(const Tensor& w) {
  DSV3_CHECK(zero_ > 0, "internal: parameters are all-gathered under ZeRO only");
  const size_t es = dtype_size(w.dtype);
  std::vector<dist::Pending> ops;
  std::vector<Bucket*> staged;
  for (auto& bp : buckets_) {
    Bucket& b = *bp;
    if (b.n == 1) continue;
    char* base = static_cast<char*>(w.data) + b.begin * es;
    if (b.exact()) {
      ops.push_back(coll_.all_gather(*b.g, dist::Purpose::Params, base + size_t(b.me) * b.P * es,
                                     base, b.P, w.dtype));
      continue;
    }
    if (!b.gather || b.gather.dtype() != w.dtype)
      b.gather = Buffer(device_, w.dtype, b.P * size_t(b.n));
    char* st = static_cast<char*>(b.gather.view().data);
    std::memcpy(st + size_t(b.me) * b.P * es, base + (b.own_begin - b.begin) * es, b.own_len * es);
    ops.push_back(coll_.all_gather(*b.g, dist::Purpose::Params, st + size_t(b.me) * b.P * es, st,
                                   b.P, w.dtype));
    staged.push_back(&b);
  }
  for (auto& op : ops) coll_.wait(op);
  for (Bucket* b : staged)
    std::memcpy(static_cast<char*>(w.data) + b->begin * es, b->gather.view().data, b->len() * es);
}

}  // namespace dsv3
