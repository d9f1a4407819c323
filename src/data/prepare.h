// `dsv3 prepare` (D1, D10): text sources, each named by a domain, tokenised into shards with a
// per-domain train/validation split, plus a manifest the trainer reads:
//   OUT/manifest.json, OUT/tokenizer.dsv3tok, OUT/<domain>/{train,val}_NNN.shard
// Inputs are files, directories or globs of .txt / .jsonl, optionally .gz / .zst; llm.c .bin
// shards need no preparing (the trainer reads them directly).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3 {

struct PrepareSource {
  std::string domain;
  std::vector<std::string> inputs;  // files, directories, globs
};

struct PrepareConfig {
  std::string tokenizer;          // any format load_tokenizer_any reads
  std::string out;
  std::vector<PrepareSource> sources;
  double val_frac = 0.02;         // share of documents in the validation split
  std::string text_key = "text";  // JSONL field
  std::string text_unit = "paragraph";  // .txt documents: file | paragraph | line
  int threads = 0;                // 0 = all
  bool strict = false;            // a bad record (broken JSON, missing text) is fatal
  int64_t shard_tokens = 100'000'000;  // start a new shard part past this many tokens
  uint64_t seed = 1;              // of the train/validation split
  bool progress = true;
};

// "fiction=../shared/data/text/fiction,more/*.txt" -> {fiction, [..., ...]}
PrepareSource parse_prepare_source(const std::string& spec);

// Runs the preparation; returns the manifest it wrote.
nlohmann::json run_prepare(const PrepareConfig& c);

// Reads OUT/manifest.json (or a manifest path) and checks its shards exist.
nlohmann::json read_manifest(const std::string& dir_or_file, std::string* dir = nullptr);

}  // namespace dsv3
