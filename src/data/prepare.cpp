#include "data/prepare.h"

#include <omp.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>

#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "data/reader.h"
#include "data/shard.h"
#include "tokenizer/bpe.h"
#include "tokenizer/formats.h"

namespace fs = std::filesystem;

namespace dsv3 {

PrepareSource parse_prepare_source(const std::string& spec) {
  const size_t eq = spec.find('=');
  DSV3_CHECK(eq != std::string::npos && eq > 0 && eq + 1 < spec.size(), "source '", spec,
             "' should be DOMAIN=PATH[,PATH...]");
  PrepareSource s;
  s.domain = spec.substr(0, eq);
  for (char ch : s.domain)
    DSV3_CHECK(std::isalnum(static_cast<unsigned char>(ch)) || ch == '_' || ch == '-', "domain '",
               s.domain, "' may use letters, digits, '_' and '-' only");
  size_t b = eq + 1;
  while (b <= spec.size()) {
    size_t e = spec.find(',', b);
    if (e == std::string::npos) e = spec.size();
    if (e > b) s.inputs.push_back(spec.substr(b, e - b));
    b = e + 1;
  }
  DSV3_CHECK(!s.inputs.empty(), "source '", spec, "' names no input");
  return s;
}

namespace {

// One split of one domain: shard parts written as they fill.
struct SplitWriter {
  std::string dir, split;
  ShardInfo info;
  int64_t part_limit = 0;
  std::unique_ptr<ShardWriter> w;
  std::vector<std::string> files;
  uint64_t docs = 0, tokens = 0, text_bytes = 0;

  void add(const std::vector<int32_t>& ids, uint64_t bytes) {
    if (!w) {
      char name[32];
      std::snprintf(name, sizeof name, "%s_%03zu.shard", split.c_str(), files.size());
      files.push_back(name);
      w = std::make_unique<ShardWriter>((fs::path(dir) / name).string(), info);
    }
    w->add_document(ids, bytes);
    docs++, tokens += ids.size(), text_bytes += bytes;
    if (int64_t(w->n_tokens()) >= part_limit) finish();
  }
  void finish() {
    if (w) w->finish();
    w.reset();
  }
};

// FNV-1a: a stable hash of the domain name, so a document's split does not depend on the order
// of --source flags.
uint64_t name_hash(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace

nlohmann::json run_prepare(const PrepareConfig& c) {
  DSV3_CHECK(!c.sources.empty(), "no --source given (DOMAIN=PATH[,PATH...])");
  DSV3_CHECK(!c.out.empty(), "--out is required");
  DSV3_CHECK(c.val_frac >= 0 && c.val_frac < 1, "val_frac must be in [0, 1)");
  DSV3_CHECK(c.shard_tokens > 0, "shard_tokens must be positive");
  const Encoder enc(load_tokenizer_any(c.tokenizer), c.tokenizer);
  const Tokenizer& tok = enc.tokenizer();
  DSV3_CHECK(tok.roles.eos >= 0, "tokenizer ", c.tokenizer,
             " has no end-of-text token; documents need an EOS separator");
  ReaderConfig rc;
  rc.text_key = c.text_key;
  rc.text_unit = parse_text_unit(c.text_unit);
  fs::create_directories(c.out);
  const int threads = c.threads > 0 ? c.threads : omp_get_max_threads();

  // Inputs and their total size, for the progress line.
  std::vector<std::vector<std::string>> files(c.sources.size());
  uint64_t total_bytes = 0;
  for (size_t d = 0; d < c.sources.size(); d++) {
    for (size_t e = 0; e < d; e++)
      DSV3_CHECK(c.sources[e].domain != c.sources[d].domain, "domain '", c.sources[d].domain,
                 "' is given twice; list all its inputs in one --source");
    files[d] = expand_inputs(c.sources[d].inputs);
    for (const auto& f : files[d]) total_bytes += fs::file_size(f);
  }

  nlohmann::json manifest = {{"format", "dsv3-prepared"}, {"version", 1},
                             {"tokenizer", "tokenizer.dsv3tok"}, {"vocab", enc.vocab_size()},
                             {"eos", tok.roles.eos}, {"domains", nlohmann::json::array()}};
  save_dsv3_tokenizer((fs::path(c.out) / "tokenizer.dsv3tok").string(), tok);
  const double t0 = now_seconds();
  uint64_t bytes_done = 0, docs_done = 0;
  const bool tty = c.progress && isatty(STDERR_FILENO);
  double last_print = 0;
  auto progress = [&](bool final) {
    const double now = now_seconds(), dt = std::max(now - t0, 1e-9);
    if (!c.progress || (!final && now - last_print < (tty ? 0.25 : 5.0))) return;
    last_print = now;
    const double rate = double(bytes_done) / dt;
    const double eta = rate > 0 ? double(total_bytes - std::min(bytes_done, total_bytes)) / rate : 0;
    std::fprintf(stderr, "%sprepare: %.1f / %.1f MB | %.2f MB/s | %.0f docs/s | ETA %s%s",
                 tty ? "\r\033[K" : "", bytes_done / 1e6, total_bytes / 1e6, rate / 1e6,
                 docs_done / dt, format_duration(eta).c_str(), tty && !final ? "" : "\n");
    std::fflush(stderr);
  };

  for (size_t d = 0; d < c.sources.size(); d++) {
    const std::string& domain = c.sources[d].domain;
    const std::string dir = (fs::path(c.out) / domain).string();
    fs::create_directories(dir);
    ShardInfo info;
    info.domain = domain;
    info.vocab_size = enc.vocab_size();
    info.eos = tok.roles.eos;
    info.tokenizer = c.tokenizer;
    SplitWriter train, val;
    for (SplitWriter* s : {&train, &val}) {
      s->dir = dir;
      s->split = s == &train ? "train" : "val";
      s->info = info;
      s->info.split = s->split;
      s->part_limit = c.shard_tokens;
    }
    std::map<std::string, uint64_t> bad;
    std::vector<std::string> bad_examples;
    for (size_t fi = 0; fi < files[d].size(); fi++) {
      const std::string& path = files[d][fi];
      RecordReader reader(path, rc);
      uint64_t index = 0;
      bool more = true;
      while (more) {
        // a batch of records, parsed and tokenised in parallel, written in order
        std::vector<RawRecord> raws;
        size_t batch_bytes = 0;
        RawRecord r;
        while (raws.size() < 4096 && batch_bytes < (16u << 20) && (more = reader.next(r))) {
          batch_bytes += r.bytes;
          raws.push_back(std::move(r));
        }
        const size_t n = raws.size();
        std::vector<Record> docs(n);
        std::vector<uint32_t> problems(n);
        std::vector<std::string> detail(n);
        std::vector<std::vector<int32_t>> ids(n);
#pragma omp parallel for schedule(dynamic, 8) num_threads(threads)
        for (size_t i = 0; i < n; i++) {
          if (raws[i].too_large) {
            problems[i] = bad_input_bit(BadInput::TooLarge);
            continue;
          }
          problems[i] = parse_record(raws[i], reader.format(), rc, path, docs[i], detail[i]);
          if (!docs[i].text.empty()) enc.encode_ordinary(docs[i].text, ids[i]);
        }
        for (size_t i = 0; i < n; i++) {
          const uint64_t k = index++;
          bytes_done += raws[i].bytes;
          for (int b = 1; b < int(BadInput::Count_); b++) {
            const auto kind = BadInput(b);
            if (!(problems[i] & bad_input_bit(kind))) continue;
            const bool fatal = !bad_input_is_repairable(kind);
            if (kind == BadInput::Empty) continue;  // blank paragraphs are not news
            bad[bad_input_name(kind)]++;
            const std::string where = path + ":" + std::to_string(raws[i].line) + ": " +
                                      bad_input_name(kind) +
                                      (detail[i].empty() ? "" : " (" + detail[i] + ")");
            DSV3_CHECK(!(c.strict && fatal), where, " (--strict makes bad records fatal)");
            if (bad_examples.size() < 5) bad_examples.push_back(where);
          }
          if (ids[i].empty()) continue;
          docs_done++;
          // split by a hash of (seed, domain, file number, record number)
          const bool is_val = double(mix64(c.seed ^ mix64(name_hash(domain) ^
                                                          (uint64_t(fi) << 40) ^ k)) >> 11) *
                                  (1.0 / 9007199254740992.0) < c.val_frac;
          (is_val ? val : train).add(ids[i], docs[i].text.size());
        }
        progress(false);
      }
    }
    train.finish();
    val.finish();
    DSV3_CHECK(train.docs > 0, "domain '", domain, "' produced no training documents");
    if (c.val_frac > 0 && val.docs == 0)
      std::fprintf(stderr, "\nwarning: domain '%s' has no validation documents (raise --val_frac "
                   "or use --text_unit paragraph)\n", domain.c_str());
    for (const auto& e : bad_examples) std::fprintf(stderr, "\nskipped %s", e.c_str());
    if (!bad_examples.empty()) std::fprintf(stderr, "\n");
    nlohmann::json dj = {{"name", domain}, {"inputs", files[d]}, {"train", nlohmann::json::array()},
                         {"val", nlohmann::json::array()},
                         {"docs", {{"train", train.docs}, {"val", val.docs}}},
                         {"tokens", {{"train", train.tokens}, {"val", val.tokens}}},
                         {"text_bytes", {{"train", train.text_bytes}, {"val", val.text_bytes}}},
                         {"bad_records", bad}};
    for (const auto& f : train.files) dj["train"].push_back(domain + "/" + f);
    for (const auto& f : val.files) dj["val"].push_back(domain + "/" + f);
    manifest["domains"].push_back(dj);
  }
  progress(true);
  const std::string path = (fs::path(c.out) / "manifest.json").string();
  const std::string text = manifest.dump(1) + "\n";
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
  return manifest;
}

nlohmann::json read_manifest(const std::string& dir_or_file, std::string* dir_out) {
  fs::path p = dir_or_file;
  if (fs::is_directory(p)) p /= "manifest.json";
  DSV3_CHECK(fs::exists(p), "no prepared data at ", dir_or_file,
             " (expected a directory written by `dsv3 prepare`, with manifest.json)");
  nlohmann::json m;
  try {
    m = nlohmann::json::parse(read_file(p.string()));
  } catch (const nlohmann::json::exception&) {
    const std::string kind = sniff_file_kind(p.string());
    fail(p.string(), " is not a `dsv3 prepare` manifest",
         kind.empty() ? "" : " (it looks like " + kind + ")",
         "; pass the directory dsv3 prepare wrote");
  }
  DSV3_CHECK(m.is_object() && m.contains("format") && m["format"] == "dsv3-prepared", p.string(),
             ": not a dsv3 prepare manifest");
  DSV3_CHECK(m.contains("version") && m["version"] == 1, p.string(),
             ": unsupported manifest version");
  DSV3_CHECK(m.contains("domains") && m["domains"].is_array() && !m["domains"].empty(),
             p.string(), ": lists no domains");
  const fs::path dir = p.parent_path();
  for (const auto& d : m["domains"])
    for (const char* split : {"train", "val"}) {
      DSV3_CHECK(d.is_object() && d.contains(split) && d[split].is_array(), p.string(),
                 ": a domain has no '", split, "' shard list");
      for (const auto& f : d[split]) {
        DSV3_CHECK(f.is_string(), p.string(), ": shard names must be strings");
        DSV3_CHECK(fs::exists(dir / f.get<std::string>()), p.string(), ": shard ",
                   f.get<std::string>(), " is missing");
      }
    }
  if (dir_out) *dir_out = dir.string();
  return m;
}

}  // namespace dsv3
