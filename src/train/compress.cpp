#include "train/compress.h"

#include "checkpoint/quantized.h"
#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "core/io.h"
#include "tokenizer/text_codec.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"

namespace dsv3 {

const std::vector<FieldSpec>& compression_fields() {
  using K = CompressionConfig;
  static const std::vector<FieldSpec> f = {
      field("init_from", &K::init_from,
            "start from this model's weights (checkpoint, run directory or HF directory) with a "
            "fresh optimizer at step 0; model settings may change only what the weights allow"),
      field("qat", &K::qat,
            "quantisation-aware training: the forward sees every linear layer's weights "
            "fake-quantised to int8 per output channel (as dsv3 quantize will), gradients pass "
            "straight through to the fp32 weights"),
      field("teacher", &K::teacher,
            "distil from this model (same tokenizer): loss = (1 - alpha) CE + alpha T^2 KL"),
      field("distill_alpha", &K::distill_alpha, "weight alpha of the distillation term",
            in_range(0, 1)),
      field("distill_temp", &K::distill_temp, "softmax temperature T of the distillation term",
            above(0)),
  };
  return f;
}

void validate(const CompressionConfig& c) {
  DSV3_CHECK(c.distill_alpha >= 0 && c.distill_alpha <= 1, "distill_alpha must be in [0, 1], got ",
             c.distill_alpha);
  DSV3_CHECK(c.distill_temp > 0, "distill_temp must be > 0, got ", c.distill_temp);
}

namespace {
// Same tensors with the same shapes (offsets follow from them).
std::string table_difference(const ParamTable& a, const ParamTable& b) {
  for (size_t i = 0; i < std::min(a.list.size(), b.list.size()); i++)
    if (a.list[i].name != b.list[i].name || a.list[i].shape != b.list[i].shape)
      return a.list[i].name + " " + shape_str(a.list[i].shape) + " vs " + b.list[i].name + " " +
             shape_str(b.list[i].shape);
  if (a.list.size() != b.list.size())
    return std::to_string(a.list.size()) + " vs " + std::to_string(b.list.size()) + " tensors";
  return "";
}
}  // namespace

ModelConfig init_from_config(const ModelConfig& weights, const ModelConfig& given,
                             const std::vector<std::string>& model_keys) {
  const std::vector<FieldSpec>& fields = model_fields();
  const ParamTable ref = build_param_table(weights);
  ModelConfig out = weights;
  for (const std::string& key : model_keys) {
    const FieldSpec* f = find_field(fields, key);
    if (!f) continue;  // not a model setting
    ModelConfig trial = out;
    f->set(&trial, f->get(&given));
    if (f->get(&trial) == f->get(&weights)) continue;
    std::string diff;
    try {
      validate(trial);
      diff = table_difference(build_param_table(trial), ref);
    } catch (const Error& e) {
      fail("--", key, " ", f->get(&given), " with the --init_from model: ", e.what());
    }
    DSV3_CHECK(diff.empty(), "--", key, " ", f->get(&given), " changes the parameter shapes of the "
               "--init_from model (which has ", key, " ", f->get(&weights), "; ", diff,
               "): its weights do not allow that (drop the flag)");
    out = trial;
  }
  return out;
}

std::vector<float> init_from_weights(const std::string& path, const ModelConfig& c) {
  LoadedModel m = load_model_any(path);
  DSV3_CHECK(m.int8.scheme == QuantScheme::None, "--init_from ", path, " is an int8 model: "
             "training starts from fp32 weights (its source checkpoint)");
  const std::string diff = table_difference(build_param_table(c), build_param_table(m.config));
  DSV3_CHECK(diff.empty(), "--init_from ", path, ": its tensors differ from the run's model (",
             diff, ")");
  return std::move(m.params);
}

void check_same_tokenizer(const std::string& teacher, const std::string& data_tokenizer) {
  const std::string t = find_tokenizer_for_model(teacher);
  auto name = [](const std::string& p) { return p.empty() ? std::string("byte-level ids") : p; };
  DSV3_CHECK(t.empty() == data_tokenizer.empty() &&
                 (t.empty() || read_file(t) == read_file(data_tokenizer)),
             "--teacher ", teacher, " uses ", name(t), ", the run's data ", name(data_tokenizer),
             ": distillation needs the same tokenizer");
}

// ---- Teacher -----------------------------------------------------------------------------

struct Teacher::State {
  std::unique_ptr<ModelWeights> w;
  std::unique_ptr<Workspace> ws;
  TrainingLossConfig loss;
  SoftTargets soft;
  Dims d{1, 1};
};

Teacher::Teacher(const std::string& path, const ModelConfig& student, DType dtype, Device device,
                 Dims max, double alpha, double temperature)
    : s_(std::make_unique<State>()) {
  LoadedModel m = load_model_any(path, /*keep_int8=*/true);
  source_ = m.source;
  DSV3_CHECK(m.config.vocab == student.vocab, "--teacher ", path, " has a vocabulary of ",
             m.config.vocab, ", the student ", student.vocab, ": distillation needs the same "
             "tokenizer");
  DSV3_CHECK(max.T <= m.config.max_seq, "--teacher ", path, ": its max_seq ", m.config.max_seq,
             " is shorter than the run's seq_len ", max.T);
  s_->w = make_model_weights(m, dtype, device);
  WorkspaceConfig wc;
  wc.max = max;
  wc.backward = false;
  s_->ws = std::make_unique<Workspace>(m.config, dtype, device, wc);
  s_->soft.alpha = alpha;
  s_->soft.temperature = temperature;
  State* st = s_.get();
  s_->soft.logits = [st](int r0, int rows, const Tensor& out) {
    const ModelConfig& c = st->w->config();
    const size_t C = c.hidden;
    linear_forward(Exec{st->w->device()}, out, st->ws->head.xn.slice(size_t(r0) * C, rows * C),
                   st->w->params().head, rows, c.hidden, c.vocab);
  };
}

Teacher::~Teacher() = default;

const SoftTargets* Teacher::run(const MicroBatch& mb) {
  State& s = *s_;
  const ModelConfig& c = s.w->config();
  Pass p(*s.w, *s.ws, s.loss, mb.d);
  load_batch(p, MicroBatch{mb.d, mb.tokens}, /*mtp=*/false);
  embed_forward(p);
  blocks_forward(p, 0, c.layers);
  const int N = mb.d.N(), C = c.hidden;
  rmsnorm_forward(p.ex(), s.ws->head.xn, s.ws->head.rstd, s.ws->resid[c.layers], s.w->params().norm,
                  {N, C, C, C}, float(c.rms_eps));
  return &s.soft;
}

}  // namespace dsv3
