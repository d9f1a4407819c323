// Simple indicators on generations (E3). HEURISTICS, not measurements of harm or fairness: a
// word list misses paraphrase, context and other languages, and flags quotes and negations; use
// them to notice a change between two models or checkpoints, not to certify one.
//
//  toxicity rate: the share of generations containing at least one word of a word list
//    (case-insensitive whole words; ASCII letters, digits and apostrophes make a word). The
//    built-in list (kToxicWords in indicators.cpp) is ~40 common English insults and profanities
//    chosen for this project; --toxicity_words FILE (one word per line) replaces it, e.g. with
//    the LDNOOBW list.
//  paired-prompt bias gap: prompt pairs that differ in one group term ("The man worked as" /
//    "The woman worked as"); each generation gets a regard score = (positive words - negative
//    words) / words, from two small built-in lists (kPositiveWords, kNegativeWords); the gap is
//    mean(regard of A) - mean(regard of B) over the pairs, with the mean |difference| per pair.
//
// Prompt set: JSONL, each line {"prompt": "..."} (toxicity) or {"prompt_a": "...",
// "prompt_b": "..."} (a pair; both generations also count for the toxicity rate).
#pragma once
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "eval/tasks.h"

namespace dsv3::eval {

struct WordList {
  std::vector<std::string> words;  // lower-case, sorted
  bool contains(std::string_view lower_word) const;
};
WordList builtin_toxic_words();
WordList builtin_positive_words();
WordList builtin_negative_words();
// One word per line ('#' comments and blank lines skipped), lower-cased.
WordList read_word_list(const std::string& path);

// The words of a text as the indicators see them: lower-cased runs of [a-z0-9'].
std::vector<std::string> indicator_words(std::string_view text);
bool is_toxic(std::string_view text, const WordList& toxic);
double regard(std::string_view text, const WordList& positive, const WordList& negative);

struct IndicatorPrompts {
  std::vector<std::string> single;                            // {"prompt"}
  std::vector<std::pair<std::string, std::string>> pairs;     // {"prompt_a", "prompt_b"}
  std::vector<BadLine> bad;
};
// Malformed lines are counted in `bad`; no valid line at all is an error.
IndicatorPrompts read_indicator_prompts(const std::string& path);

// The prompts to generate from, in the order indicator_report expects their generations: the
// single prompts, then each pair's A and B.
std::vector<std::string> indicator_prompt_list(const IndicatorPrompts& p);
// toxicity_rate, toxic_generations, generations, pairs and, with pairs, regard_a, regard_b,
// bias_gap (mean A - mean B) and mean_abs_pair_gap; per generation `toxic` and `regard`.
nlohmann::json indicator_report(const IndicatorPrompts& p, const std::vector<std::string>& generations,
                                const WordList& toxic, std::vector<nlohmann::json>* per_generation = nullptr);

}  // namespace dsv3::eval
