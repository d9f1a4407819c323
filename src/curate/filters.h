// Heuristic quality filters (D3) with their published thresholds. Each filter is a config struct
// (defaults = the published values) and one function that returns the rule a document breaks,
// or nullptr to keep it. Rule names are datatrove's, so counts can be compared side by side.
//
// Sources (the defaults below cite the line they come from):
//  - Gopher: Rae et al. 2021, "Scaling Language Models: Methods, Analysis & Insights from
//    Training Gopher", Appendix A.1.1 and Table A1 (https://arxiv.org/abs/2112.11446), as
//    implemented by datatrove 0.10 (pipeline/filters/gopher_quality_filter.py,
//    gopher_repetition_filter.py).
//  - C4: Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified
//    Text-to-Text Transformer", Section 2.2 (https://jmlr.org/papers/v21/20-074.html), and the
//    reference code tensorflow_datasets/text/c4_utils.py (clean_page). The default thresholds
//    are the original ones: a line needs >= 5 words and a page >= 3 sentences (paper and
//    c4_utils: _MIN_WORDS_PER_LINE = 5, _MIN_NUM_SENTENCES = 3). datatrove's C4QualityFilter
//    defaults differ (min_words_per_line = 3, min_num_sentences = 5, and it also accepts lines
//    ending in an apostrophe); set c4_min_words_per_line = 3, c4_min_sentences = 5 to get them.
//  - FineWeb: Penedo et al. 2024, "The FineWeb Datasets" (https://arxiv.org/abs/2406.17557),
//    Section 3.3 custom filters, as datatrove's FineWebQualityFilter.
//
// Conventions taken from datatrove: ratios divide by lengths in code points; a threshold of 0
// switches its rule off.
#pragma once
#include <string>

namespace dsv3::curate {

struct GopherQualityConfig {
  int min_doc_words = 50;               // "between 50 and 100,000 words"
  int max_doc_words = 100000;
  double min_avg_word_length = 3;       // "mean word length ... 3 to 10 characters"
  double max_avg_word_length = 10;
  double max_symbol_word_ratio = 0.1;   // '#' or ellipsis per word
  double max_bullet_lines_ratio = 0.9;  // "more than 90% of lines starting with a bullet point"
  double max_ellipsis_lines_ratio = 0.3;  // "more than 30% ending with an ellipsis"
  double min_alpha_words_ratio = 0.8;   // "80% of words ... at least one alphabetic character"
  int min_stop_words = 2;  // of: the, be, to, of, and, that, have, with (distinct, case-sensitive
                           // as in datatrove)
};
const char* gopher_quality(const std::string& text, const GopherQualityConfig& c);

struct GopherRepetitionConfig {  // Table A1
  double dup_line_frac = 0.30;
  double dup_para_frac = 0.30;
  double dup_line_char_frac = 0.20;
  double dup_para_char_frac = 0.20;
  double top_ngram_frac[3] = {0.20, 0.18, 0.16};                     // n = 2, 3, 4
  double dup_ngram_frac[6] = {0.15, 0.14, 0.13, 0.12, 0.11, 0.10};  // n = 5 .. 10
};
const char* gopher_repetition(const std::string& text, const GopherRepetitionConfig& c);

struct C4Config {
  int min_words_per_line = 5;   // original C4 (datatrove: 3)
  int min_sentences = 3;        // original C4 (datatrove: 5)
  int max_word_length = 1000;   // c4_utils: lines with a longer word go
  bool remove_citations = true;  // "[1]", "[edit]", "[citation needed]"
  bool terminal_punct = true;   // keep only lines ending in . ? ! " (not "...")
  bool lorem_ipsum = true;      // page dropped
  bool javascript = true;       // line dropped
  bool curly_bracket = true;    // page dropped
  bool policy = true;           // lines with "terms of use", "privacy policy", cookies ... go
  // C4 rewrites the page to its kept lines. Off: only the page-level decision is taken and the
  // text is left as it was (FineWeb-style use of the rules).
  bool drop_lines = true;
};
// Drops the page (returns a rule) or, with drop_lines, rewrites `text` to the kept lines;
// `lines_removed` gets the number of lines removed.
const char* c4_filter(std::string& text, const C4Config& c, int* lines_removed);

struct FineWebConfig {
  double line_punct_thr = 0.12;     // drop if fewer lines end in terminal punctuation
  bool line_punct_exclude_zero = false;
  double short_line_thr = 0.67;     // drop if more lines are <= short_line_length chars
  int short_line_length = 30;
  double char_dup_ratio = 0.01;     // drop if more characters are in duplicated lines
  double new_line_ratio = 0.3;      // drop if more newlines per word ("list_ratio")
};
const char* fineweb_filter(const std::string& text, const FineWebConfig& c);

}  // namespace dsv3::curate
