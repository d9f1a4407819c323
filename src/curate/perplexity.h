// Perplexity filter settings (D4): documents are scored with a small dsv3 model (as CCNet does
// with KenLM and the Llama/DCLM pipelines do with small LMs): perplexity = exp(mean next-token
// loss) over the document's first max_tokens tokens. Curation does not depend on the model code:
// the caller of run_curate hands it a loader (eval/perplexity.h implements one).
#pragma once
#include <functional>
#include <string>
#include <string_view>

namespace dsv3::curate {

struct PerplexityConfig {
  std::string model;      // checkpoint file, run directory or HF directory
  double max = 0;         // drop documents above this perplexity (0 = score only)
  double min = 0;         // drop documents below it (machine-generated repetition; 0 = off)
  int max_tokens = 512;   // tokens scored per document
};

struct PerplexityModel {
  std::function<double(std::string_view)> score;  // thread-safe; NaN for texts under two tokens
  std::string source;                             // what scores ("checkpoint ..., tokenizer ...")
};
using PerplexityLoader = std::function<PerplexityModel(const PerplexityConfig&)>;

}  // namespace dsv3::curate
