// P1, one process: the communicator's world of one (comm.h, "A Comm of one rank") and the pure
// parts of the parallel layout. Built twice: against comm_single.cpp alone (test_comm_single),
// and, in an MPI build, against dsv3lib (test_comm_world1), where it checks that the MPI
// backend run without mpirun is the same world of one and never starts MPI.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>

#include "comm_test_util.h"
#include "core/check.h"
#include "dist/comm.h"
#include "dist/layout.h"

namespace dsv3::test {
namespace {

using dist::Comm;
using dist::Pieces;
using dist::ReduceOp;

TEST(CommSingle, WorldIsRankZeroOfOne) {
  const Comm& w = dist::world();
  EXPECT_EQ(w.rank(), 0);
  EXPECT_EQ(w.size(), 1);
  const std::string b = dist::backend_name();
  EXPECT_TRUE(b == "single" || b == "mpi") << b;
  dist::init(nullptr, nullptr);  // idempotent
  EXPECT_EQ(&dist::world(), &w);
}

TEST(CommSingle, ReductionsBroadcastAndBarrierLeaveDataAsItIs) {
  const Comm& w = dist::world();
  for (DType t : kAllDTypes) {
    Buf b(t, 13);
    for (size_t i = 0; i < b.size(); i++) b.set(i, payload(t, 0, 0, i));
    const Buf before = b;
    for (ReduceOp op : kAllOps) {
      w.all_reduce(b.data(), b.size(), t, op);
      w.iall_reduce(b.data(), b.size(), t, op).wait();
    }
    w.broadcast(b.data(), b.size(), t, 0);
    dist::Request r = w.ibroadcast(b.data(), b.size(), t, 0);
    EXPECT_TRUE(r.test());
    w.barrier();
    EXPECT_EQ(b.bytes, before.bytes) << dtype_name(t);
  }
}

TEST(CommSingle, GathersScattersAndAllToAllCopySendToRecv) {
  const Comm& w = dist::world();
  for (DType t : kAllDTypes) {
    Buf send(t, 11);
    for (size_t i = 0; i < send.size(); i++) send.set(i, payload(t, 0, 0, i));
    for (int nb = 0; nb < 2; nb++) {
      Buf a(t, 11), b(t, 11), c(t, 11), d(t, 11);
      if (nb) {
        w.ireduce_scatter(send.data(), a.data(), 11, t, ReduceOp::Max).wait();
        w.iall_gather(send.data(), b.data(), 11, t).wait();
        w.iall_to_all(send.data(), c.data(), 11, t).wait();
      } else {
        w.reduce_scatter(send.data(), a.data(), 11, t);
        w.all_gather(send.data(), b.data(), 11, t);
        w.all_to_all(send.data(), c.data(), 11, t);
      }
      for (const Buf* out : {&a, &b, &c}) EXPECT_EQ(out->bytes, send.bytes) << dtype_name(t);
      // all_to_allv: 7 elements from send offset 3 (given) to recv offset 2 (given) and packed
      const std::vector<size_t> n{7}, from{3}, to{2};
      Buf v(t, 11);
      for (size_t i = 0; i < v.size(); i++) v.set(i, 99);
      if (nb)
        w.iall_to_allv(send.data(), {n, from}, v.data(), {n, to}, t).wait();
      else
        w.all_to_allv(send.data(), {n, from}, v.data(), {n, to}, t);
      w.all_to_allv(send.data(), {n}, d.data(), {n}, t);
      for (size_t i = 0; i < 11; i++) {
        EXPECT_EQ(v.get(i), i >= 2 && i < 9 ? send.get(i + 1) : 99) << dtype_name(t) << " " << i;
        if (i < 7) {
          EXPECT_EQ(d.get(i), send.get(i)) << dtype_name(t) << " " << i;
        }
      }
    }
  }
  // in place and empty
  Buf b(DType::F32, 4);
  b.set(0, 1.5);
  w.all_gather(b.data(), b.data(), 4, DType::F32);
  EXPECT_EQ(b.get(0), 1.5);
  w.all_reduce(nullptr, 0, DType::F32);
  w.all_gather(nullptr, nullptr, 0, DType::U8);
}

TEST(CommSingle, BytesComeBackAsTheyWere) {
  const Comm& w = dist::world();
  const std::string s("abc\0def", 7);
  const auto all = w.all_gather_bytes(s);
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0], s);
  std::string t = s;
  w.broadcast_bytes(t, 0);
  EXPECT_EQ(t, s);
  EXPECT_EQ(w.all_gather_bytes("")[0], "");
}

TEST(CommSingle, MistakesAreErrorsNamingTheOperation) {
  const Comm& w = dist::world();
  float x[4] = {};
  int stream = 0;
  EXPECT_NE(error_of([&] { w.send(x, 4, DType::F32, 0, 0); }).find("dist::send"), std::string::npos);
  EXPECT_NE(error_of([&] { w.recv(x, 4, DType::F32, 1, 0); }).find("not a rank"), std::string::npos);
  EXPECT_NE(error_of([&] { (void)w.isend(x, 4, DType::F32, 0, 0); }).find("this rank"), std::string::npos);
  EXPECT_NE(error_of([&] { (void)w.irecv(x, 4, DType::F32, 0, 0); }).find("dist::irecv"), std::string::npos);
  EXPECT_NE(error_of([&] { w.broadcast(x, 4, DType::F32, 1); }).find("root 1"), std::string::npos);
  std::string bytes;
  EXPECT_NE(error_of([&] { w.broadcast_bytes(bytes, 2); }).find("root 2"), std::string::npos);
  EXPECT_NE(error_of([&] { w.all_reduce(x, 4, DType::F32, ReduceOp::Sum, &stream); }).find("stream"),
            std::string::npos);
  EXPECT_NE(error_of([&] { w.all_reduce(nullptr, 4, DType::F32); }).find("null"), std::string::npos);
  const std::vector<size_t> two{1, 1}, one{1}, other{2};
  EXPECT_NE(error_of([&] { w.all_to_allv(x, {two}, x, {one}, DType::F32); }).find("2 counts"),
            std::string::npos);
  EXPECT_NE(error_of([&] { w.all_to_allv(x, {one}, x + 1, {other}, DType::F32); }).find("itself"),
            std::string::npos);
  EXPECT_NE(error_of([&] { (void)w.split(-2, 0); }).find("negative"), std::string::npos);
  const std::vector<int> bad{1};
  EXPECT_NE(error_of([&] { (void)w.subset(bad); }).find("dist::subset"), std::string::npos);
}

TEST(CommSingle, SplitAndSubset) {
  const Comm& w = dist::world();
  const Comm same = w.split(7, 3);
  ASSERT_TRUE(same);
  EXPECT_EQ(same.size(), 1);
  const std::vector<int> me{0}, none;
  EXPECT_EQ(w.subset(me).size(), 1);
  EXPECT_FALSE(w.subset(none));
  const Comm out = w.split(Comm::kNoColor, 0);
  EXPECT_FALSE(out);
  float x = 1;
  EXPECT_NE(error_of([&] { out.all_reduce(&x, 1, DType::F32); }).find("not in the group"), std::string::npos);
  EXPECT_NE(error_of([&] { (void)out.size(); }).find("dist::size"), std::string::npos);
}

TEST(CommSingle, RequestsAreCompleteAndMovable) {
  dist::Request r;
  EXPECT_TRUE(r.test());
  r.wait();
  float x = 2;
  dist::Request a = dist::world().iall_reduce(&x, 1, DType::F32);
  r = std::move(a);
  r.wait();
  EXPECT_EQ(x, 2);
}

TEST(CommSingle, ChunkSizeForTestsChangesNothingVisible) {
  dist::set_chunk_bytes_for_testing(2);
  Buf s(DType::F64, 9), r(DType::F64, 9);
  for (size_t i = 0; i < 9; i++) s.set(i, double(i));
  dist::world().all_gather(s.data(), r.data(), 9, DType::F64);
  dist::set_chunk_bytes_for_testing(0);
  EXPECT_EQ(r.bytes, s.bytes);
}

// A build without MPI started by mpirun would run N copies that each think they are alone:
// init refuses. (The MPI backend started without a launcher is a world of one instead.)
TEST(CommSingle, SingleBuildRefusesToRunAsOneOfManyProcesses) {
  dist::finalize();
  if (std::string(dist::backend_name()) == "single") {
    setenv("OMPI_COMM_WORLD_SIZE", "4", 1);
    const std::string e = error_of([] { dist::init(nullptr, nullptr); });
    unsetenv("OMPI_COMM_WORLD_SIZE");
    EXPECT_NE(e.find("built without MPI"), std::string::npos) << e;
    EXPECT_NE(e.find("4 processes"), std::string::npos) << e;
  }
  EXPECT_EQ(dist::world().size(), 1);
}

TEST(CommSingle, RequireSingleProcessPassesForOneProcess) {
  EXPECT_NO_THROW(dist::require_single_process("train"));
}

// --- the parallel layout ------------------------------------------------------------------------

TEST(ParallelLayout, ValidateNamesWhatIsWrong) {
  using L = dist::ParallelLayout;
  EXPECT_NO_THROW(dist::validate(L{4, 2, 2, 2}, 16));
  EXPECT_NO_THROW(dist::validate(L{}, 1));
  auto msg = [](L l, int n) { return error_of([&] { dist::validate(l, n); }); };
  EXPECT_NE(msg(L{2, 2, 1, 1}, 8).find("needs dp * tp * pp = 4 ranks, but the world has 8"), std::string::npos)
      << msg(L{2, 2, 1, 1}, 8);
  EXPECT_NE(msg(L{4, 1, 1, 3}, 4).find("ep (3) must divide dp (4)"), std::string::npos);
  EXPECT_NE(msg(L{0, 1, 1, 1}, 0).find("at least 1"), std::string::npos);
  EXPECT_EQ(dist::describe(L{2, 2, 1, 2}), "dp 2 x tp 2 x pp 1, ep 2");
}

TEST(ParallelLayout, RanksOrderTpFastestThenDpThenPp) {
  const dist::ParallelLayout l{4, 2, 3, 2};  // 24 ranks
  int r = 0;
  for (int pp = 0; pp < 3; pp++)
    for (int dp = 0; dp < 4; dp++)
      for (int tp = 0; tp < 2; tp++, r++) {
        const dist::RankCoords c = dist::rank_coords(l, r);
        EXPECT_EQ(c.tp, tp);
        EXPECT_EQ(c.dp, dp);
        EXPECT_EQ(c.pp, pp);
        EXPECT_EQ(c.ep, dp % 2);
        EXPECT_EQ(c.edp, dp / 2);
        EXPECT_EQ(dist::rank_at(l, dp, tp, pp), r);
      }
}

TEST(ParallelLayout, OneProcessHasGroupsOfOne) {
  const dist::ParallelGroups g = dist::make_parallel_groups(dist::world(), {});
  for (const Comm* c : {&g.tp, &g.pp, &g.dp, &g.ep, &g.edp}) {
    ASSERT_TRUE(*c);
    EXPECT_EQ(c->size(), 1);
  }
  EXPECT_EQ(g.describe(), "rank 0: dp 0 tp 0 pp 0 ep 0");
  EXPECT_NE(error_of([] { dist::make_parallel_groups(dist::world(), {2, 1, 1, 1}); }).find("world has 1"),
            std::string::npos);
}

}  // namespace
}  // namespace dsv3::test
