// Pre-tokenisation (D9): cutting text into the pieces BPE merges within, with PCRE2 + JIT
// (std::regex has no \p{..}). A pre-tokenizer is a sequence of regexes applied like Hugging
// Face's Sequence of Split(behavior = Isolated) pre-tokenizers: the first regex cuts the text into
// its matches and the gaps between them, the second cuts each of those pieces, and so on. Gaps are
// kept, so the pieces always cover the input exactly -- that is what makes decode(encode(x)) == x
// for any bytes, invalid UTF-8 included (an invalid sequence matches nothing and becomes a gap).
//
// GPT-2's single regex gives the same pieces as tiktoken's findall on valid UTF-8, because every
// character of valid text is matched by one of its alternatives.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3 {

struct PretokSpec {
  std::string name;                   // "gpt2", "deepseek_v3", "none" or "custom"
  std::vector<std::string> patterns;  // applied in sequence (see above); empty: one piece
};

extern const char* const kGpt2Pattern;
extern const char* const kDeepSeekV3Patterns[3];

// "gpt2", "deepseek_v3" or "none"; anything else is an Error listing those names.
PretokSpec pretok_preset(const std::string& name);
// The preset whose patterns are exactly `patterns`, else {"custom", patterns}.
PretokSpec pretok_from_patterns(const std::vector<std::string>& patterns);

// A compiled pre-tokenizer. Thread-safe: split() may run on many threads at once (each thread
// keeps its own PCRE2 match data).
class Pretokenizer {
 public:
  explicit Pretokenizer(PretokSpec spec);  // throws an Error naming a pattern that does not compile
  ~Pretokenizer();
  Pretokenizer(const Pretokenizer&) = delete;
  Pretokenizer& operator=(const Pretokenizer&) = delete;

  const PretokSpec& spec() const { return spec_; }

  // Calls emit(piece) for each piece of `text`, in order; the pieces are non-empty and their
  // concatenation is `text`.
  template <typename F>
  void split(std::string_view text, F&& emit) const {
    split_raw(text, [](void* ctx, std::string_view p) { (*static_cast<F*>(ctx))(p); }, &emit);
  }
  void split_raw(std::string_view text, void (*emit)(void*, std::string_view), void* ctx) const;

  // True when cutting a text before a ' ' that sits between two ASCII letters ("a| b") and
  // pre-tokenising the halves separately gives the same pieces as the whole -- which holds for
  // the gpt2 and deepseek_v3 presets (no alternative spans a letter followed by a space, and none
  // looks behind). Custom patterns are not analysed, so they answer false and run on one thread.
  bool cuts_between_words() const { return cuts_between_words_; }

 private:
  struct Compiled;
  PretokSpec spec_;
  std::vector<Compiled*> stages_;
  bool cuts_between_words_ = false;
};

// Positions at which `text` may be cut into about `parts` chunks that pre-tokenise independently
// (see cuts_between_words): ascending, excluding 0 and text.size(). Empty when the pre-tokenizer
// allows no cuts or no such position exists.
std::vector<size_t> safe_cuts(const Pretokenizer& pre, std::string_view text, int parts);

}  // namespace dsv3
