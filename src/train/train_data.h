// Where a run's batches and validation sets come from (D8, D10, E1): the built-in corpus
// (byte-level), llm.c token files, or a `dsv3 prepare` directory (shards, domains, mixing, FIM).
// The trainer sees one interface; the position goes into checkpoints through state().
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/loader.h"
#include "data/token_stream.h"
#include "model/config.h"
#include "train/train_config.h"

namespace dsv3 {

struct ValSet {
  std::string domain;
  std::vector<int32_t> tokens;   // documents joined by EOS
  double bytes_per_token = 0;    // text bytes / tokens of the set (0 = unknown: no bits/byte)
};

class TrainData {
 public:
  TrainData(const TrainConfig& tc, const ModelConfig& c);
  ~TrainData();

  const int32_t* next();                        // (B, T+1)
  void set_step(int64_t step, int64_t total);   // mixing schedules
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

  const std::vector<ValSet>& val_sets() const { return val_; }
  // Feeds per-domain validation losses (val_sets() order) to loss-adaptive mixing; returns the
  // mixture's record (weights in force) or null when there is no mixing.
  nlohmann::json observe_validation(const std::vector<double>& losses);
  std::string describe() const { return desc_; }
  // The tokenizer of prepared data ("" for byte-level / llm.c data).
  const std::string& tokenizer_path() const { return tokenizer_; }

 private:
  std::unique_ptr<TokenStream> stream_;
  std::unique_ptr<Loader> loader_;
  std::vector<ValSet> val_;
  std::string desc_, tokenizer_;
};

// Model vocabulary that fits a prepared directory's tokenizer (rounded up to a multiple of 64).
int vocab_for_prepared_data(const std::string& data_dir);

}  // namespace dsv3
