// Distributed training's pieces under `mpirun -np 4` (ctest dist_mpi, label mpi), each checked
// exactly with payloads that say where they came from (DeepEP style):
// - expert dispatch/combine (train/expert_parallel.h): every row arrives at the rank of the expert
//   its routing names, sorted by local expert in source order, and comes back to its own slot;
// - with EPLB replicas: an expert's rows split over its copies as the rule says, replica weights
//   equal to their homes', replica gradients summed into their homes';
// - the gradient reduction (train/grad_sync.h): zero 0/1/2, buckets launched as backward parts
//   finish, dense and expert domains, compression against its stated bound;
// - the collective watchdog: a rank that does not arrive is named.
// Gradients are small integers times the rank's number, so sums are exact in fp32 whatever order
// a reduction took.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <set>
#include <thread>
#include <tuple>

#include "comm_test_util.h"
#include "core/rng.h"
#include "dist/collectives.h"
#include "dist/compress.h"
#include "dist/layout.h"
#include "model/config.h"
#include "model/model.h"
#include "model/weights.h"
#include "mpi_gtest_main.h"
#include "ops/moe.h"
#include "train/expert_parallel.h"
#include "train/grad_sync.h"

namespace dsv3::test {
namespace {

const dist::Comm& W() { return dist::world(); }

// ---------------------------------------------------------------- dispatch exactness

// Rank q's routing: N_q tokens, each to K distinct experts of E, from a seed every rank knows.
std::vector<int32_t> routing(int q, int N, int K, int E) {
  Rng r(1000 + uint64_t(q));
  std::vector<int32_t> idx(size_t(N) * K);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++) {
      int32_t e;
      do e = int32_t(r.below(uint64_t(E)));
      while (std::find(idx.begin() + n * K, idx.begin() + n * K + k, e) != idx.begin() + n * K + k);
      idx[size_t(n) * K + k] = e;
    }
  return idx;
}
int tokens_of(int q) { return 5 + 3 * q; }

// One exchange over `group` (its ranks are the world ranks in `members`).
void check_dispatch(dist::Group& group, int E) {
  const int C = 4, K = 2, P = group.size(), me = group.rank(), L = E / P;
  ModelConfig c = preset("debug");
  c.experts = E, c.hidden = C, c.topk = K;
  dist::Collectives coll(30);
  ExpertAllToAll x(coll, group, c, DType::F32, Device::CPU);
  ASSERT_EQ(x.first_expert(), me * L);
  const int N = tokens_of(me), NK = N * K;
  const std::vector<int32_t> idx = routing(me, N, K, E);
  std::vector<int32_t> slot_token(static_cast<size_t>(NK)), slot_of(static_cast<size_t>(NK)),
      offsets(static_cast<size_t>(E) + 1);
  cpu::moe_permutation(slot_token.data(), slot_of.data(), offsets.data(), idx.data(), N, K, E);
  // tag of slot s: (source rank, token, k, expert)
  std::vector<float> xp(size_t(NK) * C);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++) {
      float* row = xp.data() + size_t(slot_of[size_t(n) * K + k]) * C;
      row[0] = float(me), row[1] = float(n), row[2] = float(k), row[3] = float(idx[size_t(n) * K + k]);
    }
  const Exec ex{};
  const int key = 0;
  const ExpertSide& s = x.dispatch(ex, &key, /*hf_layer=*/-1, host_tensor(xp), host_tensor(offsets), NK, C);
  // what must arrive: every (q, n, k) routed to one of my experts, by expert, then source, token
  std::vector<std::tuple<int, int, int, int>> want;
  for (int j = 0; j < L; j++)
    for (int q = 0; q < P; q++) {
      const std::vector<int32_t> iq = routing(q, tokens_of(q), K, E);
      for (int n = 0; n < tokens_of(q); n++)
        for (int k = 0; k < K; k++)
          if (iq[size_t(n) * K + k] == me * L + j) want.emplace_back(me * L + j, q, n, k);
    }
  ASSERT_EQ(s.rows, int(want.size()));
  std::vector<int32_t> off(size_t(L) + 1);
  backend::copy(ex, host_tensor(off), s.offsets);
  const float* got = s.xp.as<float>();
  for (int j = 0; j < L; j++)
    for (int i = off[size_t(j)]; i < off[size_t(j) + 1]; i++) {
      const auto& [e, q, n, k] = want[size_t(i)];
      ASSERT_EQ(e, me * L + j);
      ASSERT_EQ(got[size_t(i) * C + 3], float(e)) << "row " << i << " is not for expert " << e;
      ASSERT_EQ(got[size_t(i) * C + 0], float(q)) << "row " << i;
      ASSERT_EQ(got[size_t(i) * C + 1], float(n)) << "row " << i;
      ASSERT_EQ(got[size_t(i) * C + 2], float(k)) << "row " << i;
    }
  // the expert side answers each row with (tag, expert + 100): combine must return it to its slot
  std::vector<float> out(size_t(std::max(s.rows, 1)) * C), back(size_t(NK) * C, -1.0f);
  for (int i = 0; i < s.rows; i++) {
    std::copy_n(got + size_t(i) * C, C, out.data() + size_t(i) * C);
    out[size_t(i) * C + 3] += 100;
  }
  x.combine(ex, &key, host_tensor(out.data(), size_t(s.rows) * C), host_tensor(back));
  for (int sl = 0; sl < NK; sl++) {
    EXPECT_EQ(back[size_t(sl) * C + 0], xp[size_t(sl) * C + 0]) << "slot " << sl;
    EXPECT_EQ(back[size_t(sl) * C + 1], xp[size_t(sl) * C + 1]) << "slot " << sl;
    EXPECT_EQ(back[size_t(sl) * C + 2], xp[size_t(sl) * C + 2]) << "slot " << sl;
    EXPECT_EQ(back[size_t(sl) * C + 3], xp[size_t(sl) * C + 3] + 100) << "slot " << sl;
  }
  // backward: slot rows go out along the same routes, to the same places
  std::vector<float> grad(xp), side(size_t(std::max(s.rows, 1)) * C, -1.0f);
  for (size_t i = 0; i < grad.size(); i += C) grad[i + 3] += 200;
  x.dispatch_rows(ex, &key, host_tensor(grad), host_tensor(side.data(), size_t(s.rows) * C));
  for (int i = 0; i < s.rows; i++) {
    EXPECT_EQ(side[size_t(i) * C + 1], got[size_t(i) * C + 1]) << "row " << i;
    EXPECT_EQ(side[size_t(i) * C + 3], got[size_t(i) * C + 3] + 200) << "row " << i;
  }
}

TEST(ExpertDispatch, TaggedRowsReachTheirExpertsAndComeBackInOrder) {
  dist::Group all = dist::make_group(W(), "ep");
  check_dispatch(all, 8);   // 2 experts per rank
  check_dispatch(all, 12);  // 3 per rank
  // two expert groups of 2 ranks (ep 2 inside dp 4): {0, 1} and {2, 3}
  dist::Group pairs = dist::make_group(W().split(W().rank() / 2, W().rank()), "ep");
  check_dispatch(pairs, 8);
}

// Replicas on the debug model over 4 ranks (2 experts each): layer 1 has replica slots holding
// expert 2 (home rank 1) on rank 0, expert 0 (home rank 0) on ranks 1 and 2, none on rank 3; the
// MTP layer one replica of 7 on rank 0.
TEST(ExpertDispatch, ReplicasGetTheirShareAndFollowTheirHomes) {
  dist::Group all = dist::make_group(W(), "ep");
  const ModelConfig c = preset("debug");
  const int P = all.size(), me = all.rank(), E = c.experts, L = E / P, K = c.topk, C = c.hidden;
  ASSERT_EQ(P, 4);
  ModelWeights w(c, DType::F32, Device::CPU, ExpertShard{me * L, L});
  // every weight value a function of its tensor name and index, so any rank knows any expert's
  auto value = [](const std::string& name, size_t i) {
    return float(std::hash<std::string>{}(name) % 1000) + float(i % 97) * 0.5f;
  };
  std::vector<float> init(w.table().total);
  for (const ParamInfo& p : w.table().list)
    for (size_t i = 0; i < p.numel; i++) init[p.offset + i] = value(p.name, i);
  w.load(init);
  const size_t M = moe_layer_names(c).size();
  std::vector<dist::ExpertPlacement> place(M);
  const std::vector<std::vector<int>> extra = {{2, 0, 0, -1}, {7, -1, -1, -1}};
  for (size_t m = 0; m < M; m++) {
    dist::ExpertPlacement& p = place[m];
    p.ranks = P, p.slots = L + 1, p.replicas.assign(size_t(E), 1);
    for (int q = 0; q < P; q++) {
      for (int j = 0; j < L; j++) p.phy2log.push_back(q * L + j);
      p.phy2log.push_back(m < extra.size() ? extra[m][size_t(q)] : -1);
    }
  }
  dist::Collectives coll(30);
  ExpertAllToAll x(coll, all, c, DType::F32, Device::CPU);
  x.set_placement(place, w);
  // copies of each expert of layer 1: home first, then replicas by rank
  std::vector<std::vector<std::pair<int, int>>> copies(static_cast<size_t>(E));
  for (int e = 0; e < E; e++) copies[size_t(e)].push_back({e / L, e % L});
  for (int q = 0; q < P; q++)
    if (extra[0][size_t(q)] >= 0) copies[size_t(extra[0][size_t(q)])].push_back({q, L});

  const int N = tokens_of(me) * 3, NK = N * K;
  const std::vector<int32_t> idx = routing(me, N, K, E);
  std::vector<int32_t> slot_token(static_cast<size_t>(NK)), slot_of(static_cast<size_t>(NK)),
      offsets(static_cast<size_t>(E) + 1);
  cpu::moe_permutation(slot_token.data(), slot_of.data(), offsets.data(), idx.data(), N, K, E);
  std::vector<float> xp(size_t(NK) * C, 0.0f);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++) {
      float* row = xp.data() + size_t(slot_of[size_t(n) * K + k]) * C;
      row[0] = float(me), row[1] = float(n), row[2] = float(k), row[3] = float(idx[size_t(n) * K + k]);
    }
  const Exec ex{};
  const int key = 0;
  const ExpertSide& s = x.dispatch(ex, &key, /*hf_layer=*/1, host_tensor(xp), host_tensor(offsets), NK, C);
  // what must arrive at each of my slots (homes, then the replica slot): source q's rows of
  // expert e in slot order, cut into one run per copy, run i to copy (i + q) mod copies
  std::vector<std::vector<std::tuple<int, int, int, int>>> want(size_t(L) + 1);
  for (int q = 0; q < P; q++) {
    const int Nq = tokens_of(q) * 3;
    const std::vector<int32_t> iq = routing(q, Nq, K, E);
    for (int e = 0; e < E; e++) {
      std::vector<std::pair<int, int>> rows;  // (n, k), in slot order (by token, then k)
      for (int n = 0; n < Nq; n++)
        for (int k = 0; k < K; k++)
          if (iq[size_t(n) * K + k] == e) rows.emplace_back(n, k);
      const size_t cn = copies[size_t(e)].size(), n = rows.size();
      for (size_t i = 0; i < cn; i++) {
        const auto [rank, slot] = copies[size_t(e)][(i + size_t(q)) % cn];
        if (rank != me) continue;
        for (size_t r = n * i / cn; r < n * (i + 1) / cn; r++)
          want[size_t(slot)].emplace_back(e, q, rows[r].first, rows[r].second);
      }
    }
  }
  std::vector<std::tuple<int, int, int, int>> order;  // slot-major, source order within a slot
  for (int slot = 0; slot <= L; slot++) {
    std::stable_sort(want[size_t(slot)].begin(), want[size_t(slot)].end(),
                     [](const auto& a, const auto& b) { return std::get<1>(a) < std::get<1>(b); });
    order.insert(order.end(), want[size_t(slot)].begin(), want[size_t(slot)].end());
  }
  ASSERT_EQ(s.rows, int(order.size()));
  ASSERT_EQ(s.replicas.rows, int(want[size_t(L)].size()));
  EXPECT_EQ(s.replicas.experts, 1);
  if (me == 1 || me == 2) {
    EXPECT_GT(s.replicas.rows, 0) << "a replica of expert 0 got no rows";
  }
  const float* got = s.xp.as<float>();
  for (size_t i = 0; i < order.size(); i++) {
    const auto& [e, q, n, k] = order[i];
    ASSERT_EQ(got[i * C + 3], float(e)) << "row " << i;
    ASSERT_EQ(got[i * C + 0], float(q)) << "row " << i;
    ASSERT_EQ(got[i * C + 1], float(n)) << "row " << i;
    ASSERT_EQ(got[i * C + 2], float(k)) << "row " << i;
  }
  // combine brings every row back to its slot
  std::vector<float> out(size_t(std::max(s.rows, 1)) * C), back(size_t(NK) * C, -1.0f);
  std::copy_n(got, size_t(s.rows) * C, out.data());
  for (int i = 0; i < s.rows; i++) out[size_t(i) * C + 3] += 100;
  x.combine(ex, &key, host_tensor(out.data(), size_t(s.rows) * C), host_tensor(back));
  for (int sl = 0; sl < NK; sl++)
    for (int col = 0; col < 4; col++)
      ASSERT_EQ(back[size_t(sl) * C + col], xp[size_t(sl) * C + col] + (col == 3 ? 100 : 0)) << "slot " << sl;
  // the replica's weights are its home's, gate/up then down
  const int mine = extra[0][size_t(me)];
  if (mine >= 0) {
    const std::string pe = "model.layers.1.mlp.experts." + std::to_string(mine);
    const size_t D = size_t(c.moe_inter), UC = D * size_t(C);
    const float* r13 = s.replicas.w13.as<float>();
    const float* r2 = s.replicas.w2.as<float>();
    for (size_t i = 0; i < UC; i++) {
      ASSERT_EQ(r13[i], value(pe + ".gate_proj.weight", i)) << i;
      ASSERT_EQ(r13[UC + i], value(pe + ".up_proj.weight", i)) << i;
      ASSERT_EQ(r2[i], value(pe + ".down_proj.weight", i)) << i;
    }
  }
  // replica gradients ((rank + 1) x pattern) are added into the home expert's gradient
  const size_t st = s.replicas.stride;
  std::fill_n(s.replicas.g13.as<float>(), st, float(me + 1));
  Buffer grads(Device::CPU, DType::F32, w.table().total);
  backend::zero(ex, grads.view());
  const MoeParams g = bind_moe(w.table(), grads.view(), Tensor{}, "model.layers.1", c);
  x.return_replica_grads(ex, &key, g);
  for (int j = 0; j < L; j++) {
    float from = 0;  // the ranks holding a replica of my expert j
    for (int q = 0; q < P; q++)
      if (extra[0][size_t(q)] == me * L + j) from += float(q + 1);
    const float* g13 = g.experts_w13.as<float>() + size_t(j) * g.expert_stride;
    const float* g2 = g.experts_w2.as<float>() + size_t(j) * g.expert_stride;
    for (size_t i = 0; i < 2 * size_t(c.moe_inter) * size_t(C); i++) ASSERT_EQ(g13[i], from) << i;
    for (size_t i = 0; i < size_t(c.moe_inter) * size_t(C); i++) ASSERT_EQ(g2[i], from) << i;
  }
  for (size_t i = 0; i < st; i++) ASSERT_EQ(s.replicas.g13.as<float>()[i], 0.0f) << "not reset";
}

// ---------------------------------------------------------------- gradient reduction

float pattern(size_t i) { return float(i % 7) + 1.0f; }

struct SyncRig {
  ModelConfig c = preset("debug");
  ParamTable t;
  dist::Collectives coll{30};
  dist::Group dp, edp;
  std::unique_ptr<GradSync> sync;
  std::vector<float> g;
  SyncRig(DistConfig cfg, int ep) {
    const dist::ParallelLayout l{W().size(), 1, 1, ep};
    const dist::ParallelGroups pg = dist::make_parallel_groups(W(), l);
    dp = dist::make_group(pg.dp, "dp");
    edp = dist::make_group(pg.edp, "edp");
    ExpertShard shard;
    if (ep > 1) shard = {pg.at.ep * (c.experts / ep), c.experts / ep};
    t = build_param_table(c, shard);
    cfg.bucket_mb = 0.02;  // ~5000 floats: several buckets per domain, a ragged one at the start
    sync = std::make_unique<GradSync>(t, c, dp, ep > 1 ? &edp : nullptr, coll, cfg, Device::CPU);
    g.assign(t.total, 0.0f);
  }
  // One micro-batch: gradients (rank + 1) * m * pattern, backward parts reported in order.
  void micro(int a, int micros, float m) {
    for (size_t i = 0; i < g.size(); i++) g[i] = float(W().rank() + 1) * m * pattern(i);
    sync->begin_micro(a, micros, host_tensor(g));
    for (int k = 1; k <= c.layers + 2; k++) sync->part_done(k);
    sync->end_micro();
  }
  // sum over the ranks reducing element i of (rank + 1)
  float group_sum(size_t i) const {
    const dist::Group& grp = t.sharded() && i >= t.experts_begin ? edp : dp;
    float s = 0;
    for (int r : grp.world_ranks) s += float(r + 1);
    return s;
  }
};

TEST(GradSync, Zero0AllReducesEveryBucketExactly) {
  for (int ep : {1, 2}) {
    DistConfig cfg;
    SyncRig rig(cfg, ep);
    rig.micro(0, 1, 1.0f);
    rig.sync->finish();
    size_t bad = 0;
    for (size_t i = 0; i < rig.g.size(); i++) bad += rig.g[i] != rig.group_sum(i) * pattern(i);
    EXPECT_EQ(bad, 0u) << "ep " << ep;
    EXPECT_GT(rig.coll.ledger().calls[size_t(dist::Coll::AllReduce)], 2) << "several buckets";
  }
}

// The owned pieces of all ranks partition each domain; ZeRO-1 leaves the sum in them and
// ZeRO-2 accumulates two micro-batches in them.
TEST(GradSync, ZeroShardsHoldTheSumOfTheirPieces) {
  for (int zero : {1, 2})
    for (int ep : {1, 2}) {
      DistConfig cfg;
      cfg.zero = zero;
      SyncRig rig(cfg, ep);
      const int micros = zero == 2 ? 2 : 1;
      for (int a = 0; a < micros; a++) rig.micro(a, micros, float(a + 1));
      rig.sync->finish();
      const float factor = zero == 2 ? 3.0f : 1.0f;  // 1 + 2 over the micro-batches
      const float* sh = rig.sync->shard_grads().as<float>();
      size_t bad = 0, owned = 0;
      for (const GradSync::Piece& p : rig.sync->own())
        for (size_t i = 0; i < p.len; i++, owned++)
          bad += sh[p.shard + i] != factor * rig.group_sum(p.flat + i) * pattern(p.flat + i);
      EXPECT_EQ(bad, 0u) << "zero " << zero << " ep " << ep;
      // every element is owned by exactly one rank of its group
      std::vector<int32_t> count(rig.t.total, 0);
      for (const GradSync::Piece& p : rig.sync->own())
        for (size_t i = 0; i < p.len; i++) count[p.flat + i]++;
      W().all_reduce(count.data(), count.size(), DType::I32);
      size_t wrong = 0;
      for (size_t i = 0; i < count.size(); i++)
        wrong += count[i] != int32_t(W().size() / rig.dp.size() *
                                     (rig.t.sharded() && i >= rig.t.experts_begin
                                          ? rig.dp.size() / rig.edp.size() : 1));
      EXPECT_EQ(wrong, 0u) << "zero " << zero << " ep " << ep << ": pieces do not partition";
      EXPECT_EQ(owned, rig.sync->shard_size());
    }
}

// int8: within the quantisation bound of each piece (every rank's scale / 2, then the owner's
// re-quantisation); top-k: exactly the sum of every rank's k largest entries.
TEST(GradSync, CompressedReductionsKeepTheirBounds) {
  DistConfig cfg;
  cfg.grad_compress = GradCompress::Int8;
  SyncRig q(cfg, 1);
  q.micro(0, 1, 1.0f);
  q.sync->finish();
  const int n = W().size();
  const double sum_ranks = n * (n + 1) / 2.0;
  // |v| <= 7 (rank + 1) per rank: error <= sum_r 7 (r + 1) / 254 + 7 sum_ranks / 254
  const double bound = 2 * 7 * sum_ranks / 254 + 1e-5;
  double worst = 0;
  for (size_t i = 0; i < q.g.size(); i++)
    worst = std::max(worst, std::fabs(double(q.g[i]) - sum_ranks * pattern(i)));
  EXPECT_LE(worst, bound);
  EXPECT_GT(worst, 0.0) << "int8 cannot be exact on these values";
  EXPECT_LT(q.sync->grad_wire_bytes(), 0.35 * 2.0 * (n - 1) / n * 4.0 * double(q.t.total));

  cfg.grad_compress = GradCompress::TopK;
  cfg.topk_ratio = 0.1;
  SyncRig k(cfg, 1);
  k.micro(0, 1, 1.0f);
  k.sync->finish();
  // every rank's top-k entries of the same bucket are the same positions (the pattern scales)
  size_t sent = 0, bad = 0;
  for (size_t i = 0; i < k.g.size(); i++) {
    if (k.g[i] == 0) continue;
    sent++;
    bad += k.g[i] != float(sum_ranks) * pattern(i);
  }
  EXPECT_EQ(bad, 0u);
  EXPECT_GT(sent, 0u);
  EXPECT_LE(sent, size_t(0.11 * double(k.t.total)) + 64);
}

// ---------------------------------------------------------------- watchdog

TEST(Watchdog, NamesTheRankThatDidNotArrive) {
  const int late = W().size() - 1;
  dist::Group g = dist::make_group(W().split(0, W().rank()), "test");
  dist::Collectives coll(1.0);
  int32_t x = 1;
  if (W().rank() == late) {
    // busy elsewhere past the others' timeout and grace, then joins so nothing is left pending
    std::this_thread::sleep_for(std::chrono::milliseconds(3500));
    coll.run(coll.all_reduce(g, dist::Purpose::Stats, &x, 1, DType::I32));
  } else {
    const std::string msg =
        error_of([&] { coll.run(coll.all_reduce(g, dist::Purpose::Stats, &x, 1, DType::I32)); });
    EXPECT_NE(msg.find("all_reduce #1 of group test"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank " + std::to_string(late) + " did not arrive"), std::string::npos)
        << msg;
    EXPECT_NE(msg.find("no answer from " + std::to_string(late)), std::string::npos) << msg;
    EXPECT_NE(msg.find("are waiting in it"), std::string::npos) << msg;
  }
  W().barrier();
}

// A rank whose threads wait in different Collectives (the pipeline's overlapped F&B) answers a
// peer's question to one of them from whichever thread polls, naming what it is blocked in.
TEST(Watchdog, ARankAnswersFromWhicheverThreadPolls) {
  ASSERT_TRUE(dist::concurrent_threads()) << "Open MPI without MPI_THREAD_MULTIPLE";
  const int late = W().size() - 1;
  dist::Group ga = dist::make_group(W().split(0, W().rank()), "a");
  dist::Group gb = dist::make_group(W().split(0, W().rank()), "b");
  dist::Collectives a(1.0), b(30.0);  // created in the same order everywhere (collective)
  int32_t x = 1, y = 1;
  if (W().rank() == late) {
    // a second thread waits in b's all-reduce; this thread is busy and never polls a
    std::thread t([&] { b.run(b.all_reduce(gb, dist::Purpose::Stats, &y, 1, DType::I32)); });
    t.join();
    a.run(a.all_reduce(ga, dist::Purpose::Stats, &x, 1, DType::I32));  // nothing left pending
  } else {
    const std::string msg =
        error_of([&] { a.run(a.all_reduce(ga, dist::Purpose::Stats, &x, 1, DType::I32)); });
    EXPECT_NE(msg.find("all_reduce #1 of group a"), std::string::npos) << msg;
    EXPECT_NE(msg.find("rank " + std::to_string(late) + " has started 0 operations on the "
                       "group and is blocked in all_reduce #1 of group b"), std::string::npos)
        << msg;
    b.run(b.all_reduce(gb, dist::Purpose::Stats, &y, 1, DType::I32));  // lets it go
  }
  W().barrier();
}

}  // namespace
}  // namespace dsv3::test

int main(int argc, char** argv) {
  return dsv3::test::run_mpi_gtests(argc, argv, "test_dist_mpi", 4);
}
