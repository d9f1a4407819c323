// Drives the product's optimizer (optim/adamw.h: AdamW, LAMB, Muon, per-group rates, gradient
// noise) for the PyTorch comparison (tests/python/test_optimizers.py): on the `debug` model's
// parameter table, from its initial weights, 5 updates with given gradients, learning rates and
// gradient scales (clipping factors).
//   opttool OUT_DIR '{"optimizer": "muon", "lr_groups": "embed=0.5", ...}'
// Writes OUT/table.json (every tensor: name, shape, offset, kind, lr multiplier, group),
// OUT/init.bin, OUT/grads_T.bin and OUT/params_T.bin for T = 1..5 (fp32, the whole parameter
// buffer), OUT/m.bin and OUT/v.bin (the state after step 5), OUT/steps.json (lr, grad_scale,
// noise std per step; the noise seed).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/check.h"
#include "core/rng.h"
#include "model/config.h"
#include "model/params.h"
#include "optim/adamw.h"

using namespace dsv3;

namespace {
void write_raw(const std::string& path, const std::vector<float>& v) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  DSV3_CHECK(f, "cannot write ", path);
  DSV3_CHECK(std::fwrite(v.data(), sizeof(float), v.size(), f) == v.size(), "short write ", path);
  std::fclose(f);
}
std::vector<float> host(const Tensor& t) {
  std::vector<float> out(t.numel);
  backend::copy(Exec{}, host_tensor(out), t);
  return out;
}
}  // namespace

int main(int argc, char** argv) {
  try {
    DSV3_CHECK(argc == 3, "usage: opttool OUT_DIR OPTIMIZER_JSON");
    const std::string out = argv[1];
    std::filesystem::create_directories(out);
    AdamWConfig c;
    c.weight_decay = 0.1;
    fields_from_json(optimizer_fields(), &c, nlohmann::json::parse(argv[2]), "optimizer settings");
    c.noise_seed = 1234;
    const ModelConfig mc = preset("debug");
    const ParamTable t = build_param_table(mc);
    std::vector<float> p(t.total);
    init_params(mc, t, p.data(), 7);
    write_raw(out + "/init.bin", p);
    AdamW opt(c, t, Device::CPU);
    const std::vector<float> mult = lr_multipliers(c, t);
    nlohmann::json table = nlohmann::json::array();
    size_t k = 0;
    for (const ParamInfo& pi : t.list) {
      table.push_back({{"name", pi.name}, {"shape", pi.shape}, {"offset", pi.offset},
                       {"numel", pi.numel}, {"trainable", pi.trainable()}, {"decay", pi.decay()},
                       {"lr_mult", pi.trainable() ? double(mult[k]) : 0.0},
                       {"group", pi.trainable() ? lr_group_of(pi.name) : ""}});
      k += pi.trainable();
    }
    std::ofstream(out + "/table.json") << table.dump(1);
    nlohmann::json steps = nlohmann::json::array();
    for (int step = 1; step <= 5; step++) {
      // gradients of a realistic scale, different per tensor; the Buffer kind gets none
      Rng rng(100 + uint64_t(step));
      std::vector<float> g(t.total, 0.0f);
      for (const ParamInfo& pi : t.list) {
        if (!pi.trainable()) continue;
        const float scale = 0.01f * float(1 + (pi.offset / 7) % 5);
        for (size_t i = 0; i < pi.numel; i++) g[pi.offset + i] = scale * rng.normal();
      }
      write_raw(out + "/grads_" + std::to_string(step) + ".bin", g);
      const double lr = 2e-3 * (1.0 + 0.25 * step);
      const double gs = step == 3 ? 0.5 : 1.0;  // a clipped step
      steps.push_back({{"lr", lr}, {"grad_scale", gs}, {"noise_std", opt.noise_std(step)}});
      opt.step(Exec{}, host_tensor(p), host_tensor(g), Tensor{}, lr, gs);
      write_raw(out + "/params_" + std::to_string(step) + ".bin", p);
    }
    write_raw(out + "/m.bin", host(opt.m()));
    write_raw(out + "/v.bin", host(opt.v()));
    std::ofstream(out + "/steps.json") << nlohmann::json{{"steps", steps}, {"noise_seed", c.noise_seed}}.dump(1);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "opttool: %s\n", e.what());
    return 1;
  }
}
