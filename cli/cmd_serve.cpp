// dsv3 serve: the OpenAI-compatible server (src/infer/server.h) over a model loaded for
// inference.
#include <cstdio>
#include <memory>

#include "checkpoint/checkpoint.h"
#include "checkpoint/quantized.h"
#include "commands.h"
#include "core/check.h"
#include "flags.h"
#include "infer/server.h"
#include "optim/precision.h"
#include "tokenizer/text_codec.h"

namespace dsv3::cli {

namespace {
struct ServeOptions {
  std::string model, tokenizer;
};
const std::vector<FieldSpec>& serve_fields() {
  static const std::vector<FieldSpec> f = {
      field("model", &ServeOptions::model, "checkpoint file, run directory or HF directory"),
      field("tokenizer", &ServeOptions::tokenizer,
            "tokenizer (default: the one beside the model, else byte-level ids)"),
  };
  return f;
}
}  // namespace

int cmd_serve(int argc, char** argv) {
  ServeOptions o;
  ServerConfig sc;
  PrecisionConfig pc;
  std::vector<FieldGroup> groups = {{"serve", &serve_fields(), &o},
                                    {"server", &server_fields(), &sc},
                                    {"precision", &precision_fields(), &pc}};
  const auto a = parse_command(
      argc, argv, 2, groups, "dsv3 serve --model M [--port 8000] [--key value ...]",
      "OpenAI-compatible HTTP server with continuous batching: POST /v1/completions, "
      "/v1/chat/completions (stream: true for server-sent events), GET /v1/models, /health, "
      "/metrics. Binds 127.0.0.1 unless --host says otherwise; SIGTERM drains and exits 0.");
  if (!a) return 0;
  for (const auto& k : a->set_keys)
    DSV3_CHECK(k != "loss_scale" && k != "loss_scale_window", "--", k,
               " is a training setting; serve only takes --precision");
  DSV3_CHECK(!o.model.empty(), "--model is required (a checkpoint, run directory, HF directory "
             "or int8 model)");
  validate(sc);
  const std::unique_ptr<ModelWeights> w = make_model_weights(
      load_model_any(o.model, /*keep_int8=*/true), compute_dtype(pc.precision));
  const std::string tok = o.tokenizer.empty() ? find_tokenizer_for_model(o.model) : o.tokenizer;
  const TextCodec codec = tok.empty() ? TextCodec() : TextCodec(tok);
  std::fprintf(stderr, "dsv3 serve: %s (%s%s), text: %s\n", o.model.c_str(),
               precision_name(pc.precision),
               w->quant() == QuantScheme::None ? "" : cat(", int8 ", quant_scheme_name(w->quant())).c_str(),
               codec.describe().c_str());
  serve(*w, codec, sc);
  return 0;
}

}  // namespace dsv3::cli
