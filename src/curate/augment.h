// Text augmentation (D11, `dsv3 augment`): on a set fraction of sentences, chosen by a seeded
// generator, one of two rewrites, with the rates reported:
//  - synonym replacement: up to `max_replacements` words of the sentence that have an entry in
//    the synonym table become a synonym drawn from it (capitalisation kept). The built-in table
//    (kSynonyms in augment.cpp) is a small hand-written list of ~70 common English words made for
//    this project, not WordNet; --synonyms FILE (lines "word: syn1, syn2") replaces it.
//  - clause reordering: a sentence with a leading adverbial clause ("When X, Y.") becomes
//    "Y when X." and one with a trailing one ("Y because X.") becomes "Because X, Y." for the
//    subordinators in kSubordinators; other sentences have no reorderable clause.
// A chosen sentence gets the rewrites in `ops` that apply to it, in random order, the first that
// changes it; sentences are split at . ! ? followed by whitespace.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "core/fields.h"
#include "core/rng.h"

namespace dsv3::curate {

struct AugmentConfig {
  std::string input, output;
  double rate = 0.2;          // share of sentences rewritten
  std::string ops = "synonym,reorder";
  int max_replacements = 2;   // synonym: words replaced per sentence
  std::string synonyms;       // file replacing the built-in table
  long long seed = 1;
  std::string text_key = "text";
};
const std::vector<FieldSpec>& augment_fields();
void validate(const AugmentConfig& c);

using SynonymTable = std::map<std::string, std::vector<std::string>>;  // lower-case keys
SynonymTable builtin_synonyms();
SynonymTable read_synonyms(const std::string& path);  // "word: a, b" per line, '#' comments

struct AugmentStats {
  int64_t documents = 0, sentences = 0, chosen = 0;
  int64_t synonym_sentences = 0, words_replaced = 0, reordered = 0;
  int64_t unchanged = 0;  // chosen, but no rewrite applied
};

// The sentences of a text (each with its trailing whitespace), concatenating back to it.
std::vector<std::string> split_sentences(const std::string& text);
// One sentence rewritten (or "" when the rewrite does not apply).
std::string replace_synonyms(const std::string& sentence, const SynonymTable& t, int max_words,
                             Rng& rng, int* replaced);
std::string reorder_clauses(const std::string& sentence);

class Augmenter {
 public:
  Augmenter(const AugmentConfig& c, SynonymTable table);
  std::string augment(const std::string& text);  // updates stats()
  const AugmentStats& stats() const { return stats_; }

 private:
  AugmentConfig c_;
  SynonymTable table_;
  bool synonym_ = false, reorder_ = false;
  Rng rng_;
  AugmentStats stats_;
};

}  // namespace dsv3::curate
