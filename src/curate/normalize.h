// Normalisation (D2): the first stage, so every later rule and hash sees one spelling of a text.
//  - Unicode NFC through utf8proc (canonical composition: "e" + U+0301 -> "é").
//  - Control characters: C0 except tab and newline, DEL, C1, and U+FEFF (BOM / zero-width
//    no-break space) are removed; U+2028/U+2029 become newlines; \r\n and \r become \n.
//  - Whitespace: Unicode space separators (NBSP, U+2000..U+200A, U+3000, ...) become ' ';
//    trailing spaces and tabs are cut from every line; runs of blank lines shrink to one; blank
//    lines at the start and end go. Leading spaces of a line are kept (code indentation).
#pragma once
#include <cstdint>
#include <string>

namespace dsv3::curate {

struct NormalizeConfig {
  bool nfc = true;
  bool controls = true;
  bool whitespace = true;
};

struct NormalizeCounts {
  uint32_t controls_removed = 0;
  uint32_t nfc_changed = 0;  // 1 when NFC changed the text
};

// In place; `text` must be valid UTF-8 (the reader guarantees it).
NormalizeCounts normalize_text(std::string& text, const NormalizeConfig& cfg);

// NFC of valid UTF-8 (utf8proc), with an ASCII fast path: pure-ASCII runs are already NFC and
// are copied, so only the neighbourhood of non-ASCII characters goes through utf8proc.
std::string nfc(const std::string& text);

}  // namespace dsv3::curate
