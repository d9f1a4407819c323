// Distillation (I5) and pruning (I4) through the library: the distillation loss's gradient
// against finite differences (the op in fp64, and a whole student with a teacher), pruning that
// removes exactly what carries nothing (zeroed channels, unreachable experts) without changing
// the model's output, and which model settings --init_from lets a run change.
#include <cmath>
#include <filesystem>

#include "checkpoint/checkpoint.h"
#include "model/model.h"
#include "model/prune.h"
#include "ops/cross_entropy.h"
#include "ops/distill.h"
#include "model_test_util.h"
#include "test_util.h"
#include "train/compress.h"

namespace dsv3 {
namespace {

// (1 - a) CE + a T^2 KL(q || p) per row, weighted by row_scale, and its gradient, in fp64.
TEST(Distill, OpGradientMatchesFiniteDifferences) {
  const int N = 5, V = 11;
  const double alpha = 0.3, T = 2.5;
  auto z = test::random_vec(size_t(N) * V, 1, 2.0), t = test::random_vec(size_t(N) * V, 2, 2.0);
  std::vector<int32_t> tg = {3, -1, 0, 10, 7};  // row 1 ignored
  auto rs = test::random_vec(N, 3);
  auto loss = [&]() {
    std::vector<double> ce(N), kd(N);
    cross_entropy_forward(Exec{}, host_tensor(ce), host_tensor(z), host_tensor(tg), N, V);
    distill_forward(Exec{}, host_tensor(kd), host_tensor(z), host_tensor(t), host_tensor(tg), N, V, T);
    double s = 0;
    for (int n = 0; n < N; n++) s += rs[n] * ((1 - alpha) * ce[n] + alpha * kd[n]);
    return s;
  };
  std::vector<double> g(z.size());
  distill_backward(Exec{}, host_tensor(g), host_tensor(z), host_tensor(t), host_tensor(tg),
                   host_tensor(rs), N, V, alpha, T);
  const auto fd = test::finite_difference(loss, z);
  EXPECT_LT(test::rel_error(g, fd), 1e-8);
  for (int j = 0; j < V; j++) EXPECT_EQ(g[V + j], 0.0) << "ignored row";
  // KL >= 0, and 0 for identical logits
  std::vector<double> kd(N);
  distill_forward(Exec{}, host_tensor(kd), host_tensor(z), host_tensor(t), host_tensor(tg), N, V, T);
  for (int n = 0; n < N; n++) EXPECT_GE(kd[n], 0.0);
  distill_forward(Exec{}, host_tensor(kd), host_tensor(z), host_tensor(z), host_tensor(tg), N, V, T);
  for (int n = 0; n < N; n++) EXPECT_NEAR(kd[n], 0.0, 1e-12);
}

// fp32 in place (the head's fp32 runs) and a bf16 gradient (16-bit runs) against fp64.
TEST(Distill, Fp32InPlaceAndBf16AgainstFp64) {
  const int N = 4, V = 300;
  const double alpha = 0.6, T = 1.7;
  const auto z = test::random_vec(size_t(N) * V, 4, 3.0), t = test::random_vec(size_t(N) * V, 5, 3.0);
  const std::vector<int32_t> tg = {1, 299, 17, 150};
  const std::vector<double> rs = {0.25, 0.5, 1.0, 2.0};
  std::vector<double> g64(z.size());
  distill_backward(Exec{}, host_tensor(g64), host_tensor(z), host_tensor(t), host_tensor(tg),
                   host_tensor(rs), N, V, alpha, T);
  std::vector<float> zf(z.begin(), z.end()), tf(t.begin(), t.end()), rf(rs.begin(), rs.end());
  std::vector<float> inplace = zf;
  distill_backward(Exec{}, host_tensor(inplace), host_tensor(inplace), host_tensor(tf),
                   host_tensor(tg), host_tensor(rf), N, V, alpha, T);
  EXPECT_LT(test::rel_error(inplace, g64), 1e-5);
  std::vector<uint16_t> gb(z.size());
  distill_backward(Exec{}, Tensor(gb.data(), gb.size(), DType::BF16), host_tensor(zf),
                   host_tensor(tf), host_tensor(tg), host_tensor(rf), N, V, alpha, T);
  std::vector<float> gbf(gb.size());
  for (size_t i = 0; i < gb.size(); i++) gbf[i] = bf16_to_f32(gb[i]);
  EXPECT_LT(test::rel_error(gbf, g64), 5e-3);
}

using test::init_weights;
using test::random_tokens;
using test::small_config;

// A whole student with a teacher, in fp64: the gradient of (1 - a) CE + a KD + MTP + balance
// against central differences of the same total, the teacher's logits fetched chunk by chunk from
// its own weights and workspace.
TEST(Distill, StudentGradientMatchesFiniteDifferences) {
  const auto dir = test::temp_dir("distill_fd");
  ModelConfig teacher_c = small_config(), c = small_config();
  teacher_c.hidden = 48;  // a different model over the same vocabulary
  c.init_std = 0.2;
  const std::string tpath = (dir / "teacher.dsv3").string();
  const auto tp = init_weights(teacher_c, 21);
  save_checkpoint(tpath, teacher_c, nlohmann::json::object(), tp.data(), nullptr, nullptr, tp.size());
  const Dims d{2, 8};
  const auto tokens = random_tokens(c, d, 13);
  Teacher teacher(tpath, c, DType::F64, Device::CPU, d, 0.4, 2.0);
  ModelWeights w(c, DType::F64);
  w.load(init_weights(c, 7));
  WorkspaceConfig wc;
  wc.max = d;
  wc.soft_targets = true;
  Workspace ws(c, DType::F64, Device::CPU, wc);
  const ParamTable t = build_param_table(c);
  Buffer grads(Device::CPU, DType::F64, t.total);
  const ModelParams g = bind_model(c, t, grads.view());
  MicroBatch mb{d, tokens.data()};
  mb.soft = teacher.run(mb);
  const TrainingLossConfig loss;
  const LossReport base = forward_backward(w, ws, loss, g, mb, 1.0f);
  EXPECT_GT(base.distill_loss, 0.0);
  EXPECT_NEAR(base.total, 0.6 * base.loss + 0.4 * base.distill_loss + loss.mtp_weight * base.mtp_loss +
                              base.balance_loss, 1e-12);
  double* wd = w.data().as<double>();
  const double* gd = grads.view().as<double>();
  Rng r(3);
  int checked = 0;
  for (const char* name : {"model.embed_tokens.weight", "model.layers.0.self_attn.kv_b_proj.weight",
                           "model.layers.1.mlp.experts.2.down_proj.weight", "lm_head.weight",
                           "model.norm.weight"}) {
    const ParamInfo& p = t.at(name);
    std::vector<double> dirv(p.numel);
    double analytic = 0;
    for (size_t i = 0; i < p.numel; i++) dirv[i] = r.normal(), analytic += dirv[i] * gd[p.offset + i];
    const double h = 1e-6;
    auto at = [&](double step) {
      for (size_t i = 0; i < p.numel; i++) wd[p.offset + i] += step * dirv[i];
      const LossReport l = forward(w, ws, loss, mb);
      for (size_t i = 0; i < p.numel; i++) wd[p.offset + i] -= step * dirv[i];
      return l;
    };
    const LossReport lp = at(h), lm = at(-h);
    bool same = true;
    for (size_t i = 0; i < base.moe.size(); i++)
      same &= lp.moe[i].loads == base.moe[i].loads && lm.moe[i].loads == base.moe[i].loads;
    if (!same) continue;
    const double fd = (lp.total - lm.total) / (2 * h);
    EXPECT_NEAR(analytic, fd, 1e-6 * std::max(1.0, std::abs(fd))) << name;
    checked++;
  }
  EXPECT_GE(checked, 4);
}

// ---- pruning ------------------------------------------------------------------------------

std::vector<float> logits_of(const ModelConfig& c, const std::vector<float>& p, Dims d,
                             const std::vector<int32_t>& tokens) {
  ModelWeights w(c, DType::F32);
  w.load(p);
  WorkspaceConfig wc;
  wc.max = d;
  wc.backward = false;
  Workspace ws(c, DType::F32, Device::CPU, wc);
  std::vector<float> logits(size_t(d.N()) * c.vocab);
  ForwardOptions o;
  o.logits = logits.data();
  forward(w, ws, TrainingLossConfig{}, {d, tokens.data()}, o);
  return logits;
}

TEST(Prune, KeepingEverythingChangesNothing) {
  const ModelConfig c = small_config();
  const auto p = init_weights(c, 5);
  const PrunedModel pm = prune_model(c, p, {}, {});
  EXPECT_EQ(pm.params, p);
  EXPECT_EQ(pm.config.experts, c.experts);
}

// Channels whose weights are zero and experts the router can never pick carry nothing: pruning
// exactly those (they are the smallest L1 / the unloaded ones) leaves the logits as they were.
TEST(Prune, DropsWhatCarriesNothingAndKeepsTheOutput) {
  const ModelConfig c = small_config();  // 8 experts in 2 groups, top-2, MTP 1
  const ParamTable t = build_param_table(c);
  auto p = init_weights(c, 6);
  Rng r(9);
  auto zero_channels = [&](const std::string& prefix, int D, int drop) {
    std::vector<int> idx(D);
    for (int i = 0; i < D; i++) idx[i] = i;
    for (int i = 0; i < drop; i++) std::swap(idx[i], idx[i + r.below(uint64_t(D - i))]);
    const int C = c.hidden;
    for (int i = 0; i < drop; i++) {
      const int j = idx[i];
      for (int k = 0; k < C; k++) {
        p[t.at(prefix + ".gate_proj.weight").offset + size_t(j) * C + k] = 0;
        p[t.at(prefix + ".up_proj.weight").offset + size_t(j) * C + k] = 0;
        p[t.at(prefix + ".down_proj.weight").offset + size_t(k) * D + j] = 0;
      }
    }
  };
  const double keep = 0.75;
  const int dense_drop = c.dense_inter - int(std::lround(c.dense_inter * keep));
  const int expert_drop = c.moe_inter - int(std::lround(c.moe_inter * keep));
  zero_channels("model.layers.0.mlp", c.dense_inter, dense_drop);
  for (int hf : {1, 2}) {  // the MoE layer and the MTP module's
    const std::string pre = "model.layers." + std::to_string(hf) + ".mlp";
    for (int e = 0; e < c.experts; e++) zero_channels(pre + ".experts." + std::to_string(e), c.moe_inter, expert_drop);
    zero_channels(pre + ".shared_experts", c.shared_experts * c.moe_inter, c.shared_experts * expert_drop);
    // experts 1 and 6 (one per group) can never be selected
    for (int e : {1, 6}) p[t.at(pre + ".gate.e_score_correction_bias").offset + e] = -100.0f;
  }
  const Dims d{2, 16};
  const auto tokens = random_tokens(c, d, 4);
  ModelWeights w(c, DType::F32);
  w.load(p);
  const auto loads = measure_expert_loads(w, tokens, d, 0);
  ASSERT_EQ(loads.size(), 2u);
  for (const auto& l : loads) EXPECT_EQ(l[1] + l[6], 0);
  PruneConfig pc;
  pc.ffn_keep = keep;
  pc.experts_keep = 0.75;
  const PrunedModel pm = prune_model(c, p, loads, pc);
  EXPECT_EQ(pm.config.experts, 6);
  EXPECT_EQ(pm.config.dense_inter, c.dense_inter - dense_drop);
  EXPECT_EQ(pm.config.moe_inter, c.moe_inter - expert_drop);
  EXPECT_EQ(pm.report["moe_layers"][0]["kept"], nlohmann::json({0, 2, 3, 4, 5, 7}));
  const auto before = logits_of(c, p, d, tokens), after = logits_of(pm.config, pm.params, d, tokens);
  EXPECT_LT(test::rel_error(after, before), 1e-5);
  // too few experts left for the routing: a clear error
  pc.experts_keep = 0.25;
  try {
    prune_model(c, p, loads, pc);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("raise --experts_keep"), std::string::npos) << e.what();
  }
}

// --init_from: the weights' config, with the settings that keep every tensor's shape.
TEST(InitFrom, ModelSettingsOnlyWhereTheWeightsAllow) {
  const ModelConfig w = small_config();
  ModelConfig given = preset("tiny");  // what the flags were parsed over
  given.rope_theta = 50000;
  given.topk = 3;
  given.mtp_depth = 2;
  const ModelConfig c = init_from_config(w, given, {"rope_theta", "topk", "steps"});
  EXPECT_EQ(c.rope_theta, 50000);
  EXPECT_EQ(c.topk, 3);
  EXPECT_EQ(c.hidden, w.hidden) << "settings not given come from the weights";
  for (const char* key : {"hidden", "experts", "mtp_depth", "q_lora"}) {
    try {
      init_from_config(w, given, {key});
      FAIL() << key;
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("changes the parameter shapes"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace dsv3
