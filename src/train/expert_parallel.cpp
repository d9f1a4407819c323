#include "train/expert_parallel.h"

#include <algorithm>
#include <numeric>

#include "core/check.h"

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

const ExpertSide& ExpertAllToAll::dispatch(const Exec& ex, const void* key, const Tensor& xp,
                                           const Tensor& offsets, int NK, int C) {
  const size_t E = size_t(c_.experts), L = size_t(local_), P = size_t(P_);
  std::vector<int32_t> off(E + 1);
  backend::copy(ex, host_tensor(off), offsets);
  DSV3_CHECK(off[E] == NK, "internal: expert offsets cover ", off[E], " slots, not ", NK);
  Layer& ly = layers_[key];
  Route& r = ly.route;
  // 1. per-expert counts to the ranks holding the experts
  std::vector<int64_t> to_counts(E);
  for (size_t e = 0; e < E; e++) to_counts[e] = off[e + 1] - off[e];
  r.from_counts.assign(E, 0);
  coll_.run(coll_.all_to_all(ep_, dist::Purpose::Experts, to_counts.data(), r.from_counts.data(),
                             L, DType::I64));
  r.to.assign(P, 0), r.from.assign(P, 0), r.to_at.assign(P, 0);
  for (size_t q = 0; q < P; q++) {
    r.to_at[q] = size_t(off[q * L]);
    r.to[q] = size_t(off[(q + 1) * L] - off[q * L]);
    for (size_t j = 0; j < L; j++) {
      const int64_t n = r.from_counts[q * L + j];
      DSV3_CHECK(n >= 0 && n <= int64_t(NK) * int64_t(P), "expert exchange: rank ",
                 ep_.world_ranks[q], " announced ", n, " rows for one expert (corrupt counts)");
      r.from[q] += size_t(n);
    }
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
  std::vector<int32_t> side_off(L + 1, 0);
  for (size_t j = 0; j < L; j++) {
    int64_t n = 0;
    for (size_t q = 0; q < P; q++) n += r.from_counts[q * L + j];
    side_off[j + 1] = side_off[j] + int32_t(n);
  }
  backend::copy(ex, s.offsets, host_tensor(side_off));
  bind_scratch(s);
  // 3. the rows, then source-major -> expert-major
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
  const size_t L = size_t(local_), P = size_t(P_), C = size_t(c_.hidden);
  const size_t R = size_t(s.rows);
  grow_stage(R);
  std::vector<size_t> to_n(P), to_d(P), from_n(P);
  for (size_t q = 0; q < P; q++) {
    to_n[q] = r.to[q] * C;
    to_d[q] = r.to_at[q] * C;
    from_n[q] = r.from[q] * C;
  }
  coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Experts, slot_rows.data, {to_n, to_d},
                              stage_.view().data, {from_n}, t_));
  // stage: [q][j] chunks; side: [j][q]
  std::vector<int32_t> side_off(L + 1, 0);
  for (size_t j = 0; j < L; j++) {
    int64_t n = 0;
    for (size_t q = 0; q < P; q++) n += r.from_counts[q * L + j];
    side_off[j + 1] = side_off[j] + int32_t(n);
  }
  size_t at = 0;
  std::vector<size_t> fill(side_off.begin(), side_off.end() - 1);
  for (size_t q = 0; q < P; q++)
    for (size_t j = 0; j < L; j++) {
      const size_t n = size_t(r.from_counts[q * L + j]);
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
  const size_t L = size_t(local_), P = size_t(P_), C = size_t(c_.hidden);
  const size_t R = size_t(ly.side.rows);
  grow_stage(R);
  // expert-major [j][q] -> source-major [q][j] in the stage, then back to the slots
  std::vector<size_t> base(L + 1, 0);
  for (size_t j = 0; j < L; j++) {
    size_t n = 0;
    for (size_t q = 0; q < P; q++) n += size_t(r.from_counts[q * L + j]);
    base[j + 1] = base[j] + n;
  }
  std::vector<size_t> fill(base.begin(), base.end() - 1);
  size_t at = 0;
  for (size_t q = 0; q < P; q++)
    for (size_t j = 0; j < L; j++) {
      const size_t n = size_t(r.from_counts[q * L + j]);
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
  coll_.run(coll_.all_to_allv(ep_, dist::Purpose::Experts, stage_.view().data, {to_n},
                              slot_rows.data, {from_n, from_d}, t_));
}

}  // namespace dsv3
