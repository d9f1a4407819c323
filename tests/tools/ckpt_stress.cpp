// ckpt_stress DIR [MAX_STEPS]: saves a ~50 MB checkpoint (params + both Adam moments) to DIR
// again and again with increasing steps, keeping the last 2, until killed or MAX_STEPS saves.
// It resumes after the latest checkpoint already in DIR (loading and verifying it first), so a
// test can SIGKILL it at random moments and restart it (test_formats,
// Checkpoint.KillDuringSaveLeavesPreviousLoadable). Element i of buffer w (0 params, 1 adam_m,
// 2 adam_v) at step s holds s * 1000 + i % 997 + 0.25 * w, exact in fp32 for s < 16000.
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "core/check.h"
#include "model/params.h"

namespace {

float stress_value(int64_t step, size_t i, int which) {
  return float(step) * 1000.0f + float(i % 997) + 0.25f * float(which);
}

dsv3::ModelConfig stress_config() {  // about 4.3M floats: 52 MB with the Adam moments
  dsv3::ModelConfig c = dsv3::preset("debug");
  c.vocab = 32768;
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: ckpt_stress DIR [MAX_STEPS]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int64_t max_steps = argc > 2 ? std::atoll(argv[2]) : 1000000;
  try {
    const dsv3::ModelConfig c = stress_config();
    const size_t n = dsv3::build_param_table(c).total;
    int64_t step = 1;
    const auto existing = dsv3::list_checkpoints(dir);
    if (!existing.empty()) {
      const dsv3::Checkpoint ck = dsv3::load_checkpoint(existing.back());
      step = ck.train.at("step").get<int64_t>() + 1;
      for (size_t i = 0; i < n; i += 4099)
        DSV3_CHECK(ck.params[i] == stress_value(step - 1, i, 0), existing.back(),
                   ": wrong contents");
    }
    std::vector<float> buf[3];
    for (auto& b : buf) b.resize(n);
    for (int64_t done = 0; done < max_steps; done++, step++) {
      for (int w = 0; w < 3; w++)
        for (size_t i = 0; i < n; i++) buf[w][i] = stress_value(step, i, w);
      dsv3::save_checkpoint(dsv3::checkpoint_path(dir, step), c, {{"step", step}}, buf[0].data(),
                            buf[1].data(), buf[2].data(), n);
      dsv3::prune_checkpoints(dir, 2);
      std::printf("saved step %lld\n", static_cast<long long>(step));
      std::fflush(stdout);
    }
  } catch (const dsv3::Error& e) {
    std::fprintf(stderr, "ckpt_stress: %s\n", e.what());
    return 1;
  }
  return 0;
}
