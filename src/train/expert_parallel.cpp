#include "train/expert_parallel.h"

#include <algorithm>
#include <numeric>

#include "core/check.h"
#include "ops/elementwise.h"

namespace dsv3 {

namespace {
// Capacity with headroom, so a layer whose arrivals vary a little does not reallocate each step.
size_t with_headroom(size_t rows) { return std::max<size_t>(16, rows + rows / 4); }

Tensor rows_of(const Tensor& t, size_t first, size_t n, size_t C) {
  return t.slice(first * C, n * C);
}
}  // namespace

ExpertAllToAll::ExpertAllToAll(dist::Collectives& coll, dist::Group& ep, const ModelConfig& c,
                               DType t, Device d)
    : coll_(coll), ep_(ep), c_(c), t_(t), device_(d), P_(ep.size()) {
  DSV3_CHECK(c.experts > 0 && c.experts % P_ == 0, "expert parallelism over ", P_,
             " ranks needs the routed experts (", c.experts, ") to be a multiple of ep");
  DSV3_CHECK(d == Device::CPU, "expert parallelism runs on the CPU only for now (the "
             "communicator moves host buffers)");
  local_ = c.experts / P_;
  first_ = ep.rank() * local_;
  for (int l = 0; l < c.layers; l++)
    if (c.is_moe_layer(l)) moe_hf_.push_back(l);
  for (int k = 1; k <= c.mtp_depth; k++) moe_hf_.push_back(c.layers + k - 1);  // moe_layer_names
  rows_seen_.assign(moe_hf_.size(), 0.0);
}

int ExpertAllToAll::home_of(int expert) const { return expert < 0 ? -1 : expert / local_; }

int ExpertAllToAll::moe_index(int hf_layer) const {
  const auto it = std::find(moe_hf_.begin(), moe_hf_.end(), hf_layer);
  return it == moe_hf_.end() ? -1 : int(it - moe_hf_.begin());
}

ExpertAllToAll::Layer& ExpertAllToAll::layer_of(const void* key) {
  auto it = layers_.find(key);
  DSV3_CHECK(it != layers_.end(), "internal: expert exchange used for a layer before its dispatch");
  return it->second;
}

void ExpertAllToAll::bind_scratch(ExpertSide& s) {
  const size_t rows = size_t(std::max(s.rows, 1));
  if (rows > scratch_rows_) {
    scratch_rows_ = with_headroom(rows);
    ExpertSide probe;
    Arena k0, s0;
    alloc_expert_side(probe, k0, s0, c_, t_, int(scratch_rows_), local_);
    scratch_ = Buffer(device_, DType::U8, s0.used);
  }
  ExpertSide tmp;
  Arena kept_measure;
  Arena sc{static_cast<char*>(scratch_.view().data), scratch_.view().bytes(), 0, device_};
  alloc_expert_side(tmp, kept_measure, sc, c_, t_, int(scratch_rows_), local_);
  s.out = tmp.out;
  s.dxp = tmp.dxp;
  s.scratch = tmp.scratch;
}

void ExpertAllToAll::grow_stage(size_t rows) {
  const size_t need = std::max<size_t>(rows, 1) * size_t(c_.hidden);
  if (stage_.numel() < need) stage_ = Buffer(device_, t_, with_headroom(rows) * c_.hidden);
}

void ExpertAllToAll::grow_out(size_t rows) {
  const size_t need = std::max<size_t>(rows, 1) * size_t(c_.hidden);
  if (out_.numel() < need) out_ = Buffer(device_, t_, with_headroom(rows) * c_.hidden);
}

void ExpertAllToAll::plan_route(Route& r, const std::vector<int32_t>& off, int moe) {
  const size_t E = size_t(c_.experts), L = size_t(local_), P = size_t(P_);
  const Replicas* rp = moe >= 0 && !reps_.empty() ? &reps_[size_t(moe)] : nullptr;
  const size_t S = rp ? size_t(S_) : 0, slots = L + S;
  r.slots = int(slots), r.replicas = int(S), r.in_place = S == 0;
  r.run_at.assign(P * slots, 0), r.run_n.assign(P * slots, 0);
  for (size_t e = 0; e < E; e++) {
    const size_t n = size_t(off[e + 1] - off[e]);
    if (!rp) {  // the home alone
      r.run_at[(e / L) * slots + e % L] = size_t(off[e]), r.run_n[(e / L) * slots + e % L] = n;
      continue;
    }
    // run i of this source's rows to copy (i + source) mod k: each source starts elsewhere
    const auto& copies = rp->copies[e];
    const size_t k = copies.size(), me = size_t(ep_.rank());
    for (size_t i = 0; i < k; i++) {
      const auto [q, j] = copies[(i + me) % k];
      const size_t b = n * i / k, en = n * (i + 1) / k;
      r.run_at[size_t(q) * slots + size_t(j)] = size_t(off[e]) + b;
      r.run_n[size_t(q) * slots + size_t(j)] = en - b;
    }
  }
  r.to.assign(P, 0), r.to_at.assign(P, 0);
  for (size_t q = 0; q < P; q++) {
    r.to_at[q] = size_t(off[q * L]);
    for (size_t j = 0; j < slots; j++) r.to[q] += r.run_n[q * slots + j];
  }
}

const ExpertSide& ExpertAllToAll::dispatch(const Exec& ex, const void* key, int hf_layer,
                                           const Tensor& xp, const Tensor& offsets, int NK, int C) {
  const size_t E = size_t(c_.experts), L = size_t(local_), P = size_t(P_);
  std::vector<int32_t> off(E + 1);
  backend::copy(ex, host_tensor(off), offsets);
  DSV3_CHECK(off[E] == NK, "internal: expert offsets cover ", off[E], " slots, not ", NK);
  const int moe = moe_index(hf_layer);
  DSV3_CHECK(moe >= 0 || reps_.empty(), "internal: layer ", hf_layer, " is not an MoE layer");
  Layer& ly = layers_[key];
  ly.moe = moe;
  Route& r = ly.route;
  plan_route(r, off, moe);
  const size_t slots = size_t(r.slots), S = size_t(r.replicas);
  // 1. per-slot counts to the ranks holding the experts and replicas
  std::vector<int64_t> to_counts(P * slots);
  for (size_t i = 0; i < to_counts.size(); i++) to_counts[i] = int64_t(r.run_n[i]);
  r.from_counts.assign(P * slots, 0);
  coll_.run(coll_.all_to_all(ep_, dist::Purpose::Experts, to_counts.data(), r.from_counts.data(),
                             slots, DType::I64));
  r.from.assign(P, 0);
  for (size_t q = 0; q < P; q++)
    for (size_t j = 0; j < slots; j++) {
      const int64_t n = r.from_counts[q * slots + j];
      DSV3_CHECK(n >= 0 && n <= int64_t(NK) * int64_t(P), "expert exchange: rank ",
                 ep_.world_ranks[q], " announced ", n, " rows for one expert (corrupt counts)");
      r.from[q] += size_t(n);
    }
  // 2. the expert side of this layer, sized for what will arrive
  const size_t R = std::accumulate(r.from.begin(), r.from.end(), size_t(0));
  ExpertSide& s = ly.side;
  if (R > ly.capacity || !ly.kept) {
    ly.capacity = with_headroom(R);
    Arena km, sm;
    alloc_expert_side(s, km, sm, c_, t_, int(ly.capacity), local_);
    ly.kept = Buffer(device_, DType::U8, km.used);
    Arena k{static_cast<char*>(ly.kept.view().data), ly.kept.view().bytes(), 0, device_};
    alloc_expert_side(s, k, sm, c_, t_, int(ly.capacity), local_);
  }
  s.rows = int(R);
  // side offsets: the home experts' rows from 0, the replicas' from the first replica row
  std::vector<int32_t> at(slots + 1, 0);
  for (size_t j = 0; j < slots; j++) {
    int64_t n = 0;
    for (size_t q = 0; q < P; q++) n += r.from_counts[q * slots + j];
    at[j + 1] = at[j] + int32_t(n);
  }
  backend::copy(ex, s.offsets, host_tensor(at.data(), L + 1));
  s.replicas = ExpertReplicas{};
  if (S > 0) {
    Replicas& rp = reps_[size_t(moe)];
    std::vector<int32_t> rel(S + 1);
    for (size_t j = 0; j <= S; j++) rel[j] = at[L + j] - at[L];
    backend::copy(ex, rp.offsets.view(), host_tensor(rel));
    const size_t n13 = 2 * size_t(c_.moe_inter) * C, st = n13 + size_t(c_.moe_inter) * C;
    s.replicas = {int(S), int(at[slots] - at[L]), rp.offsets.view(),
                  rp.weights.view(), rp.weights.view().slice(n13),
                  rp.grads.view(), rp.grads.view().slice(n13), st};
  }
  bind_scratch(s);
  if (moe >= 0) rows_seen_[size_t(moe)] += double(R);
  // 3. the rows, then source-major -> slot-major
  to_experts(ex, r, s, xp.slice(0, size_t(NK) * C), s.xp.slice(0, R * C));
  return s;
}

const ExpertSide& ExpertAllToAll::side(const void* key) {
  Layer& ly = layer_of(key);
  bind_scratch(ly.side);
  return ly.side;
}

void ExpertAllToAll::to_experts(const Exec& ex, const Route& r, const ExpertSide& s,
                                const Tensor& slot_rows, const Tensor& side_rows) {
  const size_t slots = size_t(r.slots), P = size_t(P_), C = size_t(c_.hidden);
  const size_t R = size_t(s.rows);
  grow_stage(R);
  std::vector<size_t> to_n(P), to_d(P), from_n(P);
  for (size_t q = 0; q < P; q++) {
    to_n[q] = r.to[q] * C;
    to_d[q] = r.to_at[q] * C;
    from_n[q] = r.from[q] * C;
  }
  if (r.in_place) {
    coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Experts, slot_rows.data, {to_n, to_d},
                                stage_.view().data, {from_n}, t_));
  } else {  // gather each rank's runs in slot order
    const size_t sent = std::accumulate(r.to.begin(), r.to.end(), size_t(0));
    grow_out(sent);
    size_t o = 0;
    for (size_t i = 0; i < P * slots; i++) {
      if (r.run_n[i] > 0)
        backend::copy(ex, rows_of(out_.view(), o, r.run_n[i], C),
                      rows_of(slot_rows, r.run_at[i], r.run_n[i], C));
      o += r.run_n[i];
    }
    coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Experts, out_.view().data, {to_n},
                                stage_.view().data, {from_n}, t_));
  }
  // stage: [q][j] chunks; side: [j][q]
  std::vector<size_t> fill(slots + 1, 0);
  for (size_t j = 0; j < slots; j++) {
    size_t n = 0;
    for (size_t q = 0; q < P; q++) n += size_t(r.from_counts[q * slots + j]);
    fill[j + 1] = fill[j] + n;
  }
  size_t at = 0;
  for (size_t q = 0; q < P; q++)
    for (size_t j = 0; j < slots; j++) {
      const size_t n = size_t(r.from_counts[q * slots + j]);
      if (n > 0)
        backend::copy(ex, rows_of(side_rows, fill[j], n, C), rows_of(stage_.view(), at, n, C));
      fill[j] += n, at += n;
    }
  DSV3_CHECK(at == R, "internal: expert exchange reordered ", at, " of ", R, " rows");
}

void ExpertAllToAll::dispatch_rows(const Exec& ex, const void* key, const Tensor& slot_rows,
                                   const Tensor& side_rows) {
  Layer& ly = layer_of(key);
  to_experts(ex, ly.route, ly.side, slot_rows, side_rows);
}

void ExpertAllToAll::combine(const Exec& ex, const void* key, const Tensor& side_rows,
                             const Tensor& slot_rows) {
  Layer& ly = layer_of(key);
  const Route& r = ly.route;
  const size_t slots = size_t(r.slots), P = size_t(P_), C = size_t(c_.hidden);
  const size_t R = size_t(ly.side.rows);
  grow_stage(R);
  // slot-major [j][q] -> source-major [q][j] in the stage, then back to the slots
  std::vector<size_t> fill(slots + 1, 0);
  for (size_t j = 0; j < slots; j++) {
    size_t n = 0;
    for (size_t q = 0; q < P; q++) n += size_t(r.from_counts[q * slots + j]);
    fill[j + 1] = fill[j] + n;
  }
  size_t at = 0;
  for (size_t q = 0; q < P; q++)
    for (size_t j = 0; j < slots; j++) {
      const size_t n = size_t(r.from_counts[q * slots + j]);
      if (n > 0)
        backend::copy(ex, rows_of(stage_.view(), at, n, C), rows_of(side_rows, fill[j], n, C));
      fill[j] += n, at += n;
    }
  std::vector<size_t> to_n(P), from_n(P), from_d(P);
  for (size_t q = 0; q < P; q++) {
    to_n[q] = r.from[q] * C;
    from_n[q] = r.to[q] * C;
    from_d[q] = r.to_at[q] * C;
  }
  if (r.in_place) {
    coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Experts, stage_.view().data, {to_n},
                                slot_rows.data, {from_n, from_d}, t_));
    return;
  }
  grow_out(std::accumulate(r.to.begin(), r.to.end(), size_t(0)));
  coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Experts, stage_.view().data, {to_n},
                              out_.view().data, {from_n}, t_));
  size_t o = 0;  // each run back to its slot rows
  for (size_t i = 0; i < P * slots; i++) {
    if (r.run_n[i] > 0)
      backend::copy(ex, rows_of(slot_rows, r.run_at[i], r.run_n[i], C),
                    rows_of(out_.view(), o, r.run_n[i], C));
    o += r.run_n[i];
  }
}

// ---- EPLB replicas

MoeParams ExpertAllToAll::bind_layer(const ModelWeights& w, int m) const {
  return bind_moe(w.table(), w.data(), w.buffers(),
                  "model.layers." + std::to_string(moe_hf_[size_t(m)]), c_);
}

void ExpertAllToAll::set_placement(const std::vector<dist::ExpertPlacement>& placement,
                                   const ModelWeights& w) {
  reps_.clear();
  S_ = 0;
  if (placement.empty()) return;
  const int L = local_, E = c_.experts;
  DSV3_CHECK(placement.size() == moe_hf_.size(), "internal: an expert placement for ",
             placement.size(), " MoE layers, the model has ", moe_hf_.size());
  const int slots = placement[0].slots;
  for (const dist::ExpertPlacement& p : placement) {
    DSV3_CHECK(p.ranks == P_ && p.slots == slots && slots >= L &&
                   p.phy2log.size() == size_t(P_ * slots),
               "internal: an expert placement for ", p.ranks, " ranks x ", p.slots,
               " slots does not fit ep ", P_, " with ", L, " experts per rank");
    for (int q = 0; q < P_; q++)
      for (int j = 0; j < slots; j++) {
        const int e = p.phy2log[size_t(q * slots + j)];
        DSV3_CHECK(j >= L ? e >= -1 && e < E : e == q * L + j, "internal: expert placement slot ",
                   j, " of rank ", q, " holds ", e, " (homes stay, replicas name an expert or -1)");
      }
  }
  S_ = slots - L;
  if (S_ == 0) return;
  const size_t st = 3 * size_t(c_.moe_inter) * size_t(c_.hidden);
  const Exec ex{device_};
  for (const dist::ExpertPlacement& p : placement) {
    Replicas rp;
    rp.copies.resize(size_t(E));
    for (int e = 0; e < E; e++) rp.copies[size_t(e)].push_back({e / L, e % L});
    rp.slot_expert.resize(size_t(P_ * S_));
    for (int q = 0; q < P_; q++)
      for (int s = 0; s < S_; s++) {
        const int e = p.phy2log[size_t(q * slots + L + s)];
        rp.slot_expert[size_t(q * S_ + s)] = e;
        if (e >= 0) rp.copies[size_t(e)].push_back({q, L + s});
      }
    rp.weights = Buffer(device_, t_, size_t(S_) * st);
    rp.grads = Buffer(device_, accum_dtype(t_), size_t(S_) * st);
    backend::zero(ex, rp.grads.view());
    rp.offsets = Buffer(device_, DType::I32, size_t(S_) + 1);
    reps_.push_back(std::move(rp));
  }
  refresh_replicas(w);
}

void ExpertAllToAll::refresh_replicas(const ModelWeights& w) {
  if (reps_.empty()) return;
  const Exec ex{device_};
  const int me = ep_.rank();
  const size_t C = size_t(c_.hidden), n13 = 2 * size_t(c_.moe_inter) * C,
               n2 = size_t(c_.moe_inter) * C, st = n13 + n2;
  // what goes to rank q: for every layer, q's replica slots of my experts, in slot order
  std::vector<size_t> to_n(size_t(P_), 0), from_n(size_t(P_), 0);
  size_t out_total = 0, in_total = 0;
  for (int q = 0; q < P_; q++)
    for (const Replicas& rp : reps_)
      for (int s = 0; s < S_; s++) {
        if (home_of(rp.slot_expert[size_t(q * S_ + s)]) == me) to_n[size_t(q)] += st;
        if (home_of(rp.slot_expert[size_t(me * S_ + s)]) == q) from_n[size_t(q)] += st;
      }
  for (int q = 0; q < P_; q++) out_total += to_n[size_t(q)], in_total += from_n[size_t(q)];
  Buffer send(device_, t_, std::max<size_t>(out_total, 1)), recv(device_, t_, std::max<size_t>(in_total, 1));
  size_t o = 0;
  for (int q = 0; q < P_; q++)
    for (size_t m = 0; m < reps_.size(); m++) {
      const MoeParams home = bind_layer(w, int(m));
      for (int s = 0; s < S_; s++) {
        const int e = reps_[m].slot_expert[size_t(q * S_ + s)];
        if (home_of(e) != me) continue;
        const size_t j = size_t(e - first_);
        backend::copy(ex, send.view().slice(o, n13), home.experts_w13.slice(j * home.expert_stride, n13));
        backend::copy(ex, send.view().slice(o + n13, n2), home.experts_w2.slice(j * home.expert_stride, n2));
        o += st;
      }
    }
  coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Params, send.view().data, {to_n},
                              recv.view().data, {from_n}, t_));
  size_t i = 0;
  for (int q = 0; q < P_; q++)
    for (Replicas& rp : reps_)
      for (int s = 0; s < S_; s++)
        if (home_of(rp.slot_expert[size_t(me * S_ + s)]) == q) {
          backend::copy(ex, rp.weights.view().slice(size_t(s) * st, st), recv.view().slice(i, st));
          i += st;
        }
}

void ExpertAllToAll::return_replica_grads(const Exec& ex, const void* key, const MoeParams& g) {
  if (reps_.empty()) return;
  const Layer& ly = layer_of(key);
  if (ly.route.replicas == 0) return;
  Replicas& rp = reps_[size_t(ly.moe)];
  const int me = ep_.rank();
  const size_t C = size_t(c_.hidden), n13 = 2 * size_t(c_.moe_inter) * C,
               n2 = size_t(c_.moe_inter) * C, st = n13 + n2;
  const DType acc = accum_dtype(t_);
  DSV3_CHECK(g.experts_w13.dtype == acc, "internal: expert gradients in ",
             dtype_name(g.experts_w13.dtype), ", replica gradients in ", dtype_name(acc));
  // my replica slots' gradients to their homes (slot order), the homes' copies from every rank
  std::vector<size_t> to_n(size_t(P_), 0), from_n(size_t(P_), 0);
  for (int s = 0; s < S_; s++)
    if (const int h = home_of(rp.slot_expert[size_t(me * S_ + s)]); h >= 0) to_n[size_t(h)] += st;
  for (int q = 0; q < P_; q++)
    for (int s = 0; s < S_; s++)
      if (home_of(rp.slot_expert[size_t(q * S_ + s)]) == me) from_n[size_t(q)] += st;
  Buffer send(device_, acc, std::max<size_t>(size_t(S_) * st, 1));
  size_t o = 0;
  for (int q = 0; q < P_; q++)
    for (int s = 0; s < S_; s++)
      if (home_of(rp.slot_expert[size_t(me * S_ + s)]) == q) {
        backend::copy(ex, send.view().slice(o, st), rp.grads.view().slice(size_t(s) * st, st));
        o += st;
      }
  const size_t in_total = std::accumulate(from_n.begin(), from_n.end(), size_t(0));
  Buffer recv(device_, acc, std::max<size_t>(in_total, 1));
  coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Grads, send.view().data, {to_n},
                              recv.view().data, {from_n}, acc));
  size_t i = 0;  // added in rank order, then slot order: the same sums on every run
  for (int q = 0; q < P_; q++)
    for (int s = 0; s < S_; s++) {
      const int e = rp.slot_expert[size_t(q * S_ + s)];
      if (home_of(e) != me) continue;
      const size_t j = size_t(e - first_);
      add_inplace(ex, g.experts_w13.slice(j * g.expert_stride, n13), recv.view().slice(i, n13));
      add_inplace(ex, g.experts_w2.slice(j * g.expert_stride, n2), recv.view().slice(i + n13, n2));
      i += st;
    }
  backend::zero(ex, rp.grads.view());
}

std::vector<std::vector<double>> ExpertAllToAll::take_dispatched_rows(dist::Group& all) {
  const size_t M = moe_hf_.size(), P = size_t(P_);
  std::vector<double> v(M * P, 0.0);
  for (size_t m = 0; m < M; m++) v[m * P + size_t(ep_.rank())] = rows_seen_[m];
  coll_.run(coll_.all_reduce(all, dist::Purpose::Stats, v.data(), v.size(), DType::F64));
  std::fill(rows_seen_.begin(), rows_seen_.end(), 0.0);
  std::vector<std::vector<double>> out(M);
  for (size_t m = 0; m < M; m++) out[m].assign(v.begin() + long(m * P), v.begin() + long((m + 1) * P));
  return out;
}

}  // namespace dsv3
