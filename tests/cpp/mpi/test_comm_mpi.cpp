// P1 under `mpirun -np 4` (ctest: comm_mpi, label mpi): every collective, point-to-point op and
// nonblocking twin on every dtype, exact, with payloads that say which rank sent them to whom;
// all_to_allv with uneven counts and zeros; split/subset groups and the parallel layout's
// groups; errors that must be Errors, not hangs. The data tests run twice: with the default 1 GiB
// pieces and with 16-byte pieces, which sends every operation down the path counts beyond INT_MAX
// take; CommLarge (ctest comm_mpi_large, 2 ranks) sends INT_MAX + 3 bytes for real.
// Every TEST is collective: all ranks run the same tests in the same order. Rank 0 prints the
// usual report; other ranks print only their failures, prefixed with their rank.
#include <gtest/gtest.h>

#include <climits>
#include <cstdio>
#include <fstream>
#include <memory>
#include <numeric>

#include "comm_test_util.h"
#include "mpi_gtest_main.h"
#include "core/check.h"
#include "dist/comm.h"
#include "dist/layout.h"

namespace dsv3::test {
namespace {

using dist::Comm;
using dist::ReduceOp;
using dist::Request;

const Comm& W() { return dist::world(); }


// Elements [begin, end) of b against want(i), reporting the first difference.
template <typename F>
::testing::AssertionResult matches(const Buf& b, size_t begin, size_t end, F&& want) {
  for (size_t i = begin; i < end; i++)
    if (b.get(i) != want(i))
      return ::testing::AssertionFailure() << dtype_name(b.t) << " element " << i << ": got "
                                           << b.get(i) << ", expected " << want(i);
  return ::testing::AssertionSuccess();
}

std::vector<int> iota_ranks(int n) {
  std::vector<int> r(static_cast<size_t>(n));
  std::iota(r.begin(), r.end(), 0);
  return r;
}
// World ranks of g's members, in g's rank order (gathered through g itself).
std::vector<int> members(const Comm& g) {
  const int32_t mine = W().rank();
  std::vector<int32_t> all(size_t(g.size()));
  g.all_gather(&mine, all.data(), 1, DType::I32);
  return {all.begin(), all.end()};
}

// --- data operations, whole and in pieces ------------------------------------------------------

class CommOps : public ::testing::TestWithParam<size_t> {  // piece bytes; 0: the default 1 GiB
 protected:
  void SetUp() override { dist::set_chunk_bytes_for_testing(GetParam()); }
  void TearDown() override { dist::set_chunk_bytes_for_testing(0); }
};
INSTANTIATE_TEST_SUITE_P(Chunks, CommOps, ::testing::Values(size_t(0), size_t(16)),
                         [](const ::testing::TestParamInfo<size_t>& p) {
                           return p.param == 0 ? std::string("Whole")
                                               : "Pieces" + std::to_string(p.param) + "B";
                         });

TEST_P(CommOps, AllReduceEveryDtypeAndOp) {
  const Comm& w = W();
  const auto all = iota_ranks(w.size());
  const size_t n = 37;
  for (DType t : kAllDTypes)
    for (ReduceOp op : kAllOps)
      for (int nb = 0; nb < 2; nb++) {
        Buf b(t, n);
        for (size_t i = 0; i < n; i++) b.set(i, reduce_input(w.rank(), i));
        if (nb)
          w.iall_reduce(b.data(), n, t, op).wait();
        else
          w.all_reduce(b.data(), n, t, op);
        EXPECT_TRUE(matches(b, 0, n, [&](size_t i) { return reduce_expected(op, all, i); }))
            << op_name(op) << (nb ? " nonblocking" : "");
      }
}

TEST_P(CommOps, ReduceScatterEveryDtypeAndOp) {
  const Comm& w = W();
  const auto all = iota_ranks(w.size());
  const size_t n = 11, me = size_t(w.rank());
  for (DType t : kAllDTypes)
    for (ReduceOp op : kAllOps)
      for (int nb = 0; nb < 2; nb++) {
        Buf send(t, n * size_t(w.size())), recv(t, n);
        for (size_t i = 0; i < send.size(); i++) send.set(i, reduce_input(w.rank(), i));
        if (nb)
          w.ireduce_scatter(send.data(), recv.data(), n, t, op).wait();
        else
          w.reduce_scatter(send.data(), recv.data(), n, t, op);
        EXPECT_TRUE(matches(recv, 0, n, [&](size_t i) { return reduce_expected(op, all, me * n + i); }))
            << op_name(op) << (nb ? " nonblocking" : "");
      }
}

TEST_P(CommOps, AllGatherEveryDtypeAlsoInPlace) {
  const Comm& w = W();
  const size_t n = 9, P = size_t(w.size()), me = size_t(w.rank());
  for (DType t : kAllDTypes)
    for (int mode = 0; mode < 3; mode++) {  // blocking, nonblocking, in place
      Buf send(t, n), recv(t, n * P);
      for (size_t i = 0; i < n; i++) send.set(i, payload(t, w.rank(), 0, i));
      const void* src = send.data();
      if (mode == 2) {
        for (size_t i = 0; i < n; i++) recv.set(me * n + i, payload(t, w.rank(), 0, i));
        src = static_cast<const char*>(recv.data()) + me * n * dtype_size(t);
      }
      if (mode == 1)
        w.iall_gather(src, recv.data(), n, t).wait();
      else
        w.all_gather(src, recv.data(), n, t);
      EXPECT_TRUE(matches(recv, 0, n * P, [&](size_t i) { return payload(t, int(i / n), 0, i % n); }))
          << "mode " << mode;
    }
}

TEST_P(CommOps, AllToAllEveryDtype) {
  const Comm& w = W();
  const size_t n = 7, P = size_t(w.size());
  for (DType t : kAllDTypes)
    for (int nb = 0; nb < 2; nb++) {
      Buf send(t, n * P), recv(t, n * P);
      for (size_t i = 0; i < n * P; i++) send.set(i, payload(t, w.rank(), int(i / n), i % n));
      if (nb)
        w.iall_to_all(send.data(), recv.data(), n, t).wait();
      else
        w.all_to_all(send.data(), recv.data(), n, t);
      EXPECT_TRUE(matches(recv, 0, n * P, [&](size_t i) { return payload(t, int(i / n), w.rank(), i % n); }))
          << (nb ? "nonblocking" : "");
    }
}

// Uneven counts with zeros: ranks 0 and 1 send themselves nothing, 2 and 3 send themselves 3
// elements, and some pairs exchange nothing (2 -> 1, for one).
size_t v_count(int src, int dst) { return size_t((src * 3 + dst * 5 + src / 2) % 4) * 3; }

TEST_P(CommOps, AllToAllvUnevenCountsZerosAndGaps) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  constexpr double kUntouched = 77;
  for (DType t : kAllDTypes)
    for (int variant = 0; variant < 4; variant++) {  // bit 0: nonblocking; bit 1: gaps on the send side
      const bool nb = variant & 1, send_gaps = variant & 2;
      std::vector<size_t> sc(static_cast<size_t>(P)), rc(static_cast<size_t>(P)), sd, rd;
      for (int p = 0; p < P; p++) {
        sc[size_t(p)] = v_count(me, p);
        rc[size_t(p)] = v_count(p, me);
      }
      // the gapped side: 1 element before the first piece, 2 between pieces, left untouched
      auto gapped = [](const std::vector<size_t>& c, std::vector<size_t>& d) {
        size_t at = 1;
        for (size_t x : c) {
          d.push_back(at);
          at += x + 2;
        }
        return at;
      };
      const size_t packed_s = std::accumulate(sc.begin(), sc.end(), size_t(0));
      const size_t packed_r = std::accumulate(rc.begin(), rc.end(), size_t(0));
      const size_t ns = send_gaps ? gapped(sc, sd) : packed_s;
      const size_t nr = send_gaps ? packed_r : gapped(rc, rd);
      Buf send(t, ns), recv(t, nr);
      for (size_t i = 0; i < nr; i++) recv.set(i, kUntouched);
      for (int p = 0, at = 0; p < P; p++)
        for (size_t i = 0; i < sc[size_t(p)]; i++)
          send.set(send_gaps ? sd[size_t(p)] + i : size_t(at++), payload(t, me, p, i));
      if (nb)
        w.iall_to_allv(send.data(), {sc, sd}, recv.data(), {rc, rd}, t).wait();
      else
        w.all_to_allv(send.data(), {sc, sd}, recv.data(), {rc, rd}, t);
      std::vector<double> want(nr, kUntouched);
      for (int p = 0, at = 0; p < P; p++)
        for (size_t i = 0; i < rc[size_t(p)]; i++)
          want[send_gaps ? size_t(at++) : rd[size_t(p)] + i] = payload(t, p, me, i);
      EXPECT_TRUE(matches(recv, 0, nr, [&](size_t i) { return want[i]; })) << "variant " << variant;
    }
}

TEST_P(CommOps, BroadcastFromEveryRoot) {
  const Comm& w = W();
  const size_t n = 21;
  for (DType t : kAllDTypes)
    for (int root = 0; root < w.size(); root++)
      for (int nb = 0; nb < 2; nb++) {
        Buf b(t, n);
        for (size_t i = 0; i < n; i++) b.set(i, w.rank() == root ? payload(t, root, 0, i) : 0);
        if (nb)
          w.ibroadcast(b.data(), n, t, root).wait();
        else
          w.broadcast(b.data(), n, t, root);
        EXPECT_TRUE(matches(b, 0, n, [&](size_t i) { return payload(t, root, 0, i); })) << "root " << root;
      }
}

TEST_P(CommOps, SendRecvRoundTheRing) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size(), next = (me + 1) % P, prev = (me + P - 1) % P;
  for (DType t : kAllDTypes) {
    // blocking: even ranks send first, odd ranks receive first
    const size_t n = 19;
    Buf out(t, n), in(t, n);
    for (size_t i = 0; i < n; i++) out.set(i, payload(t, me, next, i));
    if (me % 2 == 0) {
      w.send(out.data(), n, t, next, 5);
      w.recv(in.data(), n, t, prev, 5);
    } else {
      w.recv(in.data(), n, t, prev, 5);
      w.send(out.data(), n, t, next, 5);
    }
    EXPECT_TRUE(matches(in, 0, n, [&](size_t i) { return payload(t, prev, me, i); }));
    // nonblocking: two messages told apart by tag, received in the opposite order they are sent
    const size_t n1 = 13, n2 = 29;
    Buf o1(t, n1), o2(t, n2), i1(t, n1), i2(t, n2);
    for (size_t i = 0; i < n1; i++) o1.set(i, payload(t, me, next, i));
    for (size_t i = 0; i < n2; i++) o2.set(i, payload(t, me, next, i + 3));
    Request r2 = w.irecv(i2.data(), n2, t, prev, 2);
    Request r1 = w.irecv(i1.data(), n1, t, prev, 1);
    Request s1 = w.isend(o1.data(), n1, t, next, 1);
    Request s2 = w.isend(o2.data(), n2, t, next, 2);
    while (!r1.test()) {
    }
    r2.wait();
    s2.wait();
    s1.wait();
    EXPECT_TRUE(matches(i1, 0, n1, [&](size_t i) { return payload(t, prev, me, i); }));
    EXPECT_TRUE(matches(i2, 0, n2, [&](size_t i) { return payload(t, prev, me, i + 3); }));
  }
}

TEST_P(CommOps, BytesOfEveryLengthIncludingEmpty) {
  const Comm& w = W();
  auto text = [](int r) {
    if (r == 1) return std::string();
    std::string s(size_t(r) * 1000 + 7, char('a' + r));
    s[3] = '\0';
    return s;
  };
  const auto all = w.all_gather_bytes(text(w.rank()));
  ASSERT_EQ(all.size(), size_t(w.size()));
  for (int r = 0; r < w.size(); r++) EXPECT_EQ(all[size_t(r)], text(r)) << "from rank " << r;
  for (int root = 0; root < w.size(); root++) {
    std::string s = w.rank() == root ? text(root) + "root" : std::string(5, 'x');
    w.broadcast_bytes(s, root);
    EXPECT_EQ(s, text(root) + "root");
  }
}

TEST_P(CommOps, ZeroCountsAndNullBuffersAreFine) {
  const Comm& w = W();
  const std::vector<size_t> zeros(size_t(w.size()), 0);
  w.all_reduce(nullptr, 0, DType::F32);
  w.reduce_scatter(nullptr, nullptr, 0, DType::BF16);
  w.all_gather(nullptr, nullptr, 0, DType::I64);
  w.all_to_all(nullptr, nullptr, 0, DType::U8);
  w.all_to_allv(nullptr, {zeros}, nullptr, {zeros}, DType::F16);
  w.broadcast(nullptr, 0, DType::F64, 0);
  w.iall_to_allv(nullptr, {zeros}, nullptr, {zeros}, DType::F16).wait();
  const int me = w.rank(), P = w.size();
  Request s = w.isend(nullptr, 0, DType::I32, (me + 1) % P, 4);
  w.recv(nullptr, 0, DType::I32, (me + P - 1) % P, 4);
  s.wait();
}

// Several operations in flight at once (gradient buckets during backward), finished in the
// opposite order, one by polling; a Request dropped unwaited still completes.
TEST_P(CommOps, NonblockingOperationsOverlap) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  const auto all = iota_ranks(P);
  const size_t n = 23;
  Buf a(DType::F32, n), b(DType::BF16, n), g(DType::I64, n * size_t(P)), gs(DType::I64, n);
  Buf rs_in(DType::F16, n * size_t(P)), rs_out(DType::F16, n), bc(DType::U8, n);
  for (size_t i = 0; i < n; i++) {
    a.set(i, reduce_input(me, i));
    b.set(i, reduce_input(me, i));
    gs.set(i, payload(DType::I64, me, 0, i));
    bc.set(i, me == P - 1 ? payload(DType::U8, P - 1, 0, i) : 0);
  }
  for (size_t i = 0; i < rs_in.size(); i++) rs_in.set(i, reduce_input(me, i));
  std::vector<size_t> sc(static_cast<size_t>(P)), rc(static_cast<size_t>(P));
  for (int p = 0; p < P; p++) {
    sc[size_t(p)] = v_count(me, p);
    rc[size_t(p)] = v_count(p, me);
  }
  Buf vs(DType::I32, std::accumulate(sc.begin(), sc.end(), size_t(0)));
  Buf vr(DType::I32, std::accumulate(rc.begin(), rc.end(), size_t(0)));
  for (int p = 0, at = 0; p < P; p++)
    for (size_t i = 0; i < sc[size_t(p)]; i++) vs.set(size_t(at++), payload(DType::I32, me, p, i));
  std::vector<Request> reqs;
  reqs.push_back(w.iall_reduce(a.data(), n, DType::F32));
  reqs.push_back(w.iall_reduce(b.data(), n, DType::BF16, ReduceOp::Max));
  reqs.push_back(w.iall_gather(gs.data(), g.data(), n, DType::I64));
  reqs.push_back(w.ireduce_scatter(rs_in.data(), rs_out.data(), n, DType::F16));
  reqs.push_back(w.iall_to_allv(vs.data(), {sc}, vr.data(), {rc}, DType::I32));
  reqs.push_back(w.ibroadcast(bc.data(), n, DType::U8, P - 1));
  int32_t token = me, got = -1;
  reqs.push_back(w.irecv(&got, 1, DType::I32, (me + P - 1) % P, 7));
  {
    Request dropped = w.isend(&token, 1, DType::I32, (me + 1) % P, 7);
  }  // waits here
  while (!reqs[0].test()) {
  }
  for (size_t k = reqs.size(); k-- > 1;) reqs[k].wait();
  EXPECT_TRUE(matches(a, 0, n, [&](size_t i) { return reduce_expected(ReduceOp::Sum, all, i); }));
  EXPECT_TRUE(matches(b, 0, n, [&](size_t i) { return reduce_expected(ReduceOp::Max, all, i); }));
  EXPECT_TRUE(matches(g, 0, g.size(), [&](size_t i) { return payload(DType::I64, int(i / n), 0, i % n); }));
  EXPECT_TRUE(matches(rs_out, 0, n, [&](size_t i) { return reduce_expected(ReduceOp::Sum, all, size_t(me) * n + i); }));
  EXPECT_TRUE(matches(bc, 0, n, [&](size_t i) { return payload(DType::U8, P - 1, 0, i); }));
  std::vector<double> want;
  for (int p = 0; p < P; p++)
    for (size_t i = 0; i < rc[size_t(p)]; i++) want.push_back(payload(DType::I32, p, me, i));
  EXPECT_TRUE(matches(vr, 0, want.size(), [&](size_t i) { return want[i]; }));
  EXPECT_EQ(got, (me + P - 1) % P);
}

// --- groups ---------------------------------------------------------------------------------------

TEST(CommGroups, SplitByParityOrderedByKey) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  const Comm g = w.split(me % 2, -me);  // key -rank: reversed order
  std::vector<int> want;
  for (int r = P - 1; r >= 0; r--)
    if (r % 2 == me % 2) want.push_back(r);
  ASSERT_TRUE(g);
  EXPECT_EQ(members(g), want);
  EXPECT_EQ(g.rank(), int(std::find(want.begin(), want.end(), me) - want.begin()));
  for (DType t : kAllDTypes) {
    Buf b(t, 15);
    for (size_t i = 0; i < b.size(); i++) b.set(i, reduce_input(me, i));
    g.all_reduce(b.data(), b.size(), t);
    EXPECT_TRUE(matches(b, 0, b.size(), [&](size_t i) { return reduce_expected(ReduceOp::Sum, want, i); }));
  }
  EXPECT_EQ(members(g.split(0, 0)), want);  // a split of a split
  // the last rank joins no group
  const Comm rest = w.split(me == P - 1 ? Comm::kNoColor : 0, me);
  EXPECT_EQ(bool(rest), me != P - 1);
  if (rest) {
    EXPECT_EQ(rest.size(), P - 1);
  } else {
    float x = 0;
    EXPECT_TRUE(has(error_of([&] { rest.all_reduce(&x, 1, DType::F32); }), "not in the group"));
  }
}

TEST(CommGroups, SubsetFromARankList) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  const std::vector<int> list{P - 1, 0};  // reversed: new ranks follow the list
  const Comm g = w.subset(list);
  const bool in = me == P - 1 || me == 0;
  ASSERT_EQ(bool(g), in);
  if (g) {
    EXPECT_EQ(g.rank(), me == P - 1 ? 0 : 1);
    EXPECT_EQ(members(g), list);
  }
  const std::vector<int> twice{0, 0}, outside{P};
  EXPECT_TRUE(has(error_of([&] { (void)w.subset(twice); }), "listed twice"));
  EXPECT_TRUE(has(error_of([&] { (void)w.subset(outside); }), "not a rank"));
}

// Every layout of the world: each group's members (gathered through the group), its size and a
// reduction inside it, against the coordinates; dp2 x tp2 and dp4/ep2 also against tables.
TEST(CommGroups, EveryParallelLayoutOfTheWorld) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  int layouts = 0;
  for (int dp = 1; dp <= P; dp++)
    for (int tp = 1; tp <= P; tp++)
      for (int pp = 1; pp <= P; pp++)
        for (int ep = 1; ep <= dp; ep++) {
          if (dp * tp * pp != P || dp % ep != 0) continue;
          const dist::ParallelLayout l{dp, tp, pp, ep};
          const dist::ParallelGroups g = dist::make_parallel_groups(w, l);
          layouts++;
          const dist::RankCoords c = dist::rank_coords(l, me);
          EXPECT_EQ(g.rank, me);
          EXPECT_EQ(g.at.dp, c.dp);
          EXPECT_EQ(g.at.ep, c.ep);
          // members: every rank agreeing with me on all but the group's own dimension
          auto expect_group = [&](const Comm& grp, const char* name, auto same) {
            std::vector<int> want;
            for (int r = 0; r < P; r++)
              if (same(dist::rank_coords(l, r))) want.push_back(r);
            EXPECT_EQ(members(grp), want) << name << " group, " << dist::describe(l);
            int64_t sum = me;
            grp.all_reduce(&sum, 1, DType::I64);
            EXPECT_EQ(sum, std::accumulate(want.begin(), want.end(), int64_t(0))) << name;
          };
          expect_group(g.tp, "tp", [&](auto o) { return o.dp == c.dp && o.pp == c.pp; });
          expect_group(g.pp, "pp", [&](auto o) { return o.dp == c.dp && o.tp == c.tp; });
          expect_group(g.dp, "dp", [&](auto o) { return o.tp == c.tp && o.pp == c.pp; });
          expect_group(g.ep, "ep", [&](auto o) { return o.tp == c.tp && o.pp == c.pp && o.edp == c.edp; });
          expect_group(g.edp, "edp", [&](auto o) { return o.tp == c.tp && o.pp == c.pp && o.ep == c.ep; });
          if (pp > 1) {  // pipeline ranks s and P-1-s: the tensors both hold (train/pipeline.h)
            const auto pair = [&](const dist::RankCoords& o) {
              return o.pp == c.pp || o.pp == pp - 1 - c.pp;
            };
            expect_group(g.dp_mirror, "dp_mirror", [&](auto o) { return o.tp == c.tp && pair(o); });
            expect_group(g.edp_mirror, "edp_mirror",
                         [&](auto o) { return o.tp == c.tp && o.ep == c.ep && pair(o); });
          } else {
            EXPECT_FALSE(g.dp_mirror) << dist::describe(l);
          }
          EXPECT_EQ(g.tp.size(), tp);
          EXPECT_EQ(g.pp.size(), pp);
          EXPECT_EQ(g.dp.size(), dp);
          EXPECT_EQ(g.ep.size(), ep);
          EXPECT_EQ(g.edp.size(), dp / ep);
        }
  EXPECT_GT(layouts, 0);
  if (P != 4) return;
  using V = std::vector<int>;
  const V pairs[4] = {{0, 1}, {0, 1}, {2, 3}, {2, 3}}, strided[4] = {{0, 2}, {1, 3}, {0, 2}, {1, 3}};
  const auto a = dist::make_parallel_groups(w, {2, 2, 1, 1});  // ranks: tp fastest
  EXPECT_EQ(members(a.tp), pairs[me]);
  EXPECT_EQ(members(a.dp), strided[me]);
  const char* a_text[4] = {"rank 0: dp 0 tp 0 pp 0 ep 0", "rank 1: dp 0 tp 1 pp 0 ep 0",
                           "rank 2: dp 1 tp 0 pp 0 ep 0", "rank 3: dp 1 tp 1 pp 0 ep 0"};
  EXPECT_EQ(a.describe(), a_text[me]);
  const auto b = dist::make_parallel_groups(w, {4, 1, 1, 2});  // experts on pairs of dp ranks
  EXPECT_EQ(members(b.dp), (V{0, 1, 2, 3}));
  EXPECT_EQ(members(b.ep), pairs[me]);
  EXPECT_EQ(members(b.edp), strided[me]);
  const char* b_text[4] = {"rank 0: dp 0 tp 0 pp 0 ep 0", "rank 1: dp 1 tp 0 pp 0 ep 1",
                           "rank 2: dp 2 tp 0 pp 0 ep 0", "rank 3: dp 3 tp 0 pp 0 ep 1"};
  EXPECT_EQ(b.describe(), b_text[me]);
  EXPECT_TRUE(has(error_of([&] { dist::make_parallel_groups(w, {2, 1, 1, 1}); }), "world has 4"));
}

TEST(CommGroups, RequireSingleProcessRefusesManyRanks) {
  const std::string e = error_of([] { dist::require_single_process("bench"); });
  EXPECT_TRUE(has(e, "dsv3 bench was started as " + std::to_string(W().size()) +
                         " processes (mpirun/srun), but it runs as one process")) << e;
}

// --- errors ---------------------------------------------------------------------------------------

TEST(CommErrors, WrongCountsAreErrorsNotHangs) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  int32_t buf[8] = {};
  // a receive shorter than the message: MPI's truncation, reported through MPI_ERRORS_RETURN
  if (me == 0) w.send(buf, 8, DType::I32, 1, 9);
  if (me == 1) {
    const std::string e = error_of([&] { w.recv(buf, 4, DType::I32, 0, 9); });
    EXPECT_TRUE(has(e, "dist::recv on rank 1 of " + std::to_string(P) + ": MPI_Recv failed")) << e;
  }
  // a receive longer than the message
  if (me == 0) w.send(buf, 4, DType::I32, 1, 9);
  if (me == 1) {
    const std::string e = error_of([&] { w.recv(buf, 8, DType::I32, 0, 9); });
    EXPECT_TRUE(has(e, "expected 8 elements from rank 0, got 4")) << e;
  }
  if (me == 0) w.send(buf, 4, DType::I32, 1, 9);
  if (me == 1) {
    Request r = w.irecv(buf, 8, DType::I32, 0, 9);
    const std::string e = error_of([&] { r.wait(); });
    EXPECT_TRUE(has(e, "dist::irecv on rank 1")) << e;
    EXPECT_TRUE(has(e, "expected 8 elements from rank 0, got 4")) << e;
  }
  // all_to_allv whose counts disagree: rank 0 sends rank 1 one element more than it expects,
  // rank P-1 sends rank P-2 one fewer; those two receivers fail, everyone finishes
  std::vector<size_t> sc(size_t(P), 2), rc(size_t(P), 2);
  if (me == 0) sc[1] = 3;
  if (me == P - 1) sc[size_t(P - 2)] = 1;
  std::vector<int32_t> s(size_t(2 * P + 1)), r(size_t(2 * P + 1));
  const std::string e = error_of([&] { w.all_to_allv(s.data(), {sc}, r.data(), {rc}, DType::I32); });
  if (me == 1) {
    EXPECT_TRUE(has(e, "dist::all_to_allv on rank 1")) << e;
  } else if (me == P - 2) {
    EXPECT_TRUE(has(e, "expected 2 elements from rank " + std::to_string(P - 1) + ", got 1")) << e;
  } else {
    EXPECT_EQ(e, "");
  }
  // and the world still works
  int64_t x = 1;
  w.all_reduce(&x, 1, DType::I64);
  EXPECT_EQ(x, P);
}

TEST(CommErrors, BadArgumentsFailBeforeCommunicating) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  float x[4] = {};
  int stream = 0;
  const std::vector<size_t> short_counts(size_t(P - 1), 0), counts(size_t(P), 0);
  EXPECT_TRUE(has(error_of([&] { w.broadcast(x, 4, DType::F32, P); }), "dist::broadcast on rank"));
  EXPECT_TRUE(has(error_of([&] { w.broadcast(x, 4, DType::F32, -1); }), "root -1"));
  EXPECT_TRUE(has(error_of([&] { w.send(x, 4, DType::F32, me, 0); }), "is this rank"));
  EXPECT_TRUE(has(error_of([&] { w.send(x, 4, DType::F32, P, 0); }), "not a rank"));
  EXPECT_TRUE(has(error_of([&] { (void)w.irecv(x, 4, DType::F32, (me + 1) % P, 40000); }), "tag 40000"));
  EXPECT_TRUE(has(error_of([&] { w.all_to_allv(x, {short_counts}, x, {counts}, DType::F32); }),
                  std::to_string(P - 1) + " counts for a group of " + std::to_string(P)));
  EXPECT_TRUE(has(error_of([&] { w.all_reduce(x, 4, DType::F32, ReduceOp::Sum, &stream); }), "stream"));
  EXPECT_TRUE(has(error_of([&] { w.all_gather(nullptr, x, 4, DType::F32); }), "send is null"));
  EXPECT_TRUE(has(error_of([&] { (void)w.split(-3, 0); }), "negative"));
  w.barrier();
}

// --- counts beyond INT_MAX ------------------------------------------------------------------------

size_t mem_available_bytes() {
  std::ifstream f("/proc/meminfo");  // lines like "MemAvailable:   23000000 kB"
  std::string key, unit;
  size_t kb = 0;
  while (f >> key >> kb >> unit)
    if (key == "MemAvailable:") return kb * 1024;
  return 0;
}

// Run as their own ctest (comm_mpi_large, 2 ranks). Buffers come fresh from the OS, so pages
// nobody writes cost nothing: the payload is a marker every 64 KiB (at a shifting offset inside
// the page, valued by its index and the sender), the rest zeros, and the receiver checks each
// marker and the zero after it, so a piece landing at a wrong offset shows.
constexpr size_t kMarkerStride = 65536;
size_t marker_at(size_t k) { return k * kMarkerStride + (k * 13) % 4096; }
uint8_t marker(size_t k, int src) { return uint8_t(1 + (k * 31 + size_t(src) * 101) % 255); }

TEST(CommLarge, SendRecvBeyondIntMaxElements) {
  const Comm& w = W();
  const size_t n = size_t(INT_MAX) + 3;  // u8 elements
  int32_t room = w.rank() == 0 && mem_available_bytes() > 2 * n;
  w.broadcast(&room, 1, DType::I32, 0);  // one decision for all ranks
  if (!room) GTEST_SKIP() << "needs 2 GiB of free memory; the 16-byte-piece tests cover the path";
  const size_t markers = (n - 4096) / kMarkerStride;
  if (w.rank() == 0) {
    std::unique_ptr<uint8_t[]> b(new uint8_t[n]);  // untouched: reads as zeros
    for (size_t k = 0; k < markers; k++) b[marker_at(k)] = marker(k, 0);
    b[n - 1] = 42;
    w.send(b.get(), n, DType::U8, 1, 3);
  } else if (w.rank() == 1) {
    std::unique_ptr<uint8_t[]> b(new uint8_t[n]);
    b[n - 1] = 0;
    w.recv(b.get(), n, DType::U8, 0, 3);
    size_t bad = 0;
    for (size_t k = 0; k < markers; k++)
      bad += b[marker_at(k)] != marker(k, 0) || b[marker_at(k) + 1] != 0;
    EXPECT_EQ(bad, 0u);
    EXPECT_EQ(b[n - 1], 42);
  }
  w.barrier();
}

// Displacements beyond INT_MAX (MPI_Alltoallv's int displacements could not say them): each rank
// sends every rank a small piece from past INT_MAX in its send buffer to past INT_MAX in the
// peer's receive buffer.
TEST(CommLarge, AllToAllvDisplacementsBeyondIntMax) {
  const Comm& w = W();
  const int me = w.rank(), P = w.size();
  const size_t base = size_t(INT_MAX) + 10, piece = 5000, n = base + piece * size_t(P);
  std::unique_ptr<uint8_t[]> send(new uint8_t[n]), recv(new uint8_t[n]);
  std::vector<size_t> counts(size_t(P), piece), displs(static_cast<size_t>(P));
  for (int p = 0; p < P; p++) {
    displs[size_t(p)] = base + size_t(p) * piece;
    for (size_t i = 0; i < piece; i++) send[displs[size_t(p)] + i] = uint8_t(payload(DType::U8, me, p, i) + 1);
  }
  w.all_to_allv(send.get(), {counts, displs}, recv.get(), {counts, displs}, DType::U8);
  size_t bad = 0;
  for (int p = 0; p < P; p++)
    for (size_t i = 0; i < piece; i++)
      bad += recv[displs[size_t(p)] + i] != uint8_t(payload(DType::U8, p, me, i) + 1);
  EXPECT_EQ(bad, 0u);
}

}  // namespace
}  // namespace dsv3::test

int main(int argc, char** argv) {
  return dsv3::test::run_mpi_gtests(argc, argv, "test_comm_mpi", 2);
}
