// Optimizers through `dsv3 train` (T3): each trains, resumes exactly from its checkpointed
// state, refuses to continue another optimizer's state, and bad settings get clear errors.
// The update rules themselves are checked against PyTorch in tests/python/test_optimizers.py;
// the LAMB and Muon ops against their fp64 runs here.
#include <filesystem>

#include "cli_util.h"
#include "model/config.h"
#include "model/params.h"
#include "ops/optimizer.h"
#include "optim/adamw.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace dsv3::test {
namespace {

const std::string kSmall =
    "train --preset debug --batch 4 --seq_len 32 --eval_every 0 --sample_tokens 0 --peak_gflops 100 ";

std::vector<double> losses(const fs::path& dir) {
  std::vector<double> v;
  for (const auto& j : read_metrics((dir / "metrics.jsonl").string(), "train")) v.push_back(j["loss"]);
  return v;
}

TEST(Optimizers, EachTrainsAndResumesExactly) {
  auto d = temp_dir("opt_resume");
  // LAMB steps are lr x the weights' norm per tensor: it wants a larger lr than AdamW
  for (const std::string& flags : {std::string("--optimizer lamb --lr 3e-2"),
                                   std::string("--optimizer muon --lr 5e-3"),
                                   std::string("--optimizer muon --lr 5e-3 --grad_noise 1e-6 --lr_groups embed=0.5,head=0.5 --lr_depth_decay 0.8"),
                                   std::string("--optimizer adamw --lr 5e-3 --grad_noise 1e-6 --lr_depth_decay 0.9")}) {
    const fs::path a = d / "a", b = d / "b";
    fs::remove_all(a), fs::remove_all(b);
    auto r = run_cli(kSmall + "--steps 30 --save_every 15 --keep 3 " + flags + " --out " + a.string());
    ASSERT_EQ(r.code, 0) << flags << "\n" << r.out;
    const auto la = losses(a);
    ASSERT_EQ(la.size(), 30u);
    EXPECT_LT(la.back(), la.front() - 0.5) << flags;
    fs::create_directories(b);
    fs::copy_file(a / "ckpt_00000015.dsv3", b / "ckpt_00000015.dsv3");
    r = run_cli("train --resume " + b.string() + " --out " + b.string());
    ASSERT_EQ(r.code, 0) << r.out;
    const auto lb = losses(b);
    ASSERT_EQ(lb.size(), 15u);
    for (int i = 0; i < 15; i++) EXPECT_EQ(la[size_t(15 + i)], lb[size_t(i)]) << flags << " step " << 16 + i;
  }
  // the state belongs to its optimizer
  auto r = run_cli("train --resume " + (d / "b").string() + " --optimizer muon --steps 40 --out " + (d / "b").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("cannot continue it"), std::string::npos) << r.out;
}

TEST(Optimizers, BadSettingsAreNamed) {
  auto d = temp_dir("opt_bad");
  const std::string out = " --steps 2 --out " + (d / "x").string();
  auto r = run_cli(kSmall + "--optimizer sgd" + out);
  EXPECT_NE(r.out.find("unknown optimizer 'sgd'"), std::string::npos) << r.out;
  r = run_cli(kSmall + "--lr_groups emb=0.5" + out);
  EXPECT_NE(r.out.find("unknown group 'emb'"), std::string::npos) << r.out;
  r = run_cli(kSmall + "--lr_groups embed" + out);
  EXPECT_NE(r.out.find("is not group=multiplier"), std::string::npos) << r.out;
  r = run_cli(kSmall + "--lr_groups embed=-1" + out);
  EXPECT_NE(r.out.find("must be >= 0"), std::string::npos) << r.out;
  r = run_cli(kSmall + "--lr_depth_decay 1.5" + out);
  EXPECT_NE(r.out.find("lr_depth_decay must be in (0, 1]"), std::string::npos) << r.out;
  r = run_cli(kSmall + "--muon_momentum 0.9" + out);
  EXPECT_NE(r.out.find("--muon_momentum does not apply"), std::string::npos) << r.out;
  r = run_cli(kSmall + "--grad_noise_gamma 0.5" + out);
  EXPECT_NE(r.out.find("--grad_noise_gamma does not apply"), std::string::npos) << r.out;
}

TEST(Optimizers, GroupsAndDepthDecay) {
  const ModelConfig c = preset("debug");  // 2 layers + 1 MTP module
  const ParamTable t = build_param_table(c);
  AdamWConfig oc;
  oc.lr_groups = "embed=0.5,experts=2";
  oc.lr_depth_decay = 0.5;
  const auto mult = lr_multipliers(oc, t);
  size_t k = 0;
  for (const ParamInfo& p : t.list) {
    if (!p.trainable()) continue;
    const float m = mult[k++];
    if (p.name == "model.embed_tokens.weight") {
      EXPECT_EQ(m, 0.5f * 0.25f);
    }
    if (p.name == "lm_head.weight" || p.name == "model.norm.weight") {
      EXPECT_EQ(m, 1.0f);
    }
    if (p.name == "model.layers.0.self_attn.o_proj.weight") {
      EXPECT_EQ(m, 0.5f);
    }
    if (p.name == "model.layers.1.mlp.experts.3.up_proj.weight") {
      EXPECT_EQ(m, 2.0f);
    }
    if (p.name == "model.layers.2.eh_proj.weight") {
      EXPECT_EQ(m, 1.0f);
    }  // MTP: top of the stack
    if (p.name == "model.layers.2.mlp.experts.0.down_proj.weight") {
      EXPECT_EQ(m, 2.0f);
    }
  }
  EXPECT_EQ(lr_group_of("model.layers.1.mlp.gate.weight"), "router");
  EXPECT_EQ(lr_group_of("model.layers.0.mlp.down_proj.weight"), "dense");
  EXPECT_EQ(lr_group_of("model.layers.1.mlp.shared_experts.up_proj.weight"), "shared");
  EXPECT_EQ(lr_group_of("model.layers.1.input_layernorm.weight"), "norm");
  EXPECT_EQ(lr_group_of("model.layers.2.enorm.weight"), "norm");
}

// The f32 LAMB and Muon kernels against their own fp64 runs (the oracle path of every op).
TEST(Optimizers, LambAndMuonF32MatchF64) {
  const std::vector<ParamSpan> spans = {{0, 48, true, 1.0f}, {48, 7, false, 0.5f}, {55, 30, true, 2.0f}};
  const std::vector<MatrixSpan> mats = {{0, 6, 8, 1.0f}, {55, 10, 3, 0.5f}};
  const size_t n = 85;
  std::vector<double> p = random_vec(n, 1), g = random_vec(n, 2, 0.1);
  for (int kind = 0; kind < 2; kind++) {
    std::vector<double> pd = p, md(n, 0.0), vd(n, 0.0);
    std::vector<float> pf(p.begin(), p.end()), gf(g.begin(), g.end()), mf(n, 0.f), vf(n, 0.f);
    for (int t = 1; t <= 3; t++) {
      const AdamwHyper h{1e-2, 0.9, 0.95, 1e-8, 0.1, t, 0.8, {0.01, 5}};
      const MuonHyper mh{1e-2, 0.95, 0.1, true, 5, 0.8, {0.01, 5}, t};
      if (kind == 0) {
        lamb_update(Exec{}, host_tensor(pd), host_tensor(g), host_tensor(md), host_tensor(vd), Tensor{}, spans, h);
        lamb_update(Exec{}, host_tensor(pf), host_tensor(gf), host_tensor(mf), host_tensor(vf), Tensor{}, spans, h);
      } else {
        muon_update(Exec{}, host_tensor(pd), host_tensor(g), host_tensor(md), Tensor{}, mats, mh);
        muon_update(Exec{}, host_tensor(pf), host_tensor(gf), host_tensor(mf), Tensor{}, mats, mh);
      }
    }
    std::vector<double> dd(n), df(n);
    for (size_t i = 0; i < n; i++) dd[i] = pd[i] - p[i], df[i] = double(pf[i]) - p[i];
    // the f32 weights are rounded after each step: with updates of ~1% of |w| (lr 1e-2), an ulp
    // of w (6e-8 |w|) is ~6e-6 of the update per step
    EXPECT_LT(rel_error(df, dd), 5e-5) << (kind ? "muon" : "lamb");
    EXPECT_GT(rel_error(pd, p), 1e-4);
    if (kind == 1) {  // Muon leaves what is not one of its matrices alone
      for (size_t i = 48; i < 55; i++) EXPECT_EQ(pd[i], p[i]);
    }
  }
  // Newton-Schulz makes the update nearly orthogonal: the singular values of O are ~1, so
  // ||O||_F^2 ~ min(rows, cols) (Jordan: they land in about [0.7, 1.2])
  std::vector<double> w(48, 0.0), z(48, 0.0), gg = random_vec(48, 9);
  muon_update(Exec{}, host_tensor(w), host_tensor(gg), host_tensor(z), Tensor{}, std::vector<MatrixSpan>{{0, 6, 8, 1.0f}},
              {1.0, 0.0, 0.0, false, 5, 1.0, {}, 1});
  double f2 = 0;
  for (double x : w) f2 += x * x;
  const double scale = 0.2 * std::sqrt(8.0);
  EXPECT_GT(f2 / (scale * scale), 6 * 0.5);
  EXPECT_LT(f2 / (scale * scale), 6 * 1.3);
}

}  // namespace
}  // namespace dsv3::test
