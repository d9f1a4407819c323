// Batches over plain token arrays: llm.c token files (`--train_data`, one or several) and the
// built-in corpus. B = batch rows, T = seq_len; a row is T+1 tokens (inputs [0, T), targets
// [1, T]). Prepared data (`--data`) has its own loader (loader.h).
//
// Windows. A part (one file) of n tokens holds W = (n - 1) / T windows, tokens [j*T, j*T + T]
// for j = 0 .. W-1: stride T, so consecutive windows share one token and every token after the
// first is a target once. A window never crosses from one part into the next. Windows are
// numbered across parts, part 0's first; N = all of them.
//
// Shuffled order (default; llm.c's DataLoader also permutes its windows): epoch e visits the N
// windows in a permutation drawn from (seed, e) (Fisher-Yates), a new one every epoch. The rows
// of the stream are the permutation entries in order, epochs back to back, and a batch is the
// next B rows, so its rows are windows from anywhere in the data (the last batch of an epoch
// may take its first rows from the next epoch).
//
// Sequential order (shuffle = false), part by part: the batch at position p of a part has rows
// b = tokens[p + b*T, p + b*T + T]; p += B*T; when the next batch would run past the part's end
// the next part starts at 0 (after the last part: part 0 again, epoch + 1). For one part this is
// exactly the order of TokenStream before shuffling existed, so the B rows of a batch are B
// consecutive windows of one passage.
//
// State (state() / restore(); the "data" entry of a checkpoint):
//   shuffled:   {"order": "shuffled", "seed": "<16 hex digits>", "seq_len": T, "windows": N,
//                "epoch": e, "index": i}          the next row is entry i of epoch e's permutation
//   sequential: {"order": "sequential", "part": f, "position": p, "epoch": e}
//   {"position": p, "epoch": e}  (no "order": written before shuffling existed) = sequential,
//                part 0, so old checkpoints resume exactly as they were trained.
// The permutation is recomputed from (seed, epoch), never stored. restore() takes the order and
// the seed from the state (a resumed run continues the order it started with); B may differ.
// It refuses, naming the difference, a state over other data (another N or seq_len, a part or
// position out of range); a failed restore leaves the stream where it was.
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/shard.h"

namespace dsv3 {

struct TokenStreamConfig {
  int batch = 8;        // B rows per batch
  int seq_len = 256;    // T; a row is T+1 tokens
  bool shuffle = true;  // false: the sequential order above
  uint64_t seed = 0;    // epoch e's permutation is drawn from (seed, e)
};

class TokenStream {
 public:
  // Parts held in memory (the built-in corpus, tests); `names` label them in messages
  // (default "part k"). Every part needs T+1 tokens (sequential order: B*T+1), and all parts
  // together at least B windows; otherwise an Error says which part and what is needed.
  TokenStream(std::vector<std::vector<int32_t>> parts, const TokenStreamConfig& c,
              std::vector<std::string> names = {});
  // llm.c token files in the order given, memory-mapped (not copied); each is validated
  // (header, size) and named in every error.
  static TokenStream open_files(const std::vector<std::string>& paths, const TokenStreamConfig& c);

  const int32_t* next();  // (B, T+1), valid until the next call
  nlohmann::json state() const;
  void restore(const nlohmann::json& state);

  // Throws an Error naming `what`, the part, the index and the id of the first id >= vocab.
  void check_ids_below(int64_t vocab, const std::string& what) const;

  bool shuffled() const { return shuffle_; }
  uint64_t seed() const { return seed_; }
  uint64_t epoch() const { return epoch_; }
  uint64_t windows() const { return n_windows_; }  // N
  uint64_t tokens() const;
  size_t parts() const { return parts_.size(); }

 private:
  struct Part {
    std::string name;
    uint64_t n = 0;                // tokens
    uint64_t first_window = 0;     // global number of its first window
    std::vector<int32_t> ids;      // in memory, or
    std::optional<Shard> file;     // a mapped llm.c file
  };
  TokenStream(std::vector<Part> parts, const TokenStreamConfig& c);
  void check_parts() const;
  void check_sequential_fits() const;  // every part holds one batch
  void copy_row(size_t part, uint64_t start, int32_t* out) const;
  uint32_t window_at(uint64_t epoch, uint64_t index);  // entry `index` of epoch's permutation

  std::vector<Part> parts_;
  int B_ = 0, T_ = 0;
  bool shuffle_ = true;
  uint64_t seed_ = 0;
  uint64_t n_windows_ = 0;
  // position: shuffled (epoch_, index_); sequential (epoch_, part_, pos_)
  uint64_t epoch_ = 0, index_ = 0, pos_ = 0;
  size_t part_ = 0;
  std::vector<uint32_t> perm_;  // epoch perm_epoch_'s permutation, computed when first needed
  uint64_t perm_epoch_ = UINT64_MAX, perm_seed_ = 0;
  std::vector<int32_t> batch_;
};

}  // namespace dsv3
