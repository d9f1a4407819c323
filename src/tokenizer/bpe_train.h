// Byte-level BPE training (D9).
//
// 1. Count pieces: the corpus is pre-tokenised (in parallel, cut between words as in encoding)
//    and each distinct piece ("word") is counted.
// 2. Merge: every word starts as its bytes (ids 0..255 = byte values). Pair counts (weighted by
//    word counts) are kept in a hash map with a max-heap over them; each step takes the most
//    frequent adjacent pair, gives the concatenation a token (a new id, or the existing id when
//    another merge already made the same bytes, as HF's trainer does), and rewrites only the words
//    that contain the pair, adjusting the counts of the pairs around each occurrence --
//    nothing is recounted.
//    Ties: among pairs of equal count, the one with the smaller left id wins, then the smaller
//    right id (byte tokens compare by byte value; merged tokens by creation order).
//    Occurrences are merged left to right without overlap ("aaa" with a+a gives "aa a").
// 3. Stop when the vocabulary (256 bytes + merged tokens + special tokens) reaches vocab_size or
//    the best pair occurs fewer than min_frequency times. Special tokens take the last ids.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/bpe.h"

namespace dsv3 {

struct TrainOptions {
  int vocab_size = 32000;            // all ids: 256 bytes + merged tokens + special tokens
  int min_frequency = 2;             // a pair must occur this often to be merged
  std::string pretokenizer = "gpt2";
  std::vector<std::string> specials; // texts; roles are inferred from the usual names
  int threads = 1;                   // for counting
  bool progress = false;             // progress lines on stderr
};

// dsv3's default special tokens: <|bos|> <|eos|> <|pad|>, the FIM markers <|fim_prefix|>
// <|fim_middle|> <|fim_suffix|>, chat markers <|system|> <|user|> <|assistant|> <|end_of_turn|>,
// then <|reserved_0|>..<|reserved_{reserved-1}|> for later use without resizing the vocabulary.
std::vector<std::string> default_special_texts(int reserved);

struct TrainReport {
  int64_t bytes = 0, pieces = 0, words = 0;  // input bytes, pieces, distinct pieces
  int64_t merges = 0;
  double count_seconds = 0, merge_seconds = 0;
  bool stopped_by_frequency = false;  // ran out of pairs occurring min_frequency times
};

// Distinct pieces and their counts.
using WordCounts = std::unordered_map<std::string, int64_t>;

// Adds the pieces of `text` to `counts`; `threads` > 1 counts cut chunks in parallel.
void count_pieces(const Pretokenizer& pre, std::string_view text, int threads, WordCounts& counts,
                  TrainReport* report = nullptr);

// Learns merges from counted pieces (the pre-tokenizer in `o` is recorded, not re-run).
Tokenizer train_bpe(const WordCounts& counts, const TrainOptions& o, TrainReport* report = nullptr);

// Reads and counts each file (one text each), then trains.
Tokenizer train_bpe_files(const std::vector<std::string>& files, const TrainOptions& o,
                          TrainReport* report = nullptr);

}  // namespace dsv3
