// Heuristic filters (D3) and normalisation (D2): every rule with hand-made documents on both
// sides of its published threshold, the word splitter against spaCy's behaviour, and Gopher
// repetition against a naive string-based transcription of datatrove's code.
#include <gtest/gtest.h>

#include <map>
#include <set>
#include <string>
#include <vector>

#include "core/rng.h"
#include "curate/filters.h"
#include "curate/normalize.h"
#include "curate/text.h"

namespace dsv3::curate {
namespace {

// n distinct lower-case pseudo-words of `len` letters (no stop words, no repeats).
std::vector<std::string> words(size_t n, size_t len, uint64_t seed = 1) {
  Rng r(seed);
  std::vector<std::string> out;
  std::set<std::string> seen = {"the", "be", "to", "of", "and", "that", "have", "with"};
  while (out.size() < n) {
    std::string w;
    for (size_t i = 0; i < len; i++) w += char('a' + r.below(26));
    if (seen.insert(w).second) out.push_back(w);
  }
  return out;
}

std::string join(const std::vector<std::string>& v, const std::string& sep = " ") {
  std::string s;
  for (size_t i = 0; i < v.size(); i++) {
    if (i) s += sep;
    s += v[i];
  }
  return s;
}

// A document that passes every Gopher quality rule: `n` words, two stop words, mean length ~5.
std::string prose(size_t n, uint64_t seed = 1) {
  auto w = words(n - 2, 5, seed);
  w.insert(w.begin() + 1, "the");
  w.insert(w.begin() + 3, "and");
  return join(w);
}

std::vector<std::string> tokens(const std::string& t) {
  std::vector<Word> w;
  split_words(t, w);
  std::vector<std::string> out;
  for (const auto& x : w) out.push_back(t.substr(x.begin, x.end - x.begin));
  return out;
}

TEST(CurateText, WordSplitterFollowsSpacy) {
  // expected values are spaCy's (datatrove's English word tokenizer) on the same strings
  using V = std::vector<std::string>;
  EXPECT_EQ(tokens("Mrs. Hurst's gown"), (V{"Mrs.", "Hurst", "'s", "gown"}));
  EXPECT_EQ(tokens("don't won't I'm they're we've she'd you'll"),
            (V{"do", "n't", "wo", "n't", "I", "'m", "they", "'re", "we", "'ve", "she", "'d", "you", "'ll"}));
  EXPECT_EQ(tokens("U.S. e.g. etc. Mr. No. 5"), (V{"U.S.", "e.g.", "etc", ".", "Mr.", "No", ".", "5"}));
  EXPECT_EQ(tokens("well-known--that... (yes) [1] \"quoted\""),
            (V{"well", "-", "known", "--", "that", "...", "(", "yes", ")", "[", "1", "]", "\"",
               "quoted", "\""}));
  EXPECT_EQ(tokens("10,000 3.14 $5 5% #tag"), (V{"10,000", "3.14", "$", "5", "5", "%", "#", "tag"}));
  EXPECT_EQ(tokens("word!? end..."), (V{"word", "!", "?", "end", "..."}));
  EXPECT_EQ(tokens("Hello\u2014world cannot -5 him:--"),
            (V{"Hello", "\u2014", "world", "can", "not", "-5", "him:--"}));
  EXPECT_EQ(tokens("\u201cOh! my"), (V{"\u201c", "Oh", "!", "my"}));
  EXPECT_EQ(tokens("Dinah'll John'd cat\u2019s I\u2019ll don\u2019t"),
            (V{"Dinah'll", "John'd", "cat", "\u2019s", "I", "\u2019ll", "do", "n\u2019t"}));
  EXPECT_EQ(tokens("\u2018quoted\u2019 \u00abg\u00bb \u00bfque? 100\u20ac word\u2026"),
            (V{"\u2018", "quoted", "\u2019", "\u00ab", "g", "\u00bb", "\u00bf", "que", "?", "100",
               "\u20ac", "word", "\u2026"}));
}

TEST(CurateText, AsciiFastPathEqualsTheGeneralPath) {
  Rng r(12);
  const std::string alphabet = "abcXYZ019 .,;:!?'\"()[]-~#$%&*/@_--...\n\t";
  const char* pieces[] = {"Mr.", "U.S.", "don't", "can't", "cannot", "it's", "we'll", "--", "...",
                          "well-known", "e.g.", "x.", "'s", "n't", "!!!!!!!!!!!!!!!!!!!!",
                          "Dinah'll", "they're", "I'm", "Bob'd"};
  std::vector<Word> fast, slow;
  for (int t = 0; t < 3000; t++) {
    std::string s;
    for (int k = 0, n = 1 + int(r.below(12)); k < n; k++) {
      if (r.below(3) == 0) s += pieces[r.below(19)];
      else s += alphabet[r.below(alphabet.size())];
      if (r.below(2)) s += ' ';
    }
    split_words(s, fast);
    split_words_general(s, slow);
    ASSERT_EQ(fast.size(), slow.size()) << "'" << s << "'";
    for (size_t i = 0; i < fast.size(); i++) {
      EXPECT_EQ(fast[i].begin, slow[i].begin) << s;
      EXPECT_EQ(fast[i].end, slow[i].end) << s;
      EXPECT_EQ(fast[i].symbol, slow[i].symbol) << s;
      EXPECT_EQ(fast[i].has_alpha, slow[i].has_alpha) << s;
    }
  }
}

TEST(CurateText, SentencesAsSpacyCountsThem) {
  EXPECT_EQ(count_sentences("Mr. Smith went. He saw it! Then? Yes."), 4);
  EXPECT_EQ(count_sentences("\u201cOh! my dear, I am quite delighted. He is so handsome!\u201d"), 3);
  EXPECT_EQ(count_sentences("Wait... what? No!! fine."), 3);
  EXPECT_EQ(count_sentences("e.g. this one. And i.e. that."), 2);
  EXPECT_EQ(count_sentences(""), 0);
}

TEST(CurateText, Utf8RepairAndClasses) {
  std::string s = "ok \xff bad \xe2\x82 cut \xc3\xa9";
  EXPECT_FALSE(utf8_valid(s));
  EXPECT_EQ(utf8_repair(s), 2u);
  EXPECT_TRUE(utf8_valid(s));
  EXPECT_EQ(s, "ok \xEF\xBF\xBD bad \xEF\xBF\xBD cut \xc3\xa9");
  EXPECT_FALSE(utf8_valid("\xed\xa0\x80"));  // a surrogate
  EXPECT_FALSE(utf8_valid("\xc0\xaf"));      // overlong
  EXPECT_EQ(utf8_length("h\xc3\xa9llo"), 5u);
  EXPECT_TRUE(is_alpha(0xe9));
  EXPECT_TRUE(is_alpha(0x4e2d));  // 中
  EXPECT_FALSE(is_alpha('5'));
  EXPECT_TRUE(is_punct(0x201c));
  EXPECT_TRUE(is_terminal_punct(0x3002));  // 。
  std::string simple;
  std::vector<std::pair<uint32_t, uint32_t>> w;
  simplify_words("Caf\xc3\xa9, CAFE's 3.5 and 1,000!", simple, w);
  EXPECT_EQ(simple, "cafe cafe s 0 and 0");
  EXPECT_EQ(w.size(), 6u);
}

// --- normalisation ---------------------------------------------------------------------------
TEST(CurateNormalize, NfcControlsWhitespace) {
  std::string t = "\xef\xbb\xbf  Cafe\xcc\x81 ok\x01\x7f \r\nline\xc2\xa0two   \r\n\n\n\n\tindented\x0b\n\n";
  normalize_text(t, NormalizeConfig{});
  EXPECT_EQ(t, "  Caf\xc3\xa9 ok\nline two\n\n\tindented");
  // each switch on its own
  std::string u = "e\xcc\x81\x01";
  NormalizeConfig only_nfc{true, false, false};
  normalize_text(u, only_nfc);
  EXPECT_EQ(u, "\xc3\xa9\x01");
  // non-ASCII runs next to ASCII are composed correctly
  EXPECT_EQ(nfc("abc A\xcc\x8a x \xe1\x84\x80\xe1\x85\xa1 y"), "abc \xc3\x85 x \xea\xb0\x80 y");
}

// --- Gopher quality ----------------------------------------------------------------------------
TEST(CurateGopherQuality, EveryRuleOnBothSides) {
  const GopherQualityConfig c;
  EXPECT_EQ(gopher_quality(prose(50), c), nullptr);
  EXPECT_STREQ(gopher_quality(prose(49), c), "gopher_short_doc");
  EXPECT_EQ(gopher_quality(prose(100000), c), nullptr);
  EXPECT_STREQ(gopher_quality(prose(100001), c), "gopher_long_doc");
  // mean word length: "the"/"and" are 3 long; the rest 3 (keep) or 2-and-3 (drop)
  {
    auto w = words(58, 3);
    w.insert(w.begin(), "the");
    w.insert(w.begin(), "and");
    EXPECT_EQ(gopher_quality(join(w), c), nullptr);  // mean exactly 3
    w[5] = "ab";
    EXPECT_STREQ(gopher_quality(join(w), c), "gopher_below_avg_threshold");
    auto l = words(58, 10);
    l.insert(l.begin(), "the");
    l.insert(l.begin(), "and");
    l.push_back(std::string(61 * 10 - 58 * 10 - 6, 'q'));  // brings the mean to exactly 10
    EXPECT_EQ(gopher_quality(join(l), c), nullptr);
    l.back() += "r";
    EXPECT_STREQ(gopher_quality(join(l), c), "gopher_above_avg_threshold");
  }
  // '#' per word: 90 words + 10 '#' tokens = 0.1 (kept), 11 of 101 (dropped)
  {
    auto base = prose(90);
    std::string t = base;
    for (int i = 0; i < 10; i++) t += " #";
    EXPECT_EQ(gopher_quality(t, c), nullptr);
    EXPECT_STREQ(gopher_quality(t + " #", c), "gopher_too_many_hashes");
    // (the line must not end in an ellipsis: that is the next rule)
    std::string e = prose(89);
    for (int i = 0; i < 10; i++) e += " ...";
    EXPECT_EQ(gopher_quality(e + " end", c), nullptr);
    EXPECT_STREQ(gopher_quality(e + " \u2026 end", c), "gopher_too_many_ellipsis");
  }
  // bullets: 9 of 10 lines (0.9, kept) vs 10 of 10
  {
    auto w = words(60, 5);
    auto doc = [&](int k) {
      std::string t;
      for (int i = 0; i < 10; i++)
        t += std::string(i ? "\n" : "") + (i < k ? (i % 2 ? "- " : "\u2022 ") : "") +
             join({w[size_t(6 * i)], "the", "and", w[size_t(6 * i + 1)], w[size_t(6 * i + 2)], w[size_t(6 * i + 3)]});
      return t;
    };
    EXPECT_EQ(gopher_quality(doc(9), c), nullptr);
    EXPECT_STREQ(gopher_quality(doc(10), c), "gopher_too_many_bullets");
  }
  // lines ending in an ellipsis: 3 of 10 (kept) vs 4 of 10
  {
    auto w = words(60, 5);
    auto doc = [&](int k) {
      std::string t;
      for (int i = 0; i < 10; i++)
        t += std::string(i ? "\n" : "") + join({w[size_t(6 * i)], "the", "and", w[size_t(6 * i + 1)], w[size_t(6 * i + 2)], w[size_t(6 * i + 3)]}) + (i < k ? "..." : ".");
      return t;
    };
    EXPECT_EQ(gopher_quality(doc(3), c), nullptr);
    EXPECT_STREQ(gopher_quality(doc(4), c), "gopher_too_many_end_ellipsis");
  }
  // words with a letter: 80 of 100 (kept) vs 79 of 100
  {
    auto w = words(78, 5);
    w.push_back("the");
    w.push_back("and");
    for (int i = 0; i < 20; i++) w.push_back(std::to_string(1000 + i));
    EXPECT_EQ(gopher_quality(join(w), c), nullptr);
    w[0] = "12345";
    EXPECT_STREQ(gopher_quality(join(w), c), "gopher_below_alpha_threshold");
  }
  // stop words: two distinct needed
  {
    auto w = words(60, 5);
    w[3] = "the";
    w[7] = "the";
    EXPECT_STREQ(gopher_quality(join(w), c), "gopher_enough_stop_words");
    w[7] = "with";
    EXPECT_EQ(gopher_quality(join(w), c), nullptr);
  }
}

// --- Gopher repetition -------------------------------------------------------------------------
// datatrove's functions transcribed literally (strings, not hashes): the oracle.
struct Oracle {
  static std::pair<size_t, size_t> dups(const std::vector<std::string>& x) {
    std::set<std::string> seen;
    size_t n = 0, chars = 0;
    for (const auto& e : x)
      if (!seen.insert(e).second) n++, chars += utf8_length(e);
    return {n, chars};
  }
  static double top(const std::vector<std::string>& w, size_t n) {
    std::map<std::string, size_t> cnt;
    std::vector<std::string> order;
    for (size_t i = 0; i + n <= w.size(); i++) {
      std::vector<std::string> g(w.begin() + long(i), w.begin() + long(i + n));
      const std::string s = join(g);
      if (!cnt[s]++) order.push_back(s);
    }
    size_t best = 0;
    std::string arg;
    for (const auto& s : order)
      if (cnt[s] > best) best = cnt[s], arg = s;
    return double(utf8_length(arg) * best);
  }
  static double all_dup(const std::vector<std::string>& w, size_t n) {
    std::set<std::string> seen;
    size_t rep = 0, i = 0;
    while (i + n <= w.size()) {
      std::string g;
      for (size_t k = i; k < i + n; k++) g += w[k];
      if (!seen.insert(g).second) rep += utf8_length(g), i += n;
      else i++;
    }
    return double(rep);
  }
};

TEST(CurateGopherRepetition, MatchesTheOracleOnRandomDocuments) {
  const GopherRepetitionConfig c;
  Rng r(7);
  const auto vocab = words(40, 4, 3);
  for (int trial = 0; trial < 200; trial++) {
    // few distinct words and repeated phrases, so every rule has a chance to fire
    std::vector<std::string> w;
    const size_t n = 20 + r.below(200);
    for (size_t i = 0; i < n; i++) w.push_back(vocab[r.below(4 + trial % 36)]);
    const std::string text = join(w);
    const double len = double(utf8_length(text));
    const char* want = nullptr;
    for (size_t k = 0; k < 3 && !want; k++)
      if (w.size() >= k + 2 && Oracle::top(w, k + 2) / len > c.top_ngram_frac[k])
        want = k == 0 ? "top_2_gram" : k == 1 ? "top_3_gram" : "top_4_gram";
    for (size_t k = 0; k < 6 && !want; k++)
      if (Oracle::all_dup(w, k + 5) / len > c.dup_ngram_frac[k]) want = "dup";
    const char* got = gopher_repetition(text, c);
    if (!want) {
      EXPECT_EQ(got, nullptr) << text;
    } else if (std::string(want) == "dup") {
      ASSERT_NE(got, nullptr) << text;
      EXPECT_EQ(std::string(got).rfind("duplicated_", 0), 0u) << got;
    } else {
      EXPECT_STREQ(got, want) << text;
    }
  }
}

TEST(CurateGopherRepetition, EveryRuleOnBothSides) {
  const GopherRepetitionConfig c;
  // paragraphs: 10 with 3 short repeats (0.3, kept) vs 4 (0.4 > 0.3)
  {
    auto long_words = words(400, 6, 11);
    auto para = [&](int i) {
      return join(std::vector<std::string>(long_words.begin() + 40 * i, long_words.begin() + 40 * i + 40));
    };
    auto doc = [&](int dups) {
      std::vector<std::string> p;
      for (int i = 0; i < 10 - dups; i++) p.push_back(para(i));
      for (int i = 0; i < dups; i++) p.push_back("same short words");
      p.insert(p.begin(), "same short words");
      return join(p, "\n\n");
    };
    EXPECT_EQ(gopher_repetition(doc(3), c), nullptr);
    EXPECT_STREQ(gopher_repetition(doc(4), c), "dup_para_frac");
    // one long repeated paragraph: over 20% of the characters
    // one long repeated paragraph: 1 of 4 paragraphs (fine) but 25% of the characters
    std::vector<std::string> p;
    for (int i = 0; i < 3; i++) p.push_back(para(i));
    EXPECT_EQ(gopher_repetition(join(p, "\n\n"), c), nullptr);
    p.push_back(para(0));
    EXPECT_STREQ(gopher_repetition(join(p, "\n\n"), c), "dup_para_char_frac");
    // the same with single newlines: lines instead of paragraphs
    auto lines = [&](int dups) {
      std::vector<std::string> l;
      for (int i = 0; i < 10 - dups; i++) l.push_back(para(i));
      for (int i = 0; i < dups; i++) l.push_back("same short words");
      l.insert(l.begin(), "same short words");
      return join(l, "\n");
    };
    EXPECT_EQ(gopher_repetition(lines(3), c), nullptr);
    EXPECT_STREQ(gopher_repetition(lines(4), c), "dup_line_frac");
    std::vector<std::string> l2 = {para(0), para(1), para(2), para(0)};
    EXPECT_STREQ(gopher_repetition(join(l2, "\n"), c), "dup_line_char_frac");
  }
}

TEST(CurateGopherRepetition, NgramRulesOnBothSides) {
  // Grow the repeats of a phrase until the oracle's fraction crosses the threshold; the rule
  // must flip exactly there. Each rule alone (the others' thresholds 0 = off), because a
  // repeated n-gram always repeats its shorter n-grams too.
  for (size_t n = 2; n <= 10; n++) {
    GopherRepetitionConfig c;
    for (double& f : c.top_ngram_frac) f = 0;
    for (double& f : c.dup_ngram_frac) f = 0;
    const bool top = n <= 4;
    double& thr = top ? c.top_ngram_frac[n - 2] : c.dup_ngram_frac[n - 5];
    thr = top ? GopherRepetitionConfig{}.top_ngram_frac[n - 2]
              : GopherRepetitionConfig{}.dup_ngram_frac[n - 5];
    const std::string rule = top ? "top_" + std::to_string(n) + "_gram"
                                 : "duplicated_" + std::to_string(n) + "_n_grams";
    const auto base = words(50, 7, 5);
    const auto seps = words(300, 7, 6);
    const auto phrase = words(n, 4, 500 + n);
    bool crossed = false;
    for (int k = 1; k < 300 && !crossed; k++) {
      std::vector<std::string> w(base.begin(), base.end());
      for (int i = 0; i < k; i++) {  // each copy followed by its own word: copies do not chain
        w.insert(w.end(), phrase.begin(), phrase.end());
        w.push_back(seps[size_t(i)]);
      }
      const std::string text = join(w);
      const double f = (top ? Oracle::top(w, n) : Oracle::all_dup(w, n)) / double(utf8_length(text));
      const char* got = gopher_repetition(text, c);
      if (f > thr) {
        EXPECT_EQ(std::string(got ? got : "(kept)"), rule) << "k=" << k << " fraction " << f;
        crossed = true;
      } else {
        EXPECT_EQ(got, nullptr) << rule << " k=" << k << " fraction " << f;
      }
    }
    EXPECT_TRUE(crossed) << rule;
  }
}

// --- C4 ----------------------------------------------------------------------------------------
TEST(CurateC4, LineRulesAndPageRules) {
  const C4Config c;  // original C4: 5 words per line, 3 sentences
  const std::string l1 = "The cat sat on the mat.", l2 = "It was a sunny day outside.",
                    l3 = "Nobody expected what came next.";
  int removed = -1;
  std::string t = l1 + "\n" + l2 + "\n" + l3;
  EXPECT_EQ(c4_filter(t, c, &removed), nullptr);
  EXPECT_EQ(removed, 0);
  EXPECT_EQ(t, l1 + "\n" + l2 + "\n" + l3);
  // a 4-word line goes; then only two sentences remain
  t = l1 + "\n" + l2 + "\nFour words only here.";
  EXPECT_STREQ(c4_filter(t, c, &removed), "too_few_sentences");
  EXPECT_EQ(removed, 1);
  // lines without terminal punctuation, with an ellipsis, with javascript, policy lines and
  // over-long words go; citations are cut; the page survives
  t = "Menu Home About Contact\n" + l1 + "[1]\n" + l2 + "\nPlease enable javascript in your browser now.\n" +
      "This site uses cookies to improve things.\nAnd then there was more to say...\n" + l3 +
      "\nA line with " + std::string(1001, 'x') + " in it is gone.";
  EXPECT_EQ(c4_filter(t, c, &removed), nullptr);
  EXPECT_EQ(removed, 5);
  EXPECT_EQ(t, l1 + "\n" + l2 + "\n" + l3);
  // page rules
  t = l1 + "\n" + l2 + "\nLorem ipsum dolor sit amet, consectetur.";
  EXPECT_STREQ(c4_filter(t, c, &removed), "lorem_ipsum");
  t = l1 + "\n" + l2 + "\nfunction f() { return the value; }.";
  EXPECT_STREQ(c4_filter(t, c, &removed), "curly_bracket");
  // datatrove's thresholds: 3 words per line, 5 sentences
  C4Config dt;
  dt.min_words_per_line = 3;
  dt.min_sentences = 5;
  t = "One two three.\nFour five six.\nSeven eight nine.\nTen eleven twelve.\nA b c.";
  EXPECT_EQ(c4_filter(t, dt, &removed), nullptr);
  t = "One two three.\nFour five six.\nSeven eight nine.\nTen eleven twelve.";
  EXPECT_STREQ(c4_filter(t, dt, &removed), "too_few_sentences");
  // drop_lines off: the decision only
  C4Config keep = c;
  keep.drop_lines = false;
  t = "Menu Home\n" + l1 + "\n" + l2 + "\n" + l3;
  const std::string before = t;
  EXPECT_EQ(c4_filter(t, keep, &removed), nullptr);
  EXPECT_EQ(t, before);
}

// --- FineWeb -----------------------------------------------------------------------------------
TEST(CurateFineWeb, EveryRuleOnBothSides) {
  const FineWebConfig c;
  const auto w = words(1000, 6, 77);
  auto line = [&](size_t i, size_t nwords) {
    return join(std::vector<std::string>(w.begin() + long(i * 5), w.begin() + long(i * 5 + nwords)));
  };
  // line_punct_ratio: 12 of 100 lines end in punctuation (0.12, kept) vs 11
  auto punct_doc = [&](int k) {
    std::string t;
    for (int i = 0; i < 100; i++) t += std::string(i ? "\n" : "") + line(size_t(i), 5) + (i < k ? "." : "");
    return t;
  };
  EXPECT_EQ(fineweb_filter(punct_doc(12), c), nullptr);
  EXPECT_STREQ(fineweb_filter(punct_doc(11), c), "line_punct_ratio");
  // short lines (<= 30 chars): 67 of 100 (kept) vs 68
  auto short_doc = [&](int k) {
    std::string t;
    for (int i = 0; i < 100; i++) t += std::string(i ? "\n" : "") + (i < k ? line(size_t(i), 3) : line(size_t(i), 5)) + ".";
    return t;
  };
  EXPECT_EQ(fineweb_filter(short_doc(67), c), nullptr);
  EXPECT_STREQ(fineweb_filter(short_doc(68), c), "short_line_ratio");
  // characters in duplicated lines: <= 1% kept
  {
    std::string t;
    for (int i = 0; i < 100; i++) t += std::string(i ? "\n" : "") + line(size_t(i), 5) + ".";
    EXPECT_EQ(fineweb_filter(t + "\nok.", c), nullptr);
    EXPECT_STREQ(fineweb_filter(t + "\n" + line(0, 5) + ".\n" + line(1, 5) + ".", c), "char_dup_ratio");
  }
  // newlines per word
  // (the '.' is a word too: 2 words + '.' per line = 49/150 > 0.3; 3 words = 49/200)
  auto list_doc = [&](size_t nw) {
    std::string t;
    for (int i = 0; i < 50; i++) t += std::string(i ? "\n" : "") + line(size_t(i), nw) + std::string(20, 'x') + ".";
    return t;
  };
  EXPECT_STREQ(fineweb_filter(list_doc(2), c), "list_ratio");
  EXPECT_EQ(fineweb_filter(list_doc(3), c), nullptr);
  EXPECT_STREQ(fineweb_filter("\n \n", c), "empty");
}

}  // namespace
}  // namespace dsv3::curate
