#include "curate/normalize.h"

#include <utf8proc.h>

#include <cstdlib>

#include "core/check.h"
#include "curate/text.h"

namespace dsv3::curate {

std::string nfc(const std::string& text) {
  const size_t n = text.size();
  std::string out;
  out.reserve(n + 8);
  size_t i = 0;
  while (i < n) {
    // Copy ASCII up to the first non-ASCII byte, keeping back the ASCII character just before
    // it: that one may compose with a following combining mark. An ASCII character never
    // composes with what precedes it and never reorders, so cutting between two ASCII
    // characters cannot change the NFC result.
    size_t j = i;
    while (j < n && static_cast<unsigned char>(text[j]) < 0x80) j++;
    if (j == n) {
      out.append(text, i, n - i);
      break;
    }
    size_t seg = j > i ? j - 1 : j;
    out.append(text, i, seg - i);
    size_t k = j;
    while (k < n && static_cast<unsigned char>(text[k]) >= 0x80) k++;
    // [seg, k): one ASCII starter (maybe) and a run of non-ASCII characters
    utf8proc_uint8_t* res = nullptr;
    const utf8proc_ssize_t len = utf8proc_map(
        reinterpret_cast<const utf8proc_uint8_t*>(text.data() + seg), utf8proc_ssize_t(k - seg),
        &res, utf8proc_option_t(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    DSV3_CHECK(len >= 0, "NFC normalisation failed: ", utf8proc_errmsg(len));
    out.append(reinterpret_cast<const char*>(res), size_t(len));
    std::free(res);
    i = k;
  }
  return out;
}

NormalizeCounts normalize_text(std::string& text, const NormalizeConfig& cfg) {
  NormalizeCounts counts;
  if (cfg.nfc && !is_ascii(text)) {
    std::string composed = nfc(text);
    if (composed != text) {
      counts.nfc_changed = 1;
      text.swap(composed);
    }
  }
  if (!cfg.controls && !cfg.whitespace) return counts;
  // Pass 1: characters. Line endings become \n, controls go, space separators become ' '.
  std::string out;
  out.reserve(text.size());
  const size_t n = text.size();
  size_t i = 0;
  while (i < n) {
    const unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      i++;
      if (c == '\r') {
        if (i < n && text[i] == '\n') i++;
        out += '\n';
      } else if (cfg.controls && ((c < 0x20 && c != '\t' && c != '\n') || c == 0x7f)) {
        counts.controls_removed++;
      } else {
        out += char(c);
      }
      continue;
    }
    const size_t start = i;
    const uint32_t cp = utf8_next(text, i);
    if (cfg.controls && ((cp >= 0x80 && cp <= 0x9f) || cp == 0xfeff)) {
      counts.controls_removed++;
    } else if (cfg.controls && (cp == 0x2028 || cp == 0x2029)) {
      out += '\n';
    } else if (cfg.whitespace && cp != 0x85 && is_space(cp)) {
      out += ' ';
    } else {
      out.append(text, start, i - start);
    }
  }
  if (!cfg.whitespace) {
    text.swap(out);
    return counts;
  }
  // Pass 2: lines. Trailing blanks cut, at most one blank line in a row, none at either end.
  text.clear();
  int blank_run = 0;
  bool started = false;
  for_each_line(out, [&](std::string_view line) {
    size_t e = line.size();
    while (e > 0 && (line[e - 1] == ' ' || line[e - 1] == '\t')) e--;
    if (e == 0) {
      blank_run++;
      return;
    }
    if (started) text.append(blank_run > 0 ? "\n\n" : "\n");
    text.append(line.data(), e);
    started = true;
    blank_run = 0;
  });
  return counts;
}

}  // namespace dsv3::curate
