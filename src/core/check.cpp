#include "core/check.h"

#include <cstdint>
#include <cstdio>

namespace dsv3 {

namespace {

// Length of the UTF-8 character at s[i] (1-4), or 0 if the bytes there are not one.
size_t utf8_len(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return uint8_t(s[i + k]); };
  const uint8_t c = b(0);
  size_t n;
  uint32_t cp;
  if (c < 0x80) return 1;
  if ((c & 0xe0) == 0xc0) n = 2, cp = c & 0x1f;
  else if ((c & 0xf0) == 0xe0) n = 3, cp = c & 0x0f;
  else if ((c & 0xf8) == 0xf0) n = 4, cp = c & 0x07;
  else return 0;
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; k++) {
    if ((b(k) & 0xc0) != 0x80) return 0;
    cp = cp << 6 | (b(k) & 0x3f);
  }
  const uint32_t min[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < min[n] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
  return n;
}

void escape_into(std::string& out, std::string_view s, size_t max_bytes, bool keep_lines) {
  size_t i = 0;
  for (; i < s.size() && i < max_bytes;) {
    const uint8_t c = uint8_t(s[i]);
    if (keep_lines && (c == '\n' || c == '\t')) {
      out += char(c), i++;
      continue;
    }
    if (c == '\n') out += "\\n", i++;
    else if (c == '\r') out += "\\r", i++;
    else if (c == '\t') out += "\\t", i++;
    else if (c < 0x20 || c == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf, i++;
    } else if (const size_t n = utf8_len(s, i); n > 0) {
      out.append(s.substr(i, n)), i += n;
    } else {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf, i++;
    }
  }
  if (i < s.size()) out += "... (" + std::to_string(s.size()) + " bytes)";
}

}  // namespace

std::string quote_bytes(std::string_view s, size_t max_bytes) {
  std::string out;
  escape_into(out, s, max_bytes, false);
  return out;
}

std::string printable_message(std::string_view s) {
  for (unsigned char c : s)
    if ((c < 0x20 && c != '\n' && c != '\t') || c == 0x7f) {
      std::string out;
      escape_into(out, s, s.size(), true);
      return out;
    }
  return std::string(s);  // the common case: nothing to escape, UTF-8 left as it is
}

}  // namespace dsv3
