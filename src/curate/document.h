// One document as it moves through `dsv3 curate`: its text, where it came from, what the stages
// found. Plain data; the stages are free functions over it.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

namespace dsv3::curate {

// Kinds of sensitive information (D5), in the order counts are reported.
enum class PiiType : uint8_t {
  Email, Phone, Ipv4, Ipv6, CreditCard, Iban, UsSsn, CnResidentId, ApiKey, PrivateKey, Token,
  Count_
};
constexpr size_t kPiiTypes = size_t(PiiType::Count_);
using PiiCounts = std::array<uint32_t, kPiiTypes>;

struct Document {
  std::string text;
  std::string id;          // the record's id field, or "<input path>:<line>"
  nlohmann::json meta;     // the input record without its text and id (JSONL), else null
  uint32_t part = 0;       // input file number, in --input order
  uint64_t index = 0;      // record number within the part, 0-based
  uint64_t line = 0;       // 1-based line where the record starts in its file
  uint64_t bytes_in = 0;   // bytes of text as read

  // Filled by the stages; NaN / zero = not computed.
  PiiCounts pii{};
  int c4_lines_removed = 0;
  double classifier = NAN;  // probability of the wanted label
  double perplexity = NAN;  // exp(mean loss per token) under the scoring model
  double tfidf = NAN;       // cosine similarity to the target domain
};

// Documents are ordered by (part, index) everywhere a global decision needs an order (the
// survivor of a duplicate cluster, examples in the summary): that order does not depend on how
// many ranks or threads processed them.
inline uint64_t doc_order(uint32_t part, uint64_t index) { return uint64_t(part) << 40 | index; }

}  // namespace dsv3::curate
