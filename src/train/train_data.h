// Where a run's batches and validation sets come from (D8, D10, E1): the built-in corpus
// (byte-level), llm.c token files, or a `dsv3 prepare` directory (shards, domains, mixing, FIM).
// The trainer sees one interface; the position goes into checkpoints through state().
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "data/loader.h"
#include "data/token_stream.h"
#include "model/arena.h"
#include "model/config.h"

namespace dsv3 {

// Where the data comes from and how it is mixed and cut (D8, D10, T10).
struct DataConfig {
  std::string data;        // a `dsv3 prepare` directory: shards, domains, tokenizer
  std::string train_data;  // or llm.c token files (a file, glob, directory or list); neither:
                           // the built-in corpus
  std::string val_data;    // llm.c token files for validation (with train_data)
  bool shuffle = true;     // train_data / built-in corpus: random windows (false: in order)
  std::string mix;         // domain weights "a:0.7,b:0.3" (default: each domain's token share)
  std::string mix_end;     // weights at the end of the run (moved linearly from `mix`)
  double mix_adaptive = 1.0;  // loss-adaptive factor (1 = off; the seed: 1.15)
  int mix_window = 3;         // K evaluations of rising validation loss before a raise
  double fim_rate = 0.1;      // fill-in-the-middle share of documents (DeepSeek-V3: 0.1)
  FimOrder fim_order = FimOrder::PSM;
  int window_overlap = 0;     // tokens shared by consecutive windows of long documents
  // Sequence-length warmup (T10): over the first seq_warmup_steps steps each row of seq_len+1
  // tokens is cut into k rows of seq_len/k (+1) tokens, k a power of two, so the context grows
  // from about seq_warmup_start to seq_len while tokens per step stay the same.
  long long seq_warmup_steps = 0;
  int seq_warmup_start = 64;
  // Rows per loader row at `step` for sequences of seq_len (1 = full length).
  int seq_split(long long step, int seq_len) const;
};
const std::vector<FieldSpec>& data_fields();
void validate(const DataConfig& d, int seq_len);

struct ValSet {
  std::string domain;
  std::vector<int32_t> tokens;   // documents joined by EOS
  double bytes_per_token = 0;    // text bytes / tokens of the set (0 = unknown: no bits/byte)
};

class TrainData {
 public:
  // Batches of d (B rows of T+1 tokens); seed: the run's (data order, built-in corpus).
  TrainData(const DataConfig& dc, Dims d, uint64_t seed, const ModelConfig& c);
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
