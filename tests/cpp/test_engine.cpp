// The engine's structure, checked through the library: the pieces of a pass compose into the
// whole model (a pipeline stage can run just its part), recomputation changes no bit, per-token
// loss weights and log-probs mean what they say, one copy of the weights serves several
// workspaces at once, and 16-bit weights follow the fp32 master weights.
#include <omp.h>

#include <cstring>
#include <thread>

#include "model/model.h"
#include "test_util.h"
#include "train/state.h"

namespace dsv3 {
namespace {

ModelConfig small_config() {
  ModelConfig c = preset("debug");
  c.vocab = 128;
  c.max_seq = 64;
  return c;
}

std::vector<int32_t> random_tokens(const ModelConfig& c, Dims d, uint64_t seed) {
  Rng r(seed);
  std::vector<int32_t> t(size_t(d.B) * (d.T + 1));
  for (auto& x : t) x = int32_t(r.below(uint64_t(c.vocab)));
  return t;
}

std::vector<float> init_weights(const ModelConfig& c, uint64_t seed) {
  const ParamTable t = build_param_table(c);
  std::vector<float> p(t.total);
  init_params(c, t, p.data(), seed);
  // router biases away from zero, so the sigmoid router's bias path is exercised
  for (const auto& info : t.list)
    if (info.kind == ParamKind::Buffer)
      for (size_t i = 0; i < info.numel; i++) p[info.offset + i] = 0.01f * float(int(i % 5) - 2);
  return p;
}

std::vector<float> host(const Tensor& t) {
  std::vector<float> v(t.numel);
  backend::copy(Exec{}, host_tensor(v), t);
  return v;
}

struct Result {
  LossReport rep;
  std::vector<float> grads;
};

Result forward_backward_whole(const ModelConfig& c, DType dt, Recompute rc, Dims d,
                           const std::vector<int32_t>& tokens, const float* weights_per_token = nullptr) {
  ModelWeights w(c, dt);
  TrainState st(w, {}, {dt == DType::BF16 ? Precision::BF16 : Precision::FP32});
  st.load_weights(init_weights(c, 7));
  WorkspaceConfig wc;
  wc.max = d;
  wc.recompute = rc;
  Workspace ws(c, dt, Device::CPU, wc);
  st.zero_grads();
  Result r;
  r.rep = forward_backward(w, ws, TrainingLossConfig{}, st.grad_view(), {d, tokens.data(), weights_per_token}, 0.5f);
  r.grads = host(st.grads());
  return r;
}

// A pipeline split: stage A runs the embedding and blocks [0, 2); stage B blocks [2, L), the
// head and the MTP modules; the boundary activation and its gradient move between their
// workspaces as a send/recv would move them. The result must be the whole model's, bit for bit.
TEST(Stages, TwoStageSplitEqualsWholeModel) {
  ModelConfig c = small_config();
  c.layers = 4;
  c.dense_layers = 1;
  const Dims d{2, 16};
  const auto tokens = random_tokens(c, d, 3);
  const Result whole = forward_backward_whole(c, DType::F32, Recompute::None, d, tokens);

  ModelWeights w(c, DType::F32);
  TrainState st(w, {}, {});
  st.load_weights(init_weights(c, 7));
  st.zero_grads();
  WorkspaceConfig a, b;
  a.max = b.max = d;
  a.layer_end = 2, a.head = false;
  b.layer_begin = 2, b.embed = false;
  Workspace wa(c, DType::F32, Device::CPU, a), wb(c, DType::F32, Device::CPU, b);
  const TrainingLossConfig loss;
  const MicroBatch mb{d, tokens.data()};
  Pass pa(w, wa, loss, d, &st.grad_view(), 0.5f), pb(w, wb, loss, d, &st.grad_view(), 0.5f);
  load_batch(pa, mb, false);
  load_batch(pb, mb, true);
  embed_forward(pa);
  blocks_forward(pa, 0, 2);
  backend::copy(Exec{}, wb.resid[2], wa.resid[2]);  // "send" the boundary activation
  blocks_forward(pb, 2, c.layers);
  LossReport r;
  r.loss = head_loss(pb, {});
  r.mtp_loss = mtp_forward(pb, {});
  mtp_backward(pb);
  blocks_backward(pb, 2, c.layers);
  backend::copy(Exec{}, wa.dres, wb.dres);  // "send" the boundary gradient back
  blocks_backward(pa, 0, 2);
  embed_backward(pa);
  EXPECT_EQ(r.loss, whole.rep.loss);
  EXPECT_EQ(r.mtp_loss, whole.rep.mtp_loss);
  const std::vector<float> g = host(st.grads());
  ASSERT_EQ(g.size(), whole.grads.size());
  EXPECT_EQ(std::memcmp(g.data(), whole.grads.data(), g.size() * sizeof(float)), 0);
  // a stage's workspace holds only its part
  EXPECT_LT(wa.bytes() + wb.bytes(), 2 * Workspace::measure_bytes(c, DType::F32, {d}));
  EXPECT_FALSE(wa.resid[3]);
  EXPECT_FALSE(wb.resid[0]);
}

TEST(Recompute, SelectiveAndBlockChangeNoBitInEveryPrecision) {
  ModelConfig c = small_config();
  const Dims d{2, 16};
  const auto tokens = random_tokens(c, d, 5);
  for (DType dt : {DType::F32, DType::BF16}) {
    const Result none = forward_backward_whole(c, dt, Recompute::None, d, tokens);
    for (Recompute rc : {Recompute::Selective, Recompute::Block}) {
      const Result r = forward_backward_whole(c, dt, rc, d, tokens);
      EXPECT_EQ(r.rep.total, none.rep.total) << dtype_name(dt) << " " << recompute_name(rc);
      EXPECT_EQ(std::memcmp(r.grads.data(), none.grads.data(), r.grads.size() * sizeof(float)), 0)
          << dtype_name(dt) << " " << recompute_name(rc);
    }
  }
  // and each keeps less on a model deep enough for it to matter: selective < none < block
  const ModelConfig tiny = preset("tiny");
  const Dims td{8, 256};
  const size_t none = Workspace::measure_bytes(tiny, DType::F32, {td, Recompute::None});
  const size_t sel = Workspace::measure_bytes(tiny, DType::F32, {td, Recompute::Selective});
  const size_t blk = Workspace::measure_bytes(tiny, DType::F32, {td, Recompute::Block});
  EXPECT_LT(sel, none);
  EXPECT_LT(blk, sel);
}

// Per-token loss weights (SFT masks, preference losses) and per-token log-probs.
TEST(Head, LossWeightsAndTokenLogprobs) {
  ModelConfig c = small_config();
  c.mtp_depth = 0;  // the main loss alone
  const Dims d{2, 12};
  const auto tokens = random_tokens(c, d, 9);
  ModelWeights w(c, DType::F32);
  w.load(init_weights(c, 7));
  WorkspaceConfig wc;
  wc.max = d;
  Workspace ws(c, DType::F32, Device::CPU, wc);
  std::vector<float> lp(d.N());
  ForwardOptions opt;
  opt.token_logprobs = lp.data();
  const LossReport plain = forward(w, ws, TrainingLossConfig{}, {d, tokens.data()}, opt);
  double mean = 0;
  for (float x : lp) mean -= x;
  EXPECT_NEAR(plain.loss, mean / d.N(), 1e-6 * plain.loss);
  // weights: 0 on the first half of each row, 0.5..2 on the rest -> the weighted mean of -logp
  std::vector<float> wt(d.N());
  double num = 0, den = 0;
  for (int n = 0; n < d.N(); n++) {
    wt[n] = n % d.T < d.T / 2 ? 0.f : 0.5f + float(n % 4) * 0.5f;
    num += wt[n] * -double(lp[n]), den += wt[n];
  }
  const LossReport weighted = forward(w, ws, TrainingLossConfig{}, {d, tokens.data(), wt.data()});
  EXPECT_NEAR(weighted.loss, num / den, 1e-6 * weighted.loss);
  EXPECT_EQ(weighted.targets, d.N() / 2);
  // the loss is a weighted mean: scaling every weight changes no gradient bit
  std::vector<float> wt2 = wt;
  for (auto& x : wt2) x *= 2;
  const Result g1 = forward_backward_whole(c, DType::F32, Recompute::None, d, tokens, wt.data());
  const Result g2 = forward_backward_whole(c, DType::F32, Recompute::None, d, tokens, wt2.data());
  EXPECT_EQ(std::memcmp(g1.grads.data(), g2.grads.data(), g1.grads.size() * sizeof(float)), 0);
  // a zero weight is an ignored target: no gradient flows from it
  const Result all = forward_backward_whole(c, DType::F32, Recompute::None, d, tokens);
  EXPECT_GT(test::rel_error(g1.grads, all.grads), 1e-3);
  // bad weights are refused
  std::vector<float> bad(d.N(), 1.f);
  bad[3] = -1.f;
  EXPECT_THROW(forward(w, ws, TrainingLossConfig{}, {d, tokens.data(), bad.data()}), Error);
}

// One copy of the weights, several workspaces on several threads at once (the perplexity
// filter, a server): every thread gets the single-threaded result.
TEST(Weights, SharedByConcurrentWorkspaces) {
  ModelConfig c = small_config();
  const Dims d{1, 24};
  ModelWeights w(c, DType::BF16);
  w.load(init_weights(c, 7));
  WorkspaceConfig wc;
  wc.max = d;
  wc.backward = false;
  std::vector<std::vector<int32_t>> toks;
  std::vector<double> want;
  for (int i = 0; i < 4; i++) {
    toks.push_back(random_tokens(c, d, 20 + i));
    Workspace ws(c, DType::BF16, Device::CPU, wc);
    want.push_back(forward(w, ws, TrainingLossConfig{}, {d, toks.back().data()}).loss);
  }
  std::vector<double> got(4);
  std::vector<std::thread> threads;
  for (int i = 0; i < 4; i++)
    threads.emplace_back([&, i] {
      omp_set_num_threads(1);
      Workspace ws(c, DType::BF16, Device::CPU, wc);
      got[i] = forward(w, ws, TrainingLossConfig{}, {d, toks[i].data()}).loss;
    });
  for (auto& t : threads) t.join();
  EXPECT_EQ(got, want);
}

// 16-bit weights are the master weights rounded; the routing biases stay fp32 (a step of 1e-3
// must not vanish in bf16 rounding).
TEST(Weights, SixteenBitCopyOfMasterWithFp32RoutingBias) {
  ModelConfig c = small_config();
  const std::vector<float> init = init_weights(c, 7);
  ModelWeights w(c, DType::BF16);
  TrainState st(w, {}, {Precision::BF16});
  st.load_weights(init);
  const std::vector<float> back = w.to_host();
  const std::vector<float> master = st.master_host();
  EXPECT_EQ(master, init);
  for (const auto& p : w.table().list)
    for (size_t i = 0; i < p.numel; i += 7) {
      const float v = init[p.offset + i];
      if (p.kind == ParamKind::Buffer) EXPECT_EQ(back[p.offset + i], v) << p.name;
      else EXPECT_EQ(back[p.offset + i], bf16_to_f32(f32_to_bf16(v))) << p.name;
    }
  EXPECT_TRUE(w.buffers());
  EXPECT_EQ(w.buffers().dtype, DType::F32);
}

// The whole model's backward in fp64 through the product's own passes, against central finite
// differences of its own forward: the directional derivative of the total loss (main, MTP and
// balance terms) along a random direction in each of several tensors, for the mean loss and for
// signed per-token CE coefficients (the DPO/GRPO objective form). An oracle that needs no
// PyTorch; a routing choice that flips under the perturbation would make the loss non-smooth,
// so such tensors are skipped (and there must be few).
TEST(Model, Fp64BackwardMatchesFiniteDifferences) {
  ModelConfig c = small_config();
  c.init_std = 0.2;  // large enough that every term's gradient is well above rounding
  const Dims d{2, 8};
  const auto tokens = random_tokens(c, d, 13);
  const ParamTable t = build_param_table(c);
  ModelWeights w(c, DType::F64);
  w.load(init_weights(c, 7));
  WorkspaceConfig wc;
  wc.max = d;
  Workspace ws(c, DType::F64, Device::CPU, wc);
  Buffer grads(Device::CPU, DType::F64, t.total);
  const ModelParams g = bind_model(c, t, grads.view());
  TrainingLossConfig loss;
  loss.balance_alpha = 0.05;  // a balance term big enough to check
  std::vector<float> coef(d.N());
  Rng r(17);
  for (auto& x : coef) x = float(r.normal());
  double* wd = w.data().as<double>();
  for (const float* cf : {static_cast<const float*>(nullptr), static_cast<const float*>(coef.data())}) {
    const MicroBatch mb{d, tokens.data(), nullptr, cf};
    backend::zero(Exec{}, grads.view());
    const LossReport base = forward_backward(w, ws, loss, g, mb, 1.0f);
    if (cf) {
      EXPECT_EQ(base.mtp_loss, 0.0);  // MTP is not part of the coefficient objective
    }
    const double* gd = grads.view().as<double>();
    int checked = 0, skipped = 0;
    for (const char* name : {"model.embed_tokens.weight", "model.layers.0.self_attn.q_b_proj.weight",
                             "model.layers.0.self_attn.kv_a_layernorm.weight",
                             "model.layers.1.mlp.gate.weight", "model.layers.1.mlp.experts.3.up_proj.weight",
                             "model.layers.1.mlp.shared_experts.down_proj.weight",
                             "model.layers.2.eh_proj.weight", "lm_head.weight", "model.norm.weight"}) {
      const ParamInfo& p = t.at(name);
      std::vector<double> dir(p.numel);
      double analytic = 0;
      for (size_t i = 0; i < p.numel; i++) dir[i] = r.normal(), analytic += dir[i] * gd[p.offset + i];
      const double h = 1e-6;
      auto at = [&](double step) {
        for (size_t i = 0; i < p.numel; i++) wd[p.offset + i] += step * dir[i];
        const LossReport l = forward(w, ws, loss, mb);
        for (size_t i = 0; i < p.numel; i++) wd[p.offset + i] -= step * dir[i];
        return l;
      };
      const LossReport lp = at(h), lm = at(-h);
      bool same_routing = true;
      for (size_t i = 0; i < base.moe.size(); i++)
        same_routing &= lp.moe[i].loads == base.moe[i].loads && lm.moe[i].loads == base.moe[i].loads;
      if (!same_routing) {
        skipped++;
        continue;
      }
      const double fd = (lp.total - lm.total) / (2 * h);  // total = CE objective + balance terms
      // fp64 central differences: truncation ~h^2, rounding ~1e-16 |L| / h ~ 1e-9
      EXPECT_NEAR(analytic, fd, 1e-6 * std::max(1.0, std::abs(fd))) << name << (cf ? " (coefficients)" : "");
      checked++;
    }
    EXPECT_GE(checked, 7) << skipped << " tensors skipped for routing flips";
  }
}

}  // namespace
}  // namespace dsv3
