#include "tokenizer/pretokenize.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

const char* const kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// deepseek-ai/DeepSeek-V3 tokenizer.json, pre_tokenizer: Sequence of these Splits (Isolated),
// then ByteLevel(use_regex = false).
const char* const kDeepSeekV3Patterns[3] = {
    R"(\p{N}{1,3})",
    "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",  // [一-龥぀-ゟ゠-ヿ]+ : CJK ideographs, kana
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)",
};

PretokSpec pretok_preset(const std::string& name) {
  if (name == "gpt2") return {"gpt2", {kGpt2Pattern}};
  if (name == "deepseek_v3")
    return {"deepseek_v3",
            {kDeepSeekV3Patterns[0], kDeepSeekV3Patterns[1], kDeepSeekV3Patterns[2]}};
  if (name == "none") return {"none", {}};
  fail("unknown pre-tokenizer '", name, "' (choose gpt2, deepseek_v3 or none)");
}

PretokSpec pretok_from_patterns(const std::vector<std::string>& patterns) {
  for (const char* name : {"gpt2", "deepseek_v3", "none"}) {
    PretokSpec p = pretok_preset(name);
    if (p.patterns == patterns) return p;
  }
  return {"custom", patterns};
}

namespace {

// Unicode White_Space, the \s of Rust's regex crate (tiktoken) and of Oniguruma (HF tokenizers).
// PCRE2's \s differs on U+180E (and its Unicode tables may be older), so \s and \S are rewritten
// into this explicit class before compiling.
constexpr const char* kWhiteSpace =
    R"(\t-\r\x20\x{85}\x{a0}\x{1680}\x{2000}-\x{200a}\x{2028}\x{2029}\x{202f}\x{205f}\x{3000})";

// Rewrites \s -> [ws] (or the bare ranges inside a class) and \S -> [^ws] outside a class.
// \S inside a class has no such rewrite and is left to PCRE2.
std::string expand_whitespace(const std::string& pat) {
  std::string out;
  bool in_class = false;
  size_t class_start = 0;  // index just after '[' or '[^', where a ']' is still literal
  for (size_t i = 0; i < pat.size(); i++) {
    const char c = pat[i];
    if (c == '\\' && i + 1 < pat.size()) {
      const char e = pat[i + 1];
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : "[" + std::string(kWhiteSpace) + "]";
      } else if (e == 'S' && !in_class) {
        out += "[^" + std::string(kWhiteSpace) + "]";
      } else {
        out += c;
        out += e;
      }
      i++;
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out += c;
      if (i + 1 < pat.size() && pat[i + 1] == '^') out += pat[++i];
      class_start = i + 1;
      continue;
    }
    if (in_class && c == '[' && i + 1 < pat.size() && pat[i + 1] == ':') {  // [:alpha:]
      const size_t end = pat.find(":]", i + 2);
      if (end != std::string::npos) {
        out += pat.substr(i, end + 2 - i);
        i = end + 1;
        continue;
      }
    }
    if (in_class && c == ']' && i != class_start) in_class = false;
    out += c;
  }
  return out;
}

// Per-thread PCRE2 state: match data (only the whole-match offsets are read) and a JIT stack
// large enough for pathological inputs (the 32 KiB default can run out on long backtracking).
struct ThreadScratch {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* stack = nullptr;
  ThreadScratch() {
    md = pcre2_match_data_create(1, nullptr);
    mc = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 * 1024, 64 * 1024 * 1024, nullptr);
    if (!md || !mc || !stack) throw std::bad_alloc();
    pcre2_jit_stack_assign(mc, nullptr, stack);
  }
  ~ThreadScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
  }
};

ThreadScratch& scratch() {
  thread_local ThreadScratch s;
  return s;
}

std::string pcre2_message(int code) {
  PCRE2_UCHAR buf[256];
  pcre2_get_error_message(code, buf, sizeof buf);
  return reinterpret_cast<const char*>(buf);
}

}  // namespace

struct Pretokenizer::Compiled {
  pcre2_code* code = nullptr;
  bool jit = false;
  std::string pattern;
};

Pretokenizer::Pretokenizer(PretokSpec spec) : spec_(std::move(spec)) {
  try {
    for (const std::string& p : spec_.patterns) {
      DSV3_CHECK(!p.empty(), "pre-tokenizer '", spec_.name, "': empty regex");
      auto* c = new Compiled;
      stages_.push_back(c);
      c->pattern = p;
      const std::string expanded = expand_whitespace(p);
      int err = 0;
      PCRE2_SIZE at = 0;
      // MATCH_INVALID_UTF: invalid UTF-8 is allowed in the subject and simply never matches.
      c->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(expanded.data()), expanded.size(),
                              PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF, &err, &at,
                              nullptr);
      DSV3_CHECK(c->code, "pre-tokenizer '", spec_.name, "': regex does not compile: ",
                 pcre2_message(err), " (at offset ", at, " of the PCRE2 form of '", p, "')");
      c->jit = pcre2_jit_compile(c->code, PCRE2_JIT_COMPLETE) == 0;
    }
  } catch (...) {
    for (Compiled* c : stages_) {
      pcre2_code_free(c->code);
      delete c;
    }
    throw;
  }
  // Decided by the patterns themselves, not by the (free-form) name.
  const std::string preset = pretok_from_patterns(spec_.patterns).name;
  cuts_between_words_ = preset == "gpt2" || preset == "deepseek_v3";
}

Pretokenizer::~Pretokenizer() {
  for (Compiled* c : stages_) {
    pcre2_code_free(c->code);
    delete c;
  }
}

void Pretokenizer::split_raw(std::string_view text, void (*emit)(void*, std::string_view),
                             void* ctx) const {
  if (text.empty()) return;
  ThreadScratch& s = scratch();
  // Stage k cuts `seg` into matches and gaps and hands each to stage k + 1; past the last stage
  // the pieces are emitted. Recursion depth is the number of stages (1 to 3 in practice).
  auto run = [&](auto&& self, std::string_view seg, size_t k) -> void {
    if (k == stages_.size()) {
      emit(ctx, seg);
      return;
    }
    const Compiled& c = *stages_[k];
    const auto* subject = reinterpret_cast<PCRE2_SPTR>(seg.data());
    size_t pos = 0;
    while (pos < seg.size()) {
      // NOTEMPTY: an empty match would make no piece; asking for a non-empty one instead keeps
      // the scan moving (gpt2 and deepseek_v3 have no empty matches anyway).
      const int rc = c.jit ? pcre2_jit_match(c.code, subject, seg.size(), pos, PCRE2_NOTEMPTY,
                                             s.md, s.mc)
                           : pcre2_match(c.code, subject, seg.size(), pos, PCRE2_NOTEMPTY, s.md,
                                         s.mc);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      DSV3_CHECK(rc >= 0, "pre-tokenizer regex '", c.pattern, "' failed at byte ", pos, " of a ",
                 seg.size(), "-byte piece: ", pcre2_message(rc));
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
      const size_t b = ov[0], e = ov[1];
      if (b > pos) self(self, seg.substr(pos, b - pos), k + 1);
      self(self, seg.substr(b, e - b), k + 1);
      pos = e;
    }
    if (pos < seg.size()) self(self, seg.substr(pos), k + 1);
  };
  run(run, text, 0);
}

std::vector<size_t> safe_cuts(const Pretokenizer& pre, std::string_view text, int parts) {
  std::vector<size_t> cuts;
  if (!pre.cuts_between_words() || parts <= 1) return cuts;
  auto letter = [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); };
  const size_t step = text.size() / size_t(parts);
  for (int i = 1; i < parts; i++) {
    size_t p = std::max(size_t(i) * step, cuts.empty() ? size_t(1) : cuts.back() + 1);
    // the first "x yz" at or after the nominal position: cut before the space
    for (; p + 1 < text.size(); p++)
      if (text[p] == ' ' && letter(text[p - 1]) && letter(text[p + 1])) break;
    if (p + 1 >= text.size()) break;
    cuts.push_back(p);
  }
  return cuts;
}

}  // namespace dsv3
