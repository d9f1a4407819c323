// P1 for `dsv3 curate`: under `mpirun -np 2` the inputs are split across ranks and the
// deduplication and diversity selection are global, so the output files must be byte-for-byte
// what one process writes. Built and run (`ctest -L mpi`) whenever the build has MPI
// (tests/CMakeLists.txt); mpiexec is the one CMake found.
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "cli_util.h"
#include "curate_test_util.h"
#include "dist/comm.h"

namespace dsv3::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string doc(Rng& r) { return prose(r, 12); }

TEST(CurateMpi, TwoRanksWriteExactlyWhatOneProcessWrites) {
  ASSERT_STREQ(dist::backend_name(), "mpi");
  const auto dir = temp_dir("curate_mpi");
  Rng r(42);
  // five inputs with exact and near duplicates across files, so ranks must agree on clusters
  std::vector<std::string> texts;
  std::string inputs;
  for (int f = 0; f < 5; f++) {
    std::vector<json> rows;
    for (int i = 0; i < 60; i++) {
      std::string t = doc(r);
      if (!texts.empty() && i % 9 == 0) t = texts[r.below(texts.size())];  // exact copy
      if (!texts.empty() && i % 11 == 0) {
        double j = 0;
        t = near_duplicate(texts[r.below(texts.size())], 0.9, r, &j);  // near copy
      }
      texts.push_back(t);
      rows.push_back({{"id", std::string("f").append(std::to_string(f)).append("_").append(std::to_string(i))}, {"text", t}});
    }
    rows.push_back({{"text", "short"}});
    const auto p = dir / ("in" + std::to_string(f) + ".jsonl");
    write_text(p, jsonl(rows));
    inputs += ' ';
    inputs += p.string();
  }
  write_text(dir / "target.txt", "The merchant crossed the bridge to the market of the village.");
  const std::string args = " curate --part_mb 0 --input" + inputs + " --tfidf_target " +
                           (dir / "target.txt").string() + " --select_docs 150 --threads 1 --output ";
  const std::string one = std::string(DSV3_BIN) + args + (dir / "one").string() + " 2>&1";
  ASSERT_EQ(std::system(one.c_str()), 0);
  const std::string root = getuid() == 0 ? " --allow-run-as-root" : "";
  // vader's single-copy (CMA) is often blocked in containers; shared memory copies always work
  const std::string two = std::string("OMPI_MCA_btl_vader_single_copy_mechanism=none ") + DSV3_MPIEXEC +
                          " -np 2 --oversubscribe" + root + " " + DSV3_BIN + args + (dir / "two").string() +
                          " 2>&1";
  ASSERT_EQ(std::system(two.c_str()), 0) << two;
  const json s1 = json::parse(read_file_bytes((dir / "one" / "summary.json").string()));
  const json s2 = json::parse(read_file_bytes((dir / "two" / "summary.json").string()));
  EXPECT_EQ(s2["throughput"]["ranks"], 2);
  EXPECT_GT(s1["dedup"]["exact_duplicates"].get<int>(), 0);
  EXPECT_GT(s1["dedup"]["near_duplicates"].get<int>(), 0);
  for (const char* k : {"docs_read", "docs_written", "docs_rejected", "bytes_written", "bad_input", "pii"})
    EXPECT_EQ(s1["stats"][k], s2["stats"][k]) << k;
  for (const auto& [name, st] : s1["stats"]["stages"].items()) {
    EXPECT_EQ(st["docs_out"], s2["stats"]["stages"][name]["docs_out"]) << name;
    EXPECT_EQ(st["rules"], s2["stats"]["stages"][name]["rules"]) << name;
  }
  EXPECT_EQ(s1["dedup"]["diversity"], s2["dedup"]["diversity"]);
  for (int p = 0; p < 5; p++)
    for (const char* sub : {"data", "rejects"}) {
      const std::string f = std::string(sub) + "/part-0000" + std::to_string(p) + ".jsonl.zst";
      EXPECT_EQ(read_file_bytes((dir / "one" / f).string()), read_file_bytes((dir / "two" / f).string())) << f;
    }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv3::test
