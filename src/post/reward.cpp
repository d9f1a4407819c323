#include "post/reward.h"

#include <cmath>
#include <cstdlib>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "core/check.h"

namespace dsv3 {

std::optional<double> first_number(const std::string& s) {
  for (size_t i = 0; i < s.size(); i++) {
    const bool neg = s[i] == '-' && i + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[i + 1]));
    if (!neg && !std::isdigit(static_cast<unsigned char>(s[i]))) continue;
    std::string digits = neg ? "-" : "";
    size_t j = neg ? i + 1 : i;
    bool dot = false;
    for (; j < s.size(); j++) {
      const char c = s[j];
      if (std::isdigit(static_cast<unsigned char>(c))) digits += c;
      else if (c == ',' && j + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[j + 1]))) continue;
      else if (c == '.' && !dot && j + 1 < s.size() && std::isdigit(static_cast<unsigned char>(s[j + 1]))) digits += c, dot = true;
      else break;
    }
    return std::strtod(digits.c_str(), nullptr);
  }
  return std::nullopt;
}

struct RewardRule::Regex {
  pcre2_code* code = nullptr;
  ~Regex() { pcre2_code_free(code); }
};

RewardRule::RewardRule(const GrpoConfig& g) : g_(g) {
  if (g.reward_format.empty()) return;
  re_ = std::make_unique<Regex>();
  int err = 0;
  PCRE2_SIZE at = 0;
  re_->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(g.reward_format.data()), g.reward_format.size(),
                            PCRE2_UTF, &err, &at, nullptr);
  if (!re_->code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    fail("--reward_format '", g.reward_format, "' does not compile at offset ", at, ": ",
         reinterpret_cast<const char*>(buf));
  }
}
RewardRule::~RewardRule() = default;

bool RewardRule::answer_matches(const std::string& completion, const std::string& answer) {
  const auto want = first_number(answer), got = first_number(completion);
  return want && got && std::fabs(*want - *got) <= 1e-9 * std::max(1.0, std::fabs(*want));
}

RewardRule::Parts RewardRule::score(const std::string& completion, int tokens,
                                    const std::string& answer) const {
  Parts p;
  if (!answer.empty() && answer_matches(completion, answer)) p.correct = true, p.total += g_.reward_answer;
  if (re_) {
    pcre2_match_data* md = pcre2_match_data_create_from_pattern(re_->code, nullptr);
    const int rc = pcre2_match(re_->code, reinterpret_cast<PCRE2_SPTR>(completion.data()),
                               completion.size(), 0, 0, md, nullptr);
    pcre2_match_data_free(md);
    // a completion that is not valid UTF-8 (a byte-level model can sample one) does not match
    if (rc >= 0) p.formatted = true, p.total += g_.reward_format_weight;
  }
  p.total -= g_.length_penalty * std::max(0, tokens - g_.length_target);
  return p;
}

}  // namespace dsv3
