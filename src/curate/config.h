// Settings of `dsv3 curate` (O5): one struct made of each stage's own config, and one FieldSpec
// table over it that gives the flags, the `key = value` config file and --help.
//
// Stages. Per-document stages run in the order listed; global stages need every document and
// always run after them, in this order: exact_dedup, minhash_dedup, tfidf, diversity.
//   normalize gopher_quality gopher_repetition c4 fineweb classifier perplexity pii  (local)
//   exact_dedup minhash_dedup tfidf diversity                                       (global)
// stages = auto (the default) means every stage that needs no model or target:
//   normalize, gopher_quality, gopher_repetition, c4, fineweb, pii, exact_dedup, minhash_dedup
// plus classifier / perplexity / tfidf / diversity when their model, target or size is given.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/fields.h"
#include "curate/dedup.h"
#include "curate/filters.h"
#include "curate/normalize.h"
#include "curate/perplexity.h"
#include "curate/pii.h"
#include "curate/writer.h"
#include "data/reader.h"

namespace dsv3::curate {

enum class Stage : uint8_t {
  Normalize, GopherQuality, GopherRepetition, C4, FineWeb, Classifier, Perplexity, Pii,
  ExactDedup, MinhashDedup, Tfidf, Diversity, Count_
};
const char* stage_name(Stage s);
Stage parse_stage(const std::string& s);  // throws naming the valid stages
bool stage_is_local(Stage s);

struct CurateConfig {
  std::string input;   // comma-separated files, directories, globs
  std::string output;  // directory
  std::string stages = "auto";
  std::string skip;    // comma-separated stages to leave out of `stages`
  bool strict = false;  // any bad input record is fatal (file:line in the error)
  bool skip_unreadable = false;  // an input that cannot be read is counted, not fatal
  bool resume = true;   // reuse inputs finished by an earlier run with the same settings
  bool keep_work = false;  // keep OUT/work (per-input state) after a successful run
  int threads = 0;         // 0: OMP_NUM_THREADS / all cores
  Compression compression = Compression::Zstd;
  int compression_level = 3;
  int examples_per_rule = 5;
  int part_mb = 256;  // inputs are packed into parts of about this size (0: one per file)

  ReaderConfig reader;
  NormalizeConfig normalize;
  GopherQualityConfig gopher;
  GopherRepetitionConfig repetition;
  C4Config c4;
  FineWebConfig fineweb;
  PiiConfig pii;
  MinHashConfig minhash;

  std::string classifier_model;
  std::string classifier_label = "hq";
  double classifier_threshold = 0.5;  // keep when P(label) >= threshold
  PerplexityConfig perplexity;

  std::string tfidf_target;  // files/dirs/globs of target-domain text
  double tfidf_min_score = 0;  // drop documents below this cosine (0 = score only)
  int tfidf_log2_features = 20;

  long long select_docs = 0;   // diversity: keep this many documents (0 = stage off)
  int diversity_clusters = 0;  // k-means clusters (0 = sqrt(select_docs), at least 2)
  int diversity_dim = 64;      // dimension of the hashed document vectors
  int diversity_iterations = 20;
  long long seed = 1;          // k-means and MinHash parameters
};

const std::vector<FieldSpec>& curate_fields();

// The stage list the settings ask for, validated (a listed stage's model/target must be set).
std::vector<Stage> resolve_stages(const CurateConfig& c);
void validate(const CurateConfig& c);

// The settings that decide what a finished input's saved state contains: the reader, the
// per-document stages and their configs, the dedup keys' shape. Global settings (bands, rows,
// thresholds, select_docs, ...) are not in it, so changing them re-uses the finished inputs.
nlohmann::json part_fingerprint(const CurateConfig& c);

}  // namespace dsv3::curate
