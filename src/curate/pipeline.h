// `dsv3 curate`: the whole pipeline (D1-D7, P1). Four phases:
//
//  A. per part (ranks split the parts, threads split each batch of documents): read ->
//     per-document stages in the configured order -> kept documents to OUT/work spool,
//     rejects with their reason, and the part's keys (exact hash, MinHash signature, term
//     document frequencies) plus its counts in the keys file. Streaming: memory is bounded by
//     the batch, not the input. A finished part is never redone by a resumed run.
//  B. global dedup: every rank gathers every part's keys (dist::all_gather_bytes) and computes
//     the same exact and near-duplicate clusters; the first document of a cluster survives.
//  C. relevance and diversity (when on): corpus IDF from the summed document frequencies,
//     TF-IDF cosine to the target centroid per document, then k-means selection.
//  D. per part: OUT/data/part-NNNNN.jsonl.zst (curated) and OUT/rejects/part-NNNNN.jsonl.zst;
//     then OUT/summary.json and OUT/report.md from rank 0.
//
// Output files depend only on the inputs and settings, not on the number of ranks or threads.
// Every rank must call run_curate (it is collective under MPI).
#pragma once
#include <string>

#include <nlohmann/json.hpp>

#include "curate/config.h"

namespace dsv3::curate {

struct CurateOutcome {
  nlohmann::json summary;  // what OUT/summary.json holds
  std::string report;      // what OUT/report.md holds
};

// load_perplexity: how the perplexity stage gets its model (eval/perplexity.h for dsv3 models).
CurateOutcome run_curate(const CurateConfig& cfg, const PerplexityLoader& load_perplexity = {});

// Documents of a curated or rejected output file (any compression), in order.
std::vector<nlohmann::json> read_jsonl(const std::string& path);

}  // namespace dsv3::curate
