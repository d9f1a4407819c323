// Checks that need a GPU, beyond the op harness (test_op_harness runs every op on CUDA by
// itself when a GPU is visible): a whole training step on the GPU against the same step on the
// CPU (logits, every gradient, 10 losses), the TF32 switch, device memory accounting, CUDA
// graphs giving the eager result, and the NCCL communicator on one rank.
//
// Registered with ctest (label gpu) only when configure saw a GPU; scripts/gpu_check.sh runs
// it. Run without a GPU, every test FAILS saying "no GPU visible: not run": this binary exists
// to be run on one, and a pass without one would be a lie.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "dist/comm_nccl.h"
#include "model/model.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/gemm.h"
#include "test_util.h"
#include "train/state.h"
#include "train/step.h"

namespace dsv3::test {
namespace {

#define REQUIRE_GPU()                                                                     \
  ASSERT_TRUE(backend::available(Device::CUDA))                                           \
      << "no GPU visible: not run (" << backend::describe(Device::CUDA) << ")"

ModelConfig step_config() {
  ModelConfig c = preset("debug");  // MLA, 8 experts top-2 in 2 groups, a shared expert, MTP 1
  c.vocab = 256;
  c.max_seq = 128;
  return c;
}

std::vector<float> init_weights(const ModelConfig& c) {
  const ParamTable t = build_param_table(c);
  std::vector<float> p(t.total);
  init_params(c, t, p.data(), 11);
  for (const auto& info : t.list)  // router biases away from zero: the bias path runs
    if (info.kind == ParamKind::Buffer)
      for (size_t i = 0; i < info.numel; i++) p[info.offset + i] = 0.01f * float(int(i % 5) - 2);
  return p;
}

std::vector<float> to_host_f32(const Tensor& t) {
  std::vector<float> v(t.numel);
  backend::copy(Exec{t.device}, host_tensor(v), t);
  return v;
}

struct StepRun {
  std::vector<float> logits;  // forward before any update
  std::vector<float> grads;   // first step's gradient
  std::vector<double> losses;  // 10 steps
  std::vector<std::vector<int64_t>> loads;  // per MoE layer, first step
};

StepRun run_steps(Device dev, Precision prec, bool graphs, int steps,
                  Recompute recompute = Recompute::None) {
  const ModelConfig c = step_config();
  const DType dt = compute_dtype(prec);
  const Dims d{4, 64};
  ModelWeights w(c, dt, dev);
  PrecisionConfig pc;
  pc.precision = prec;
  TrainState st(w, AdamWConfig{}, pc);
  st.load_weights(init_weights(c));
  WorkspaceConfig wc;
  wc.max = d;
  wc.cuda_graphs = graphs;
  wc.recompute = recompute;
  Workspace ws(c, dt, dev, wc);
  Rng r(5);
  std::vector<int32_t> tokens(size_t(steps) * d.B * (d.T + 1));
  for (auto& t : tokens) t = int32_t(r.below(uint64_t(c.vocab)));
  StepRun out;
  out.logits.resize(size_t(d.N()) * c.vocab);
  ForwardOptions fo;
  fo.logits = out.logits.data();
  const TrainingLossConfig loss;
  forward(w, ws, loss, {d, tokens.data()}, fo);
  ScheduleConfig sched;
  const StepSettings ss = step_settings(1, sched, steps, loss);
  for (int s = 0; s < steps; s++) {
    auto micro = [&](int) { return MicroBatch{d, tokens.data() + size_t(s) * d.B * (d.T + 1)}; };
    const Gradients g = compute_gradients(st, ws, loss, ss, s, micro);
    if (s == 0) {
      out.grads = to_host_f32(st.grads());
      for (const auto& m : g.loss.moe) out.loads.push_back(m.loads);
    }
    out.losses.push_back(g.loss.total);
    if (st.scaler().update(g.finite)) apply_update(st, ss, s, g);
  }
  return out;
}

TEST(GpuStep, Fp32StepMatchesTheCpuStep) {
  REQUIRE_GPU();
  const StepRun cpu = run_steps(Device::CPU, Precision::FP32, false, 10);
  const StepRun gpu = run_steps(Device::CUDA, Precision::FP32, false, 10);
  EXPECT_EQ(gpu.loads, cpu.loads) << "the routers chose differently (a near-tie? see the scores)";
  // Both sides are fp32 with different summation orders (flash attention, cuBLASLt, tree
  // reductions): relative differences of ~1e-6 per op; 1e-4 leaves room for a 2-layer model.
  const double le = rel_error(gpu.logits, cpu.logits);
  EXPECT_LT(le, 1e-4) << "logits";
  const ParamTable t = build_param_table(step_config());
  double worst = 0;
  std::string worst_name;
  for (const auto& p : t.list) {
    if (p.kind == ParamKind::Buffer) continue;
    std::vector<float> g(gpu.grads.begin() + p.offset, gpu.grads.begin() + p.offset + p.numel);
    std::vector<float> c(cpu.grads.begin() + p.offset, cpu.grads.begin() + p.offset + p.numel);
    const double e = rel_error(g, c);
    if (!(e <= worst)) worst = e, worst_name = p.name;
  }
  EXPECT_LT(worst, 1e-3) << "gradient of " << worst_name;
  EXPECT_LT(rel_error(gpu.grads, cpu.grads), 1e-4) << "all gradients";
  ASSERT_EQ(gpu.losses.size(), 10u);
  for (size_t s = 0; s < 10; s++)
    EXPECT_NEAR(gpu.losses[s], cpu.losses[s], 1e-4 * std::abs(cpu.losses[s])) << "step " << s;
  std::printf("GPU vs CPU fp32 step: logits %.3g, gradients %.3g (worst tensor %s %.3g), loss after "
              "10 steps %.6f vs %.6f\n",
              le, rel_error(gpu.grads, cpu.grads), worst_name.c_str(), worst, gpu.losses.back(),
              cpu.losses.back());
}

TEST(GpuStep, MixedPrecisionStepsStayNearFp32) {
  REQUIRE_GPU();
  const StepRun f32 = run_steps(Device::CUDA, Precision::FP32, false, 10);
  for (Precision p : {Precision::BF16, Precision::FP16}) {
    const StepRun r = run_steps(Device::CUDA, p, false, 10);
    EXPECT_LT(rel_error(r.logits, f32.logits), 2e-2) << precision_name(p);
    EXPECT_NEAR(r.losses.back(), f32.losses.back(), 0.02 * f32.losses.back()) << precision_name(p);
  }
}

TEST(GpuGraphs, ReplayedStepsEqualEagerOnes) {
  REQUIRE_GPU();
  const StepRun eager = run_steps(Device::CUDA, Precision::BF16, false, 5);
  const StepRun graph = run_steps(Device::CUDA, Precision::BF16, true, 5);
  EXPECT_EQ(graph.losses, eager.losses) << "a graph replays the same kernels on the same buffers";
  EXPECT_EQ(graph.grads, eager.grads);
}

TEST(GpuRecompute, SelectiveAndBlockChangeNoBit) {
  REQUIRE_GPU();
  const StepRun none = run_steps(Device::CUDA, Precision::BF16, false, 3);
  for (Recompute r : {Recompute::Selective, Recompute::Block}) {
    const StepRun again = run_steps(Device::CUDA, Precision::BF16, false, 3, r);
    EXPECT_EQ(again.losses, none.losses) << recompute_name(r);
    EXPECT_EQ(again.grads, none.grads) << recompute_name(r);
  }
}

TEST(GpuGemm, Tf32SwitchTradesPrecisionAsDocumented) {
  REQUIRE_GPU();
  const int N = 256, in = 512, out = 384;
  const std::vector<double> x = random_vec(size_t(N) * in, 1), w = random_vec(size_t(out) * in, 2);
  std::vector<double> want(size_t(N) * out);
  for (int i = 0; i < N; i++)
    for (int j = 0; j < out; j++) {
      double s = 0;
      for (int k = 0; k < in; k++) s += float(x[size_t(i) * in + k]) * double(float(w[size_t(j) * in + k]));
      want[size_t(i) * out + j] = s;
    }
  const Exec ex{Device::CUDA};
  std::vector<float> xf(x.begin(), x.end()), wf(w.begin(), w.end());
  Buffer X(Device::CUDA, DType::F32, xf.size()), W(Device::CUDA, DType::F32, wf.size());
  Buffer Y(Device::CUDA, DType::F32, want.size());
  backend::copy(ex, X.view(), host_tensor(xf));
  backend::copy(ex, W.view(), host_tensor(wf));
  double err[2];
  for (int tf : {0, 1}) {
    gemm_allow_tf32(tf == 1);
    linear_forward(ex, Y.view(), X.view(), W.view(), N, in, out);
    err[tf] = rel_error(to_host_f32(Y.view()), want);
  }
  gemm_allow_tf32(false);
  EXPECT_LT(err[0], 1e-6) << "fp32";
  EXPECT_GT(err[1], 1e-5) << "TF32 did not engage";
  EXPECT_LT(err[1], 1e-3) << "TF32 (10-bit mantissa inputs, fp32 accumulation: near 3e-4)";
  std::printf("linear 256x512x384 vs fp64: fp32 %.3g, tf32 %.3g\n", err[0], err[1]);
}

TEST(GpuMemory, CachingAllocatorReportsAndReuses) {
  REQUIRE_GPU();
  backend::reset_peak(Device::CUDA);
  const backend::MemoryStats before = backend::memory_stats(Device::CUDA);
  void* first = nullptr;
  {
    Buffer a(Device::CUDA, DType::F32, 1 << 20);
    first = a.view().data;
    const backend::MemoryStats during = backend::memory_stats(Device::CUDA);
    EXPECT_EQ(during.in_use, before.in_use + (4u << 20));
    EXPECT_GE(during.reserved, during.in_use);
    EXPECT_EQ(to_host_f32(a.view().slice(0, 1000)), std::vector<float>(1000, 0.0f)) << "zeroed";
  }
  Buffer b(Device::CUDA, DType::F32, 1 << 20);
  EXPECT_EQ(b.view().data, first) << "the freed block is reused";
  EXPECT_GE(backend::memory_stats(Device::CUDA).peak, before.in_use + (4u << 20));
}

TEST(GpuNccl, OneRankCollectivesAreIdentities) {
  REQUIRE_GPU();
  ASSERT_STREQ(dist::nccl_backend_name(), "nccl") << "this CUDA build has no NCCL communicator";
  const dist::NcclComm c = dist::NcclComm::create(dist::world());
  ASSERT_EQ(c.size(), 1);
  const Exec ex{Device::CUDA};
  std::vector<float> h = {1, 2, 3, 4};
  Buffer a(Device::CUDA, DType::F32, 4), g(Device::CUDA, DType::F32, 4);
  backend::copy(ex, a.view(), host_tensor(h));
  c.all_reduce(a.view().data, 4, DType::F32);
  c.all_gather(a.view().data, g.view().data, 4, DType::F32);
  EXPECT_EQ(to_host_f32(g.view()), h);
  EXPECT_THROW(c.all_reduce(h.data(), 4, DType::F32), Error) << "host memory is refused";
}

}  // namespace
}  // namespace dsv3::test
