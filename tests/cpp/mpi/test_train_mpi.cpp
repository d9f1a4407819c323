// `dsv3 train` under mpirun, before distributed training exists: every rank must refuse with a
// message instead of N processes each training a copy into one run directory, and nothing may
// be written there.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>

#include "cli_util.h"
#include "test_util.h"

namespace dsv3::test {
namespace {

TEST(TrainMpi, RefusesToRunAsSeveralProcesses) {
  const auto dir = temp_dir("train_mpi");
  const std::string root = getuid() == 0 ? " --allow-run-as-root" : "";
  const std::string cmd = std::string("OMPI_MCA_btl_vader_single_copy_mechanism=none ") +
                          DSV3_MPIEXEC + " -np 2 --oversubscribe" + root + " " + DSV3_BIN +
                          " train --preset debug --steps 3 --out " + (dir / "run").string() + " 2>&1";
  std::FILE* p = popen(cmd.c_str(), "r");
  ASSERT_TRUE(p);
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, p)) > 0) out.append(buf, n);
  const int status = pclose(p);
  EXPECT_NE(status, 0) << out;
  EXPECT_NE(out.find("started as 2 processes"), std::string::npos) << out;
  EXPECT_NE(out.find("not implemented yet"), std::string::npos) << out;
  EXPECT_FALSE(std::filesystem::exists(dir / "run" / "metrics.jsonl"));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace dsv3::test
