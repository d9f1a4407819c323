// Sensitive-information scrubbing (D5). Each kind has a PCRE2 pattern (JIT-compiled) that finds
// candidates and, where the kind has one, a checksum or structure test that must pass before
// anything is replaced: Luhn for card numbers, ISO 13616 mod-97 for IBANs, ISO 7064 MOD 11-2
// plus the birth date for Chinese resident ids, inet_pton for IPv6, SSA rules for US SSNs. The
// tests are what keep false positives below one per MB of ordinary prose.
//
// A match is replaced by a typed placeholder, e.g. "|||EMAIL_ADDRESS|||" (dolma's convention,
// extended to every type here), and counted per type. Kinds are tried in a fixed priority order
// (private keys, then tokens and keys, then emails, IBANs, ids, cards, SSNs, IPs, phones); a
// later kind never replaces text inside an earlier match.
#pragma once
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "curate/document.h"

namespace dsv3::curate {

struct PiiConfig {
  bool email = true;
  bool phone = true;
  bool ip = true;           // IPv4 and IPv6
  bool credit_card = true;
  bool iban = true;
  bool us_ssn = true;
  bool cn_resident_id = true;
  bool secrets = true;      // API keys, tokens, private keys
};

const char* pii_type_name(PiiType t);    // "email", "phone", ...
const char* pii_placeholder(PiiType t);  // "|||EMAIL_ADDRESS|||", ...

struct PiiMatch {
  size_t begin, end;  // bytes
  PiiType type;
};

// Compiled once, then used from any number of threads (match state is per thread).
class PiiScrubber {
 public:
  explicit PiiScrubber(const PiiConfig& cfg);
  ~PiiScrubber();
  PiiScrubber(const PiiScrubber&) = delete;
  PiiScrubber& operator=(const PiiScrubber&) = delete;

  // Non-overlapping matches sorted by position.
  void find(std::string_view text, std::vector<PiiMatch>& out) const;
  // Replaces every match by its placeholder and adds to `counts`; returns the number replaced.
  size_t scrub(std::string& text, PiiCounts& counts) const;

  struct Detector;

 private:
  PiiConfig cfg_;
  std::vector<std::unique_ptr<Detector>> detectors_;
};

// The checks, exposed for tests.
bool luhn_valid(std::string_view digits);
bool iban_valid(std::string_view iban);            // spaces allowed
bool cn_resident_id_valid(std::string_view id);    // 18 characters
bool us_ssn_valid(std::string_view ssn);           // AAA-GG-SSSS

}  // namespace dsv3::curate
