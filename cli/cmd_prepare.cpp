// dsv3 prepare: text sources -> token shards with a per-domain train/validation split.
#include <cstdio>

#include "commands.h"
#include "core/check.h"
#include "data/prepare.h"
#include "flags.h"

namespace dsv3::cli {

namespace {
struct PrepareOptions {
  std::vector<std::string> sources;
  std::string tokenizer, out, text_key = "text", text_unit = "paragraph";
  double val_frac = 0.02;
  int threads = 0;
  bool strict = false;
  long long shard_tokens = 100'000'000, seed = 1;
};

const std::vector<FieldSpec>& prepare_fields() {
  using P = PrepareOptions;
  static const std::vector<FieldSpec> f = {
      // repeatable: each --source adds one domain
      {"source", "DOMAIN=PATH[,PATH...]",
       "a domain and its inputs (files, dirs, globs; .txt/.jsonl, .gz/.zst); repeat per domain",
       [](const void* o) {
         std::string s;
         for (const auto& x : static_cast<const P*>(o)->sources) s += (s.empty() ? "" : " ") + x;
         return s;
       },
       [](void* o, const std::string& v) { static_cast<P*>(o)->sources.push_back(v); },
       Range{}},
      field("tokenizer", &P::tokenizer, "tokenizer file or directory (any supported format)"),
      field("out", &P::out, "output directory"),
      field("val_frac", &P::val_frac, "share of each domain's documents held out for validation", in_range(0, 1)),
      field("text_key", &P::text_key, "JSONL field holding the text"),
      field("text_unit", &P::text_unit, "documents of .txt inputs: file, paragraph or line"),
      field("threads", &P::threads, "tokenizer threads (0 = all)", in_range(0, 65536)),
      field("strict", &P::strict, "bad records (broken JSON, missing text) are fatal"),
      field("shard_tokens", &P::shard_tokens, "tokens per shard part", in_range(1, 1ll << 40)),
      field("seed", &P::seed, "seed of the train/validation split", at_least(0)),
  };
  return f;
}
}  // namespace

int cmd_prepare(int argc, char** argv) {
  PrepareOptions o;
  std::vector<FieldGroup> groups = {{"prepare", &prepare_fields(), &o}};
  const auto a = parse_command(
      argc, argv, 2, groups,
      "dsv3 prepare --tokenizer T --source DOMAIN=PATHS [--source ...] --out DIR",
      "Tokenises text into shards with a document index and a train/validation split per\n"
      "domain; writes DIR/manifest.json for `dsv3 train --data DIR`.");
  if (!a) return 0;
  DSV3_CHECK(!o.tokenizer.empty(), "--tokenizer is required (train one with `dsv3 tokenizer train`)");
  PrepareConfig c;
  c.tokenizer = o.tokenizer;
  c.out = o.out;
  for (const auto& s : o.sources) c.sources.push_back(parse_prepare_source(s));
  c.val_frac = o.val_frac;
  c.text_key = o.text_key;
  c.text_unit = o.text_unit;
  c.threads = o.threads;
  c.strict = o.strict;
  c.shard_tokens = o.shard_tokens;
  c.seed = uint64_t(o.seed);
  const nlohmann::json m = run_prepare(c);
  for (const auto& d : m["domains"])
    std::printf("%-12s train %8llu docs %11llu tokens | val %6llu docs %9llu tokens\n",
                d["name"].get<std::string>().c_str(), d["docs"]["train"].get<unsigned long long>(),
                d["tokens"]["train"].get<unsigned long long>(),
                d["docs"]["val"].get<unsigned long long>(),
                d["tokens"]["val"].get<unsigned long long>());
  std::printf("wrote %s/manifest.json\n", o.out.c_str());
  return 0;
}

}  // namespace dsv3::cli
