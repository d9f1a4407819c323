// Synthetic data (D11, "controllable text generation"), the model-free half: seed prompts,
// the controls (topic, style, length) rendered through a template into one prompt per
// generation, and the check of generations against the seeds (exact and MinHash near-duplicates,
// curate/dedup.h). `dsv3 synth` (cli/cmd_synth.cpp) generates with the decode engine between
// these and then runs the curation pipeline (quality filters, dedup among the generations,
// perplexity) over what is left. docs/curation.md "Synthetic data" has the details.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "core/fields.h"
#include "curate/dedup.h"

namespace dsv3::curate {

struct SynthConfig {
  std::string model;
  std::string seeds;          // JSONL: {"prompt" | "text", optional "topic", "style", "length"}
  std::string out;            // directory
  int per_seed = 4;           // generations per seed
  std::string topics;         // comma-separated; cycled over a seed's generations
  std::string styles;         // comma-separated
  std::string lengths;        // comma-separated names of length_tokens' entries
  std::string length_tokens = "short=64,medium=192,long=512";  // token budget per length name
  int max_tokens = 256;       // budget without a length control
  // {prompt} {topic} {style} {length}; "" = "Topic: ...\nStyle: ...\nLength: ...\n\n{prompt}"
  // with a line for each control that is set
  std::string template_text;
  std::string stop;           // stop string ("" = EOS or the budget only)
  int batch = 32;             // sequences decoded together
  std::string curate_config;  // `key = value` settings for the curation pass (dsv3 curate's)
  double ppl_max = 0;         // perplexity filter: drop above (0 = score only)
  double ppl_min = 0;         // drop below (degenerate repetition; 0 = off)
  std::string ppl_model;      // "" = --model
  std::string tokenizer;      // "" = the one beside the model
};
const std::vector<FieldSpec>& synth_fields();
void validate(const SynthConfig& c);

struct SynthSeed {
  int64_t line = 0;
  std::string prompt, topic, style, length;
};
// Malformed lines are counted in *bad (file:line and why in *first_bad); no valid seed is an error.
std::vector<SynthSeed> read_synth_seeds(const std::string& path, int64_t* bad, std::string* first_bad);

struct SynthJob {
  size_t seed = 0;  // index into the seeds
  int k = 0;        // the generation's number for its seed
  std::string prompt, topic, style, length;
  int max_tokens = 0;
};
// per_seed jobs per seed; the k-th of a seed takes topic k % T, style (k / T) % S, length
// (k / (T S)) % L of the lists (a seed's own field wins), so the grid is covered in order.
std::vector<SynthJob> plan_synth(const SynthConfig& c, const std::vector<SynthSeed>& seeds);
// Substitutes {prompt} {topic} {style} {length}; any other {name} is an error.
std::string render_template(const std::string& tpl, const SynthJob& j);

// For each text in `gens`: the index of a seed it duplicates (the same text exactly, or a
// MinHash near-duplicate at cfg.threshold), else -1.
std::vector<int> duplicates_of_seeds(const std::vector<std::string>& seeds,
                                     const std::vector<std::string>& gens, const MinHashConfig& cfg);

}  // namespace dsv3::curate
