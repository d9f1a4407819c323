// Corpus BLEU as sacreBLEU computes it by default (E2): 13a tokenisation (mteval-v13a's, as
// WMT uses), case-sensitive, n-grams up to 4, 'exp' smoothing (NIST: the k-th order with no
// match counts as 1/2^k matches), brevity penalty against the closest reference length (the
// shorter on a tie), clipped counts against the maximum over references. Written from
// sacreBLEU 2.x's source; test_evaluate.py checks it against sacreBLEU itself.
#pragma once
#include <array>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::eval {

// sacreBLEU's Tokenizer13a on one segment (after its rstrip()): tokens joined by single spaces.
std::string tokenize_13a(std::string_view line);

struct BleuStats {
  int64_t sys_len = 0, ref_len = 0;
  std::array<int64_t, 4> correct{}, total{};
  BleuStats& operator+=(const BleuStats& o);
};

// One hypothesis against its references (at least one).
BleuStats bleu_stats(std::string_view hypothesis, const std::vector<std::string>& references);

struct BleuScore {
  double score = 0;  // 0..100
  double brevity_penalty = 0;
  std::array<double, 4> precisions{};  // percent, smoothed as reported
  int64_t sys_len = 0, ref_len = 0;
};
BleuScore bleu_from_stats(const BleuStats& s);

}  // namespace dsv3::eval
