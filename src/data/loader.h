// The training data loader (D10) over token shards of several domains mixed by weight (D8).
//
// Per domain a stream of rows of T+1 tokens (T = seq_len):
//   epoch e:   the domain's documents (all its shards, in the given order, concatenated) are
//              shuffled deterministically from (seed, domain name, e); rank r takes the shuffled
//              positions p with p % world == r, so ranks see disjoint documents.
//   document:  with probability fim_rate rewritten fill-in-the-middle (PSM or SPM, see
//              fim_layout), then EOS appended.
//   rows:      a document of <= T+1 tokens (EOS included) goes into the packing buffer; every
//              time the buffer holds T+1 tokens its first T+1 tokens are a row and its first T
//              are dropped (consecutive packed rows share one token, so every packed token is a
//              target exactly once, as in llm.c and Megatron). A longer document is cut into
//              windows of T+1 tokens (window_starts), each a row of its own, emitted when the
//              document comes up; the packing buffer waits meanwhile.
// Each row of a batch picks its domain by the mixture weights in force (its own Rng), then takes
// that domain's next row. Layouts with worked examples: docs/data.md.
#pragma once
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/mixture.h"

namespace dsv3 {

// PSM: fim_prefix prefix fim_suffix suffix fim_middle middle
// SPM: fim_suffix suffix fim_prefix prefix fim_middle middle
enum class FimOrder : uint8_t { PSM, SPM };
const char* fim_order_name(FimOrder o);           // "psm", "spm"
FimOrder parse_fim_order(const std::string& s);   // "psm"/"spm" (any case), else an Error

struct LoaderConfig {
  int batch = 0, seq_len = 0;  // B rows of T + 1 tokens per next()
  uint64_t seed = 0;
  double fim_rate = 0;         // probability that a document is rewritten FIM; DeepSeek-V3: 0.1
  FimOrder fim_order = FimOrder::PSM;
  int window_overlap = 0;      // tokens shared by consecutive windows of a long document, in
                               // [0, seq_len]; stride = seq_len + 1 - window_overlap
  int32_t eos = -1;            // required: appended to every document; splits llm.c files
  int32_t fim_prefix = -1, fim_middle = -1, fim_suffix = -1;  // required when fim_rate > 0
  int rank = 0, world = 1;     // data-parallel partition
  bool shuffle = true;         // false: documents in file order every epoch
  bool prefetch = true;        // a background thread prepares rows ahead
};

struct DomainSpec {
  std::string name;                 // no ':' or ',' (weights are given as name:weight,...)
  std::vector<std::string> shards;  // dsv3 shards and/or llm.c .bin files
};

// What the loader found for one domain.
struct DomainInfo {
  std::string name;
  std::vector<std::string> shards;
  uint64_t docs = 0;         // all ranks
  uint64_t tokens = 0;       // all ranks, one EOS per document included, before FIM
  uint64_t text_bytes = 0;   // UTF-8 bytes of the source texts (0 for llm.c files)
  uint64_t rank_docs = 0;    // documents this rank reads per epoch
};

// Windows of a document of n tokens (EOS included) for rows of `row` = T+1 tokens: starts
// 0, s, 2s, ... (s = row - overlap) while start + row < n, then n - row (the last window ends at
// the document end). A document of n <= row tokens is one window at 0 (it is packed instead).
std::vector<uint64_t> window_starts(uint64_t n, int row, int overlap);

// The FIM rewrite of one document (no EOS) with split points 0 <= a <= b <= doc.size():
// prefix = doc[0, a), middle = doc[a, b), suffix = doc[b, end), laid out in c.fim_order.
std::vector<int32_t> fim_layout(std::span<const int32_t> doc, size_t a, size_t b,
                                const LoaderConfig& c);

class Loader {
 public:
  // Opens and validates every shard (llm.c files split at c.eos), checks each shard's EOS id and
  // vocabulary against c, and starts the prefetch thread. An empty mix.start_weights means each
  // domain's share of tokens. Every problem is an Error naming the domain or file.
  Loader(std::vector<DomainSpec> domains, LoaderConfig c, MixtureConfig mix = {});
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  // The next batch: (batch, seq_len + 1) ids, row-major; valid until the next call to next() or
  // restore(). Row b's inputs are [0, T), its targets [1, T].
  const int32_t* next();

  // The step for weight schedules (steps from 0; step == total_steps is the end of the run).
  // Affects rows picked by later next() calls only; prefetched rows are not discarded because
  // each domain's rows do not depend on the weights.
  void set_step(int64_t step, int64_t total_steps);
  // Per-domain validation loss of one evaluation (order of domains()): the adaptive rule of
  // mixture.h. Returns the indices of the domains raised.
  std::vector<size_t> observe_validation(const std::vector<double>& per_domain_loss);

  std::vector<double> weights() const;  // in force now, one per domain
  const Mixture& mixture() const;
  const LoaderConfig& config() const;
  const std::vector<DomainInfo>& domains() const;
  // Rows handed out per domain since the start of training (restored with the state).
  const std::vector<uint64_t>& rows_per_domain() const;
  uint64_t batches() const;  // batches handed out since the start of training

  // The position after the last batch handed out (not the prefetched one): per domain epoch,
  // cursor, window and packing buffer; the mixing Rng; the mixture's state; counters; plus the
  // settings that fix the data order. restore(state()) on a Loader built with the same domains
  // and settings (batch and prefetch may differ) continues with exactly the same batches; a
  // mismatch (seed, seq_len, world, ..., document counts) is an Error saying which.
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

  // {"weights": {..}, "multipliers": {..}, "rows": {name: rows}, "epochs": {name: epoch}}
  nlohmann::json log_record() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> p_;
};

}  // namespace dsv3
