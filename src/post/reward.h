// GRPO's verifiable rewards: a rule declared on the command line (post/finetune.h GrpoConfig),
// never code from the data. reward = reward_answer   if the completion's first number equals
//                                                     the prompt's "answer" numerically
//                                 + reward_format_weight  if the PCRE2 pattern matches
//                                 - length_penalty * max(0, tokens - length_target)
#pragma once
#include <memory>
#include <optional>
#include <string>

#include "post/finetune.h"

namespace dsv3 {

// The first number in text ("-12", "3.5", "1,024" as 1024), or none.
std::optional<double> first_number(const std::string& text);

class RewardRule {
 public:
  explicit RewardRule(const GrpoConfig& g);  // throws when the pattern does not compile
  ~RewardRule();
  struct Parts {
    double total = 0;
    bool correct = false, formatted = false;
  };
  Parts score(const std::string& completion, int tokens, const std::string& answer) const;
  // Exact match of the first number (the accuracy the demonstration reports).
  static bool answer_matches(const std::string& completion, const std::string& answer);

 private:
  GrpoConfig g_;
  struct Regex;
  std::unique_ptr<Regex> re_;
};

}  // namespace dsv3
