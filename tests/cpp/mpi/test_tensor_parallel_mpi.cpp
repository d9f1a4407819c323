// Tensor (and sequence) parallelism's model passes under `mpirun -np 2` (ctest tensor_parallel_mpi, label mpi):
// every rank runs the whole model in one process (the oracle) and its tp slice of the same
// weights with the real hook (train/tp_comm.h) over the two ranks, then compares: the loss, the
// MTP loss, every token's log-probability (the vocabulary-parallel cross-entropy's output: the
// logits are never gathered) and EVERY gradient, the rank's slice against the same slice of the
// one-process gradient.
//
// Tolerance: fp32 throughout. The tp passes compute the same sums split in two and added (the
// heads' share of o_proj, the experts' intermediate halves, the vocabulary halves of the
// softmax's sum) in another order, so each value differs by a few ulps of the largest terms it
// sums; relative to a tensor's largest entry that is ~1e-6, and 2e-5 leaves room for the
// cancellation in small gradients without letting a missing reduction through (a missing or
// doubled partial sum is an O(1) relative error).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "core/rng.h"
#include "dist/collectives.h"
#include "model/model.h"
#include "model/tensor_parallel.h"
#include "mpi_gtest_main.h"
#include "train/tp_comm.h"

namespace dsv3::test {
namespace {

struct Result {
  LossReport rep;
  std::vector<float> grads;     // table layout
  std::vector<float> logprobs;  // (N)
};

Result run(const ModelConfig& c, const std::vector<float>& params, const std::vector<int32_t>& tokens,
           Dims d, TensorParallel* tp, Recompute recompute, bool sp = false) {
  ModelWeights w(c, DType::F32);
  w.load(params);
  WorkspaceConfig wc;
  wc.max = d;
  wc.recompute = recompute;
  wc.sequence_parallel = sp;
  Workspace ws(c, DType::F32, Device::CPU, wc);
  ws.set_tensor_parallel(tp);
  Buffer g(Device::CPU, DType::F32, w.table().total);
  backend::zero(Exec{}, g.view());
  const ModelParams gv = bind_model(c, w.table(), g.view());
  TrainingLossConfig loss;
  loss.balance_alpha = 1e-2;  // large enough that a wrong router gradient shows
  const MicroBatch mb{d, tokens.data()};
  Result r;
  r.rep = forward_backward(w, ws, loss, gv, mb, 1.0f);
  r.grads.resize(w.table().total);
  backend::copy(Exec{}, host_tensor(r.grads), g.view());
  r.logprobs.resize(d.N());
  ForwardOptions fo;
  fo.token_logprobs = r.logprobs.data();
  forward(w, ws, loss, mb, fo);
  return r;
}

void check_layout(ModelConfig c, Recompute recompute, const char* what, bool sp = false) {
  SCOPED_TRACE(what);
  const dist::Comm& world = dist::world();
  const int tp = world.size(), rank = world.rank();
  const Dims d{2, 16};
  std::vector<int32_t> tokens(size_t(d.B) * (d.T + 1));
  Rng rng(7);
  for (int32_t& t : tokens) t = int32_t(rng.below(uint64_t(c.vocab)));
  tokens[size_t(d.T)] = -1;  // an ignored target (row 0's last)
  const ParamTable whole = build_param_table(c);
  std::vector<float> full(whole.total);
  init_params(c, whole, full.data(), 11);
  const Result one = run(c, full, tokens, d, nullptr, recompute);

  const ModelConfig lc = tensor_parallel_config(c, tp);
  const ParamTable local = build_param_table(lc);
  std::vector<float> mine(local.total, 0.0f);
  for (const ParamInfo& p : local.list)
    for_each_tp_run(p, rank, tp, [&](size_t wb, size_t lb, size_t n) {
      std::copy_n(full.data() + whole.at(p.name).offset + wb, n, mine.data() + p.offset + lb);
    });
  dist::Collectives coll(60);
  dist::Group group = dist::make_group(world, "tp");
  TpComm hook(coll, group);
  hook.sequence_parallel = sp;
  const Result par = run(lc, mine, tokens, d, &hook, recompute, sp);

  EXPECT_NEAR(par.rep.loss, one.rep.loss, 1e-5 * one.rep.loss);
  EXPECT_NEAR(par.rep.mtp_loss, one.rep.mtp_loss, 1e-5 * one.rep.mtp_loss);
  EXPECT_NEAR(par.rep.balance_loss, one.rep.balance_loss, 1e-5 * one.rep.balance_loss + 1e-12);
  for (int n = 0; n < d.N(); n++) EXPECT_NEAR(par.logprobs[n], one.logprobs[n], 2e-5) << n;
  EXPECT_GT(coll.ledger().purpose_bytes[size_t(dist::Purpose::Tensor)], 0.0);
  // sequence parallelism moves rows with reduce-scatter and all-gather (and only then)
  EXPECT_EQ(coll.ledger().calls[size_t(dist::Coll::ReduceScatter)] > 0, sp);
  EXPECT_EQ(coll.ledger().calls[size_t(dist::Coll::AllGather)] > 0, sp);
  int checked = 0;
  for (const ParamInfo& p : local.list) {
    if (!p.trainable()) continue;
    const float* ref = one.grads.data() + whole.at(p.name).offset;
    double scale = 0;  // the largest entry of the whole tensor's gradient
    for (size_t i = 0; i < whole.at(p.name).numel; i++) scale = std::max(scale, double(std::fabs(ref[i])));
    ASSERT_GT(scale, 0.0) << p.name << " has no gradient in one process";
    double worst = 0;
    for_each_tp_run(p, rank, tp, [&](size_t wb, size_t lb, size_t n) {
      for (size_t i = 0; i < n; i++)
        worst = std::max(worst, double(std::fabs(par.grads[p.offset + lb + i] - ref[wb + i])));
    });
    EXPECT_LE(worst / scale, 2e-5) << p.name << " (split dim " << tp_split_dim(p.name) << ")";
    checked++;
  }
  EXPECT_EQ(checked, int(std::count_if(local.list.begin(), local.list.end(),
                                       [](const ParamInfo& p) { return p.trainable(); })));
}

TEST(TensorParallel, DebugModelMatchesOneProcess) {
  check_layout(preset("debug"), Recompute::None, "debug");
}

TEST(TensorParallel, PlainQueryProjectionAndSoftmaxRouter) {
  ModelConfig c = preset("debug");
  c.q_lora = 0;  // q_proj column-parallel on the block's input: its dx share is summed
  c.router = RouterKind::Softmax;
  c.norm_topk = false;
  c.mtp_depth = 2;
  c.shared_experts = 2;
  check_layout(c, Recompute::Selective, "q_lora 0, softmax router, MTP 2, selective recompute");
}

TEST(TensorParallel, BlockRecompute) {
  check_layout(preset("debug"), Recompute::Block, "block recompute");
}

// --sp: norms and residuals on N / tp rows per rank, all-gather / reduce-scatter around the
// split layers; the same oracle and tolerances.
TEST(TensorParallel, SequenceParallelMatchesOneProcess) {
  check_layout(preset("debug"), Recompute::None, "sp", true);
}

TEST(TensorParallel, SequenceParallelPlainQuerySelectiveAndBlockRecompute) {
  ModelConfig c = preset("debug");
  c.q_lora = 0;
  c.router = RouterKind::Softmax;
  c.norm_topk = false;
  c.mtp_depth = 2;
  check_layout(c, Recompute::Selective, "sp, q_lora 0, softmax router, MTP 2, selective", true);
  check_layout(preset("debug"), Recompute::Block, "sp, block recompute", true);
}

TEST(TensorParallel, BadSplitsAreNamed) {
  ModelConfig c = preset("debug");
  const auto message = [&](const ModelConfig& m, int tp) {
    try {
      check_tensor_parallel(m, tp);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_NE(message(c, 4).find("heads"), std::string::npos);  // debug has 2 heads
  c.vocab = 511;
  EXPECT_NE(message(c, 2).find("vocab"), std::string::npos);
  c = preset("debug");
  c.dense_inter = 130 + 1;
  EXPECT_NE(message(c, 2).find("dense_inter"), std::string::npos);
  c = preset("debug");
  c.moe_inter = 33;
  EXPECT_NE(message(c, 2).find("moe_inter"), std::string::npos);
  EXPECT_EQ(message(preset("debug"), 2), "");
}

}  // namespace
}  // namespace dsv3::test

int main(int argc, char** argv) {
  return dsv3::test::run_mpi_gtests(argc, argv, "test_tensor_parallel_mpi", 2);
}
