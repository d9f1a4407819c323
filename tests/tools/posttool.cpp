// Drives the product's post-training losses for the PyTorch comparison
// (tests/python/test_post_training.py): on an HF model, the gradient of one optimizer step's
// objective through train/step.h compute_gradients, exactly as `dsv3 finetune` builds it.
//   posttool sft --hf DIR --data chat.jsonl --seq T --batch B --out OUT
//     the first B packed rows of the file (in file order, byte-level template)
//   posttool dpo --hf DIR --ref_hf DIR2 --data pairs.jsonl --seq T --batch P --out OUT
//                [--beta b --label_smoothing s --dpo_loss sigmoid|ipo]
//     the first P pairs; the reference log-probs from DIR2
// Writes OUT/tokens.bin (int32, rows x (T+1)), OUT/weights.bin (fp32, rows x T: the loss mask),
// OUT/grads.safetensors (every trainable tensor, fp32) and OUT/result.json (the loss).
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "checkpoint/hf.h"
#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "post/dpo.h"
#include "post/sft.h"
#include "train/step.h"

using namespace dsv3;

namespace {
template <class T>
void write_raw(const std::string& path, const std::vector<T>& v) {
  std::FILE* f = std::fopen(path.c_str(), "wb");
  DSV3_CHECK(f && std::fwrite(v.data(), sizeof(T), v.size(), f) == v.size() && std::fclose(f) == 0,
             "cannot write ", path);
}
}  // namespace

int main(int argc, char** argv) try {
  DSV3_CHECK(argc >= 2, "usage: posttool sft|dpo --key value ...");
  const std::string method = argv[1];
  std::string hf, ref_hf, data, out;
  int T = 32, B = 2;
  FinetuneSpec spec;
  spec.loss.balance_alpha = 0;
  spec.loss.bias_update_rate = 0;
  for (int i = 2; i + 1 < argc; i += 2) {
    const std::string k = argv[i], v = argv[i + 1];
    if (k == "--hf") hf = v;
    else if (k == "--ref_hf") ref_hf = v;
    else if (k == "--data") data = v;
    else if (k == "--out") out = v;
    else if (k == "--seq") T = int(parse_int("seq", v));
    else if (k == "--batch") B = int(parse_int("batch", v));
    else if (const FieldSpec* f = find_field(dpo_fields(), k.substr(2))) f->set(&spec.dpo, v);
    else fail("unknown option ", k);
  }
  DSV3_CHECK(!hf.empty() && !data.empty() && !out.empty(), "need --hf, --data, --out");
  std::filesystem::create_directories(out);
  const HfModel m = import_hf(hf);
  const ModelConfig& c = m.config;
  ModelWeights weights(c, DType::F32);
  TrainState st(weights, spec.optimizer, spec.precision);
  st.load_weights(m.params);
  const TextCodec codec;  // byte-level
  StepSettings ss = step_settings(1, spec.schedule, 1, spec.loss);
  std::vector<int32_t> tokens;
  std::vector<float> weights_out;
  nlohmann::json result;
  if (method == "sft") {
    JsonlReport rep;
    const PackedRows rows = pack_sequences(read_chat_jsonl(data, codec, rep), T, 0);
    DSV3_CHECK(rows.rows() >= B, "need ", B, " rows, the file packs into ", rows.rows());
    tokens.assign(rows.tokens.begin(), rows.tokens.begin() + int64_t(B) * (T + 1));
    weights_out.assign(rows.weights.begin(), rows.weights.begin() + int64_t(B) * T);
    WorkspaceConfig wc;
    wc.max = {B, T};
    Workspace ws(c, DType::F32, Device::CPU, wc);
    const Gradients g = compute_gradients(st, ws, spec.loss, ss, 0, [&](int) {
      return MicroBatch{{B, T}, tokens.data(), weights_out.data()};
    });
    result["loss"] = g.loss.loss;
    result["bad_lines"] = rep.bad;
  } else if (method == "dpo") {
    DSV3_CHECK(!ref_hf.empty(), "dpo needs --ref_hf");
    const HfModel rm = import_hf(ref_hf);
    ModelWeights ref(rm.config, DType::F32);
    ref.load(rm.params);
    JsonlReport rep;
    const auto pairs = read_preference_jsonl(data, codec, rep);
    DSV3_CHECK(int(pairs.size()) >= B, "need ", B, " pairs");
    WorkspaceConfig wc;
    wc.max = {2, T};
    Workspace ws(c, DType::F32, Device::CPU, wc);
    std::vector<PairRows> rows(static_cast<size_t>(B));
    std::vector<double> rc, rr;
    for (int i = 0; i < B; i++) {
      DSV3_CHECK(pair_rows(pairs[size_t(i)], T, 0, rows[size_t(i)]), "pair ", i, " has no response within T");
      const auto [a, b] = pair_logprobs(ref, ws, spec.loss, rows[size_t(i)]);
      rc.push_back(a), rr.push_back(b);
      tokens.insert(tokens.end(), rows[size_t(i)].tokens.begin(), rows[size_t(i)].tokens.end());
      weights_out.insert(weights_out.end(), rows[size_t(i)].mask.begin(), rows[size_t(i)].mask.end());
    }
    ss.grad_accum = B;
    double loss = 0;
    std::vector<float> coef;
    nlohmann::json per = nlohmann::json::array();
    compute_gradients(st, ws, spec.loss, ss, 0, [&](int a) {
      DpoTerms t;
      const MicroBatch mb = dpo_micro_batch(weights, ws, spec.loss, rows[size_t(a)], rc[size_t(a)],
                                            rr[size_t(a)], spec.dpo, &coef, &t);
      loss += t.loss / B;
      per.push_back({{"loss", t.loss}, {"chosen_reward", t.chosen_reward},
                     {"rejected_reward", t.rejected_reward}, {"ref_chosen", rc[size_t(a)]},
                     {"ref_rejected", rr[size_t(a)]}});
      return mb;
    });
    result["loss"] = loss;
    result["pairs"] = per;
  } else {
    fail("method must be sft or dpo");
  }
  std::vector<float> grads(st.grads().numel);
  backend::copy(st.exec(), host_tensor(grads), st.grads());
  std::vector<SafetensorsTensor> list;
  for (const auto& p : weights.table().list)
    if (p.trainable()) list.push_back({p.name, p.shape, grads.data() + p.offset});
  write_safetensors(out + "/grads.safetensors", list, DType::F32);
  write_raw(out + "/tokens.bin", tokens);
  write_raw(out + "/weights.bin", weights_out);
  std::ofstream(out + "/result.json") << result.dump(1) << "\n";
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "posttool: %s\n", e.what());
  return 1;
}
