// Drives the product's model and optimizer step for the PyTorch reference test
// (tests/python/test_reference.py): imports an HF directory, dumps logits and every gradient of
// the first micro-batch, then trains `steps` steps and dumps the metrics and final weights.
//   reftool --hf DIR --tokens FILE --batch B --seq T --steps S --out DIR [--key value ...]
// Extra keys: any training-loss or training setting (mtp_weight, balance_alpha, lr, ...).
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "checkpoint/hf.h"
#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "data/token_file.h"
#include "train/step.h"
#include "train/train_config.h"

using namespace dsv3;

namespace {
void write_raw(const std::string& path, const float* data, size_t n) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  DSV3_CHECK(f, "cannot write ", path);
  DSV3_CHECK(std::fwrite(data, sizeof(float), n, f) == n, "short write ", path);
  std::fclose(f);
}
void write_tensors(const std::string& path, const ParamTable& t, const float* base,
                   bool trainable_only) {
  std::vector<SafetensorsTensor> list;
  for (const auto& p : t.list)
    if (!trainable_only || p.trainable()) list.push_back({p.name, p.shape, base + p.offset});
  write_safetensors(path, list, DType::F32);
}
}  // namespace

int main(int argc, char** argv) try {
  std::string hf, tokens_path, out;
  TrainingLossConfig loss;
  TrainConfig tc;
  tc.warmup = 0;
  for (int i = 1; i < argc; i++) {
    std::string key = argv[i];
    DSV3_CHECK(key.rfind("--", 0) == 0 && i + 1 < argc, "usage: reftool --key value ...");
    key = key.substr(2);
    const std::string v = argv[++i];
    if (key == "hf") hf = v;
    else if (key == "tokens") tokens_path = v;
    else if (key == "out") out = v;
    else if (key == "seq") tc.seq_len = int(parse_int(key, v));
    else if (auto* f = find_field(loss_fields(), key)) f->set(&loss, v);
    else if (auto* f2 = find_field(train_fields(), key)) f2->set(&tc, v);
    else fail("unknown option --", key);
  }
  DSV3_CHECK(!hf.empty() && !tokens_path.empty() && !out.empty(), "need --hf, --tokens, --out");
  std::filesystem::create_directories(out);
  HfModel m = import_hf(hf);
  const Dims d = tc.dims();
  Model model(m.config, loss, d);
  std::copy(m.params.begin(), m.params.end(), model.params());
  const std::vector<int32_t> tokens = read_token_file(tokens_path);
  const size_t chunk = size_t(d.B) * (d.T + 1);
  const size_t need = chunk * tc.grad_accum * tc.steps;
  DSV3_CHECK(tokens.size() >= need, "token file has ", tokens.size(), " tokens, need ", need);
  const ModelConfig& c = m.config;

  // logits and gradients of chunk 0 at the initial weights
  std::vector<float> logits(size_t(d.N()) * c.vocab), mtp(size_t(c.mtp_depth) * d.N() * c.vocab);
  LossReport init = model.forward(tokens.data(), d, logits.data(), mtp.empty() ? nullptr : mtp.data());
  write_raw(out + "/logits.bin", logits.data(), logits.size());
  if (!mtp.empty()) write_raw(out + "/mtp_logits.bin", mtp.data(), mtp.size());
  model.zero_grads();
  model.forward_backward(tokens.data(), d, 1.0f);
  write_tensors(out + "/grads.safetensors", model.table(), model.grads(), true);

  nlohmann::json j;
  j["initial"] = {{"loss", init.loss}, {"mtp_loss", init.mtp_loss},
                  {"balance_loss", init.balance_loss}, {"total", init.total}};
  AdamW opt(tc.adamw(), model.table());
  const StepSettings s = step_settings(tc.grad_accum, tc.clip, tc.schedule_config(), loss);
  j["steps"] = nlohmann::json::array();
  for (int64_t step = 0; step < tc.steps; step++) {
    StepResult r = train_step(model, opt, s, step, d, [&](int a) {
      return tokens.data() + chunk * (size_t(step) * tc.grad_accum + a);
    });
    j["steps"].push_back({{"step", step}, {"loss", r.loss.loss}, {"mtp_loss", r.loss.mtp_loss},
                          {"balance_loss", r.loss.balance_loss}, {"grad_norm", r.grad_norm},
                          {"lr", r.lr}});
  }
  std::ofstream(out + "/metrics.json") << j.dump(1) << "\n";
  write_tensors(out + "/final.safetensors", model.table(), model.params(), false);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "reftool: %s\n", e.what());
  return 1;
}
