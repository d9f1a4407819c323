// Drives the product's model and optimizer step for the PyTorch reference test
// (tests/python/test_reference.py): imports an HF directory, dumps logits and every gradient of
// the first micro-batch, then trains `steps` steps and dumps the metrics and final weights.
//   reftool --hf DIR --tokens FILE --batch B --seq T --steps S --out DIR [--key value ...]
// OUT/routing.bin: the experts every MoE layer chose (N*K int32 per layer, main layers then MTP
// blocks) in every forward pass: the first micro-batch at the initial weights, then each step's
// micro-batches. The 16-bit comparisons let the oracle follow these choices (near-ties may
// break differently under rounding; the oracle checks that every disagreement is one).
// Extra keys: any setting of the losses, training, optimizer, schedule or precision groups
// (mtp_weight, balance_alpha, lr, precision, ...). Gradients are written as the true gradient
// (divided by the fp16 loss scale), the final weights as the fp32 master weights.
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "checkpoint/hf.h"
#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "data/token_file.h"
#include "train/run_config.h"
#include "train/step.h"

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
// Appends the expert choices of the workspace's last forward pass to f.
void dump_routing(std::FILE* f, const Workspace& ws, const ModelConfig& c, Dims d) {
  const size_t NK = size_t(d.N()) * c.topk;
  std::vector<int32_t> idx(NK);
  auto put = [&](const Tensor& t) {
    backend::copy(Exec{}, host_tensor(idx), t.slice(0, NK));
    DSV3_CHECK(std::fwrite(idx.data(), sizeof(int32_t), NK, f) == NK, "short write routing.bin");
  };
  for (int l = 0; l < c.layers; l++)
    if (c.is_moe_layer(l)) put(ws.block_acts(l).moe.idx);
  if (c.experts > 0)
    for (int k = 0; k < c.mtp_depth; k++) put(ws.mtp[k].blk.moe.idx);
}
}  // namespace

int main(int argc, char** argv) try {
  std::string hf, tokens_path, out;
  RunSpec spec;
  spec.schedule.warmup = 0;
  const auto groups = run_groups_without_model(spec);
  for (int i = 1; i < argc; i++) {
    std::string key = argv[i];
    DSV3_CHECK(key.rfind("--", 0) == 0 && i + 1 < argc, "usage: reftool --key value ...");
    key = key.substr(2);
    const std::string v = argv[++i];
    const FieldGroup* g = nullptr;
    if (key == "hf") hf = v;
    else if (key == "tokens") tokens_path = v;
    else if (key == "out") out = v;
    else if (key == "seq") spec.run.seq_len = int(parse_int(key, v));
    else if (const FieldSpec* f = find_field(groups, key, &g)) f->set(g->target, v);
    else fail("unknown option --", key);
  }
  DSV3_CHECK(!hf.empty() && !tokens_path.empty() && !out.empty(), "need --hf, --tokens, --out");
  std::filesystem::create_directories(out);
  HfModel m = import_hf(hf);
  const ModelConfig& c = m.config;
  const RunConfig& rc = spec.run;
  const Dims d = rc.dims();
  const DType dt = compute_dtype(spec.precision.precision);
  ModelWeights weights(c, dt);
  TrainState st(weights, spec.optimizer, spec.precision);
  st.load_weights(m.params);
  WorkspaceConfig wc;
  wc.max = d;
  wc.recompute = rc.recompute;
  Workspace ws(c, dt, Device::CPU, wc);
  const std::vector<int32_t> tokens = read_token_file(tokens_path);
  const size_t chunk = size_t(d.B) * (d.T + 1);
  const size_t need = chunk * rc.grad_accum * rc.steps;
  DSV3_CHECK(tokens.size() >= need, "token file has ", tokens.size(), " tokens, need ", need);

  // logits and gradients of chunk 0 at the initial weights
  std::vector<float> logits(size_t(d.N()) * c.vocab), mtp(size_t(c.mtp_depth) * d.N() * c.vocab);
  ForwardOptions fo;
  fo.logits = logits.data();
  fo.mtp_logits = mtp.empty() ? nullptr : mtp.data();
  const LossReport init = forward(weights, ws, spec.loss, {d, tokens.data()}, fo);
  DSV3_CHECK(rc.recompute == Recompute::None, "reftool reads each layer's routing: recompute none");
  std::FILE* routing = std::fopen((out + "/routing.bin").c_str(), "wb");
  DSV3_CHECK(routing, "cannot write ", out, "/routing.bin");
  dump_routing(routing, ws, c, d);
  write_raw(out + "/logits.bin", logits.data(), logits.size());
  if (!mtp.empty()) write_raw(out + "/mtp_logits.bin", mtp.data(), mtp.size());
  st.zero_grads();
  const float scale = float(st.scaler().scale());
  forward_backward(weights, ws, spec.loss, st.grad_view(), {d, tokens.data()}, scale);
  std::vector<float> grads(st.grads().numel);
  backend::copy(st.exec(), host_tensor(grads), st.grads());
  for (float& g : grads) g /= scale;  // a power of two: exact
  write_tensors(out + "/grads.safetensors", weights.table(), grads.data(), true);

  nlohmann::json j;
  j["precision"] = precision_name(spec.precision.precision);
  j["initial"] = {{"loss", init.loss}, {"mtp_loss", init.mtp_loss},
                  {"balance_loss", init.balance_loss}, {"total", init.total}};
  const StepSettings s = step_settings(rc.grad_accum, spec.schedule, rc.steps, spec.loss);
  j["steps"] = nlohmann::json::array();
  for (int64_t step = 0; step < rc.steps; step++) {
    const StepResult r = train_step(st, ws, spec.loss, s, step, [&](int a) {
      if (a > 0) dump_routing(routing, ws, c, d);  // micro-batch a-1's choices
      return MicroBatch{d, tokens.data() + chunk * (size_t(step) * rc.grad_accum + a)};
    });
    dump_routing(routing, ws, c, d);
    j["steps"].push_back({{"step", step}, {"loss", r.loss.loss}, {"mtp_loss", r.loss.mtp_loss},
                          {"balance_loss", r.loss.balance_loss}, {"grad_norm", r.grad_norm},
                          {"lr", r.lr}, {"applied", r.applied}, {"loss_scale", r.loss_scale}});
  }
  DSV3_CHECK(std::fclose(routing) == 0, "cannot write ", out, "/routing.bin");
  std::ofstream(out + "/metrics.json") << j.dump(1) << "\n";
  const std::vector<float> fin = st.master_host();
  write_tensors(out + "/final.safetensors", weights.table(), fin.data(), false);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "reftool: %s\n", e.what());
  return 1;
}
