// Helpers of the tests that run `dsv3 train` under mpirun (test_train_mpi, test_pipeline_mpi):
// the command line, the per-step records and their comparison.
#pragma once
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "cli_util.h"
#include "test_util.h"

namespace dsv3::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

// The debug model, 12 steps of a global batch of 8 sequences of 32 tokens in micro-batches of 2.
const std::string kBase =
    " --preset debug --seq_len 32 --batch 2 --global_batch 8 --peak_gflops 1 --sample_tokens 0"
    " --eval_batches 2";

std::string mpirun(int np) {
  const std::string root = getuid() == 0 ? " --allow-run-as-root" : "";
  return std::string("OMP_NUM_THREADS=1 OMPI_MCA_btl_vader_single_copy_mechanism=none ") +
         DSV3_MPIEXEC + " -np " + std::to_string(np) + " --oversubscribe" + root + " ";
}


// `dsv3 train` on np ranks (np 0: one process, no mpirun); env: "NAME=value " settings first.
CmdResult train(int np, const std::string& args, const std::string& env = "") {
  const std::string bin = std::string(DSV3_BIN) + " train" + kBase + " " + args;
  return run_shell(env + (np == 0 ? "OMP_NUM_THREADS=1 " + bin : mpirun(np) + bin));
}

// The last record of each step (a restarted run logs some steps twice).
std::vector<json> steps_of(const fs::path& run) {
  std::vector<json> out;
  for (const json& r : read_metrics((run / "metrics.jsonl").string(), "train")) {
    const size_t s = r["step"].get<size_t>();
    if (out.size() < s) out.resize(s);
    out[s - 1] = r;
  }
  return out;
}

double max_rel_loss_diff(const std::vector<json>& a, const std::vector<json>& b) {
  EXPECT_EQ(a.size(), b.size());
  double worst = 0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); i++) {
    const double x = a[i]["loss"].get<double>(), y = b[i]["loss"].get<double>();
    worst = std::max(worst, std::fabs(x - y) / std::fabs(y));
  }
  return worst;
}

[[maybe_unused]] bool same_losses(const std::vector<json>& a, const std::vector<json>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); i++)
    if (a[i]["loss"] != b[i]["loss"] || a[i]["grad_norm"] != b[i]["grad_norm"]) return false;
  return true;
}

size_t count(const std::string& s, const std::string& part) {
  size_t n = 0;
  for (size_t at = s.find(part); at != std::string::npos; at = s.find(part, at + 1)) n++;
  return n;
}

struct Dir {
  fs::path p;
  explicit Dir(const std::string& name) : p(temp_dir(name)) { fs::create_directories(p); }
  ~Dir() { fs::remove_all(p); }
  std::string operator/(const std::string& s) const { return (p / s).string(); }
};

// The largest difference between the tensors of two HF exports (model.safetensors of fp32
// tensors with the same names), read by Debian's Python; +inf when it could not compare them.
double max_abs_hf_diff(const std::string& a, const std::string& b) {
  const CmdResult cmp = run_shell(std::string("/usr/bin/python3 -c \"") +
      "import json,struct,sys\n"
      "def load(p):\n"
      " b=open(p+'/model.safetensors','rb').read(); n=struct.unpack('<Q',b[:8])[0]\n"
      " h=json.loads(b[8:8+n]); o=8+n\n"
      " return {k:struct.unpack('<%df'%((v['data_offsets'][1]-v['data_offsets'][0])//4),"
      "b[o+v['data_offsets'][0]:o+v['data_offsets'][1]]) for k,v in h.items() if k!='__metadata__'}\n"
      "a=load(sys.argv[1]); c=load(sys.argv[2])\n"
      "assert a.keys()==c.keys()\n"
      "print(max(abs(x-y) for k in a for x,y in zip(a[k],c[k])))\" " + a + " " + b);
  EXPECT_EQ(cmp.code, 0) << cmp.out;
  if (cmp.code != 0) return INFINITY;
  return std::stod(cmp.out);
}

}  // namespace
}  // namespace dsv3::test
