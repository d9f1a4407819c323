// `dsv3 quantize` (I3) and `dsv3 prune` (I4): a trained model in, a smaller model out.
#include <cstdio>
#include <filesystem>

#include "checkpoint/quantized.h"
#include "commands.h"
#include "core/check.h"
#include "core/io.h"
#include "data/builtin_corpus.h"
#include "data/token_file.h"
#include "flags.h"
#include "model/prune.h"
#include "tokenizer/text_codec.h"

namespace dsv3::cli {

namespace {

// The model's tokenizer beside `out` (when it has one and out's directory has none), so eval
// --text and sample find it there as they do beside a run's checkpoints.
void copy_tokenizer(const std::string& model, const std::string& out) {
  const std::string tok = find_tokenizer_for_model(model);
  if (tok.empty()) return;
  const std::filesystem::path dst =
      std::filesystem::absolute(out).parent_path() / std::filesystem::path(tok).filename();
  if (std::filesystem::exists(dst)) return;
  std::filesystem::copy_file(tok, dst);
  std::fprintf(stderr, "copied the tokenizer to %s\n", dst.c_str());
}

double mib(double bytes) { return bytes / 1048576.0; }

struct QuantizeOptions {
  std::string model, out;
  QuantScheme scheme = QuantScheme::W8A8;
};
const std::vector<FieldSpec>& quantize_fields() {
  using Q = QuantizeOptions;
  static const std::vector<FieldSpec> f = {
      field("model", &Q::model, "checkpoint file, run directory or HF directory"),
      field("out", &Q::out, "int8 model file to write"),
      choice("scheme", &Q::scheme, "w8a8|w8a16",
             "w8a8: int8 GEMMs on activations quantised per token; w8a16: int8 weights widened "
             "for GEMMs in the compute precision",
             quant_scheme_name, parse_quant_scheme),
  };
  return f;
}

}  // namespace

int cmd_quantize(int argc, char** argv) {
  QuantizeOptions o;
  std::vector<FieldGroup> groups = {{"quantize", &quantize_fields(), &o}};
  const auto a = parse_command(
      argc, argv, 2, groups, "dsv3 quantize --model M --out Q [--scheme w8a8|w8a16]",
      "Quantises the linear layers (attention, FFN, every expert) to int8, per output channel "
      "and\nsymmetric; the embedding, head, routers and norms stay fp32. eval and sample load "
      "the file\nlike any model (--precision picks the activations' dtype).");
  if (!a) return 0;
  DSV3_CHECK(!o.model.empty() && !o.out.empty(), "--model and --out are required");
  DSV3_CHECK(o.scheme != QuantScheme::None, "--scheme must be w8a8 or w8a16");
  LoadedModel lm = load_model_any(o.model);
  DSV3_CHECK(lm.int8.scheme == QuantScheme::None, o.model, " is already an int8 model (",
             quant_scheme_name(lm.int8.scheme), "): quantise its fp32 checkpoint");
  const QuantizedParams q = quantize_params(lm.config, o.scheme, lm.params);
  save_int8_model(o.out, lm.config, q, lm.source);
  copy_tokenizer(o.model, o.out);
  const QuantLayout l = quant_layout(lm.config);
  size_t int8_params = 0;
  for (const QuantUnit& u : l.units) int8_params += size_t(u.rows) * u.cols;
  std::printf("quantised %s -> %s (%s): %zu linear layers, %.2fM parameters int8 + %.2fM fp32; "
              "%.1f MiB (fp32: %.1f MiB)\n",
              lm.source.c_str(), o.out.c_str(), quant_scheme_name(o.scheme), l.units.size(),
              int8_params / 1e6, (lm.params.size() - int8_params) / 1e6,
              mib(double(std::filesystem::file_size(o.out))), mib(double(lm.params.size()) * 4));
  return 0;
}

namespace {
struct PruneOptions {
  std::string model, out, data, text;
  int batch = 8, seq_len = 256, max_batches = 8;
};
const std::vector<FieldSpec>& prune_command_fields() {
  using P = PruneOptions;
  static const std::vector<FieldSpec> f = {
      field("model", &P::model, "checkpoint file, run directory or HF directory"),
      field("out", &P::out, "pruned checkpoint to write"),
      field("data", &P::data, "calibration data for expert loads: an llm.c token file"),
      field("text", &P::text, "or a text file, encoded with the model's tokenizer (default for "
                              "byte-level models: the built-in corpus)"),
      field("batch", &P::batch, "calibration sequences per batch", in_range(1, 1 << 20)),
      field("seq_len", &P::seq_len, "calibration tokens per sequence", in_range(1, 1 << 24)),
      field("max_batches", &P::max_batches, "calibration batches (0 = all the data)",
            at_least(0)),
  };
  return f;
}
}  // namespace

int cmd_prune(int argc, char** argv) {
  PruneOptions o;
  PruneConfig pc;
  std::vector<FieldGroup> groups = {{"prune", &prune_command_fields(), &o},
                                    {"pruning", &prune_fields(), &pc}};
  const auto a = parse_command(
      argc, argv, 2, groups,
      "dsv3 prune --model M --out P [--ffn_keep 0.7] [--experts_keep 0.75] [--data F | --text F]",
      "Structured pruning: drops the FFN channels with the smallest L1 norm and, per MoE layer, "
      "the\nexperts with the least load (measured on the calibration data) x L1 norm, with their "
      "router\nrows; writes an ordinary checkpoint with the smaller config. Fine-tune it with "
      "dsv3 train\n--init_from P.");
  if (!a) return 0;
  validate(pc);
  DSV3_CHECK(!o.model.empty() && !o.out.empty(), "--model and --out are required");
  DSV3_CHECK(o.batch >= 1 && o.seq_len >= 2 && o.max_batches >= 0, "batch must be >= 1, seq_len >= 2");
  DSV3_CHECK(o.data.empty() || o.text.empty(), "--data or --text, not both");
  LoadedModel lm = load_model_any(o.model);
  DSV3_CHECK(lm.int8.scheme == QuantScheme::None, o.model, " is an int8 model: prune the fp32 "
             "checkpoint, then quantise the result");
  const ModelConfig& c = lm.config;
  std::vector<std::vector<int64_t>> loads;
  const bool drop_experts = c.experts > 0 && pc.experts_keep < 1;
  if (drop_experts) {
    std::vector<int32_t> tokens;
    std::string what;
    if (!o.data.empty()) {
      tokens = read_token_file(o.data);
      what = o.data;
    } else {
      const std::string tok = find_tokenizer_for_model(o.model);
      DSV3_CHECK(!o.text.empty() || tok.empty(), "the model has a tokenizer (", tok, "): pass "
                 "calibration data in its language with --text FILE or --data FILE");
      const TextCodec codec = tok.empty() ? TextCodec() : TextCodec(tok);
      tokens = codec.encode(o.text.empty() ? builtin_corpus_text(7, size_t(1) << 20) : read_file(o.text));
      what = o.text.empty() ? "the built-in corpus" : o.text;
    }
    ModelWeights w(c, DType::F32);
    w.load(lm.params);
    loads = measure_expert_loads(w, tokens, {o.batch, std::min(o.seq_len, c.max_seq)}, o.max_batches);
    std::fprintf(stderr, "measured expert loads on %s\n", what.c_str());
  } else {
    DSV3_CHECK(o.data.empty() && o.text.empty(), "--data/--text measure expert loads: they need "
               "--experts_keep < 1 and a model with routed experts");
  }
  const PrunedModel pm = prune_model(c, lm.params, loads, pc);
  nlohmann::json train = {{"pruned_from", lm.source}, {"pruning", pm.report}};
  save_checkpoint(o.out, pm.config, train, pm.params.data(), nullptr, nullptr, pm.params.size());
  copy_tokenizer(o.model, o.out);
  const auto& r = pm.report;
  if (a->json) {
    std::printf("%s\n", r.dump().c_str());
    return 0;
  }
  std::printf("pruned %s -> %s: %.3fM -> %.3fM parameters (%.1f%%); dense FFN %d -> %d, expert "
              "FFN %d -> %d, experts %d -> %d per MoE layer\n",
              lm.source.c_str(), o.out.c_str(), r["params"][0].get<double>() / 1e6,
              r["params"][1].get<double>() / 1e6,
              100.0 * r["params"][1].get<double>() / r["params"][0].get<double>(),
              c.dense_inter, pm.config.dense_inter, c.moe_inter, pm.config.moe_inter, c.experts,
              pm.config.experts);
  return 0;
}

}  // namespace dsv3::cli
