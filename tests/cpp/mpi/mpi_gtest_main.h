// main() of a gtest binary that runs under mpirun: every TEST is collective (all ranks run the
// same tests in the same order); rank 0 prints the usual report, the other ranks only their
// failures, prefixed with their rank; the exit code is non-zero when any rank failed.
#pragma once
#include <gtest/gtest.h>

#include <cstdio>
#include <vector>

#include "dist/comm.h"

namespace dsv3::test {

class RankFailurePrinter : public ::testing::EmptyTestEventListener {
 public:
  explicit RankFailurePrinter(int rank) : rank_(rank) {}
  void OnTestPartResult(const ::testing::TestPartResult& r) override {
    if (r.failed())
      std::printf("[rank %d] %s:%d: Failure\n%s\n", rank_, r.file_name() ? r.file_name() : "?",
                  r.line_number(), r.summary());
  }

 private:
  int rank_;
};

inline int run_mpi_gtests(int argc, char** argv, const char* name, int min_ranks) {
  dist::init(&argc, &argv);
  ::testing::InitGoogleTest(&argc, argv);
  const dist::Comm& w = dist::world();
  if (w.size() < min_ranks) {
    std::printf("%s needs %d ranks: mpirun -np %d %s\n", name, min_ranks, min_ranks, argv[0]);
    return 1;
  }
  if (w.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
    listeners.Append(new RankFailurePrinter(w.rank()));
  }
  int32_t failed = RUN_ALL_TESTS() != 0;
  std::vector<int32_t> all(size_t(w.size()));
  w.all_gather(&failed, all.data(), 1, DType::I32);
  int any = 0;
  for (int r = 0; r < w.size(); r++) any |= all[size_t(r)];
  if (w.rank() == 0 && any) {
    std::printf("FAILED on rank(s):");
    for (int r = 0; r < w.size(); r++)
      if (all[size_t(r)]) std::printf(" %d", r);
    std::printf("\n");
  }
  std::fflush(stdout);
  dist::finalize();
  return any;
}

}  // namespace dsv3::test
