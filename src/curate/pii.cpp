#define PCRE2_CODE_UNIT_WIDTH 8
#include "curate/pii.h"

#include <arpa/inet.h>
#include <pcre2.h>

#include <algorithm>
#include <cstring>
#include <functional>

#include "core/check.h"

namespace dsv3::curate {

const char* pii_type_name(PiiType t) {
  switch (t) {
    case PiiType::Email: return "email";
    case PiiType::Phone: return "phone";
    case PiiType::Ipv4: return "ipv4";
    case PiiType::Ipv6: return "ipv6";
    case PiiType::CreditCard: return "credit_card";
    case PiiType::Iban: return "iban";
    case PiiType::UsSsn: return "us_ssn";
    case PiiType::CnResidentId: return "cn_resident_id";
    case PiiType::ApiKey: return "api_key";
    case PiiType::PrivateKey: return "private_key";
    case PiiType::Token: return "token";
    case PiiType::Count_: break;
  }
  return "?";
}

const char* pii_placeholder(PiiType t) {
  switch (t) {
    case PiiType::Email: return "|||EMAIL_ADDRESS|||";
    case PiiType::Phone: return "|||PHONE_NUMBER|||";
    case PiiType::Ipv4: return "|||IP_ADDRESS|||";
    case PiiType::Ipv6: return "|||IP_ADDRESS|||";
    case PiiType::CreditCard: return "|||CREDIT_CARD|||";
    case PiiType::Iban: return "|||IBAN|||";
    case PiiType::UsSsn: return "|||US_SSN|||";
    case PiiType::CnResidentId: return "|||CN_RESIDENT_ID|||";
    case PiiType::ApiKey: return "|||API_KEY|||";
    case PiiType::PrivateKey: return "|||PRIVATE_KEY|||";
    case PiiType::Token: return "|||SECRET_TOKEN|||";
    case PiiType::Count_: break;
  }
  return "|||PII|||";
}

// --- checks ------------------------------------------------------------------------------------
bool luhn_valid(std::string_view digits) {
  int sum = 0, n = 0;
  for (size_t i = digits.size(); i-- > 0;) {
    const char c = digits[i];
    if (c < '0' || c > '9') continue;
    int d = c - '0';
    if (n++ & 1) {
      d *= 2;
      if (d > 9) d -= 9;
    }
    sum += d;
  }
  return n > 0 && sum % 10 == 0;
}

namespace {

// IBAN lengths by country (SWIFT IBAN registry).
struct IbanLen {
  char cc[3];
  int len;
};
constexpr IbanLen kIbanLengths[] = {
    {"AD", 24}, {"AE", 23}, {"AL", 28}, {"AT", 20}, {"AZ", 28}, {"BA", 20}, {"BE", 16},
    {"BG", 22}, {"BH", 22}, {"BI", 27}, {"BR", 29}, {"BY", 28}, {"CH", 21}, {"CR", 22},
    {"CY", 28}, {"CZ", 24}, {"DE", 22}, {"DJ", 27}, {"DK", 18}, {"DO", 28}, {"EE", 20},
    {"EG", 29}, {"ES", 24}, {"FI", 18}, {"FK", 18}, {"FO", 18}, {"FR", 27}, {"GB", 22},
    {"GE", 22}, {"GI", 23}, {"GL", 18}, {"GR", 27}, {"GT", 28}, {"HN", 28}, {"HR", 21},
    {"HU", 28}, {"IE", 22}, {"IL", 23}, {"IQ", 23}, {"IS", 26}, {"IT", 27}, {"JO", 30},
    {"KW", 30}, {"KZ", 20}, {"LB", 28}, {"LC", 32}, {"LI", 21}, {"LT", 20}, {"LU", 20},
    {"LV", 21}, {"LY", 25}, {"MC", 27}, {"MD", 24}, {"ME", 22}, {"MK", 19}, {"MN", 20},
    {"MR", 27}, {"MT", 31}, {"MU", 30}, {"NI", 28}, {"NL", 18}, {"NO", 15}, {"OM", 23},
    {"PK", 24}, {"PL", 28}, {"PS", 29}, {"PT", 25}, {"QA", 29}, {"RO", 24}, {"RS", 22},
    {"RU", 33}, {"SA", 24}, {"SC", 31}, {"SD", 18}, {"SE", 24}, {"SI", 19}, {"SK", 24},
    {"SM", 27}, {"SO", 23}, {"ST", 25}, {"SV", 28}, {"TL", 23}, {"TN", 24}, {"TR", 26},
    {"UA", 29}, {"VA", 22}, {"VG", 24}, {"XK", 20}, {"YE", 30}};

bool is_digit(char c) { return c >= '0' && c <= '9'; }

}  // namespace

bool iban_valid(std::string_view in) {
  std::string s;
  for (char c : in)
    if (c != ' ') s += c;
  if (s.size() < 15 || s.size() > 34) return false;
  int want = 0;
  for (const auto& e : kIbanLengths)
    if (s[0] == e.cc[0] && s[1] == e.cc[1]) want = e.len;
  if (want != int(s.size())) return false;
  // ISO 13616: move the first four characters to the end, letters -> 10..35, mod 97 == 1.
  const std::string r = s.substr(4) + s.substr(0, 4);
  int mod = 0;
  for (char c : r) {
    if (is_digit(c)) {
      mod = (mod * 10 + (c - '0')) % 97;
    } else if (c >= 'A' && c <= 'Z') {
      const int v = c - 'A' + 10;
      mod = (mod * 100 + v) % 97;
    } else {
      return false;
    }
  }
  return mod == 1;
}

bool cn_resident_id_valid(std::string_view id) {
  if (id.size() != 18) return false;
  static const int w[17] = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
  int sum = 0;
  for (int i = 0; i < 17; i++) {
    if (!is_digit(id[size_t(i)])) return false;
    sum += (id[size_t(i)] - '0') * w[i];
  }
  const char check = "10X98765432"[sum % 11];
  const char last = id[17] == 'x' ? 'X' : id[17];
  if (last != check) return false;
  // the birth date (YYYYMMDD at 6..13) must exist
  auto num = [&](size_t a, size_t n) {
    int v = 0;
    for (size_t i = a; i < a + n; i++) v = v * 10 + (id[i] - '0');
    return v;
  };
  const int y = num(6, 4), m = num(10, 2), d = num(12, 2);
  if (y < 1900 || y > 2099 || m < 1 || m > 12 || d < 1) return false;
  static const int days[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  if (d > days[m - 1]) return false;
  if (m == 2 && d == 29 && !((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) return false;
  return true;
}

bool us_ssn_valid(std::string_view s) {
  // Never issued (SSA): area 000, 666, 900-999; group 00; serial 0000.
  if (s.size() != 11 || s[3] != '-' || s[6] != '-') return false;
  for (size_t i : {0, 1, 2, 4, 5, 7, 8, 9, 10})
    if (!is_digit(s[i])) return false;
  const std::string_view area = s.substr(0, 3), group = s.substr(4, 2), serial = s.substr(7, 4);
  if (area == "000" || area == "666" || area[0] == '9') return false;
  return group != "00" && serial != "0000";
}

// --- detectors -----------------------------------------------------------------------------
namespace {

struct Scratch {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* mc = nullptr;
  pcre2_jit_stack* stack = nullptr;
  Scratch() {
    md = pcre2_match_data_create(8, nullptr);
    mc = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 4 * 1024 * 1024, nullptr);
    if (!md || !mc || !stack) throw std::bad_alloc();
    pcre2_jit_stack_assign(mc, nullptr, stack);
  }
  ~Scratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(mc);
    pcre2_match_data_free(md);
  }
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

std::string digits_of(std::string_view s) {
  std::string d;
  for (char c : s)
    if (is_digit(c)) d += c;
  return d;
}

bool has_digit(std::string_view s) { return std::any_of(s.begin(), s.end(), is_digit); }
bool has_alpha(std::string_view s) {
  return std::any_of(s.begin(), s.end(),
                     [](char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); });
}

// Card brands by IIN prefix and length: with Luhn alone one random digit string in ten passes.
bool card_brand_ok(const std::string& d) {
  const size_t n = d.size();
  auto pre = [&](int digits) { return std::stoi(d.substr(0, size_t(digits))); };
  if (d[0] == '4') return n == 13 || n == 16 || n == 19;                       // Visa
  if (pre(2) >= 51 && pre(2) <= 55) return n == 16;                           // Mastercard
  if (pre(4) >= 2221 && pre(4) <= 2720) return n == 16;                       // Mastercard
  if (pre(2) == 34 || pre(2) == 37) return n == 15;                           // Amex
  if (pre(4) == 6011 || pre(2) == 65 || (pre(3) >= 644 && pre(3) <= 649))     // Discover
    return n >= 16 && n <= 19;
  if (pre(4) >= 3528 && pre(4) <= 3589) return n >= 16 && n <= 19;            // JCB
  if ((pre(3) >= 300 && pre(3) <= 305) || pre(2) == 36 || pre(2) == 38 || pre(2) == 39)
    return n >= 14 && n <= 19;                                                // Diners
  if (pre(2) == 62) return n >= 16 && n <= 19;                                // UnionPay
  if (pre(2) == 50 || (pre(2) >= 56 && pre(2) <= 69)) return n >= 12 && n <= 19;  // Maestro
  return false;
}

bool ipv6_ok(std::string_view s) {
  const std::string str(s);
  in6_addr a;
  if (inet_pton(AF_INET6, str.c_str(), &a) != 1) return false;
  // "1::2" is a valid address and also Python slice syntax: ask for three groups, or a hex
  // letter, before calling it an address.
  int groups = 0;
  bool letter = false, in_group = false;
  for (char c : s) {
    if (c == ':') {
      in_group = false;
    } else {
      if (!in_group) groups++;
      in_group = true;
      if ((c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')) letter = true;
    }
  }
  return groups >= 3 || (letter && groups >= 2);
}

bool phone_digits_ok(std::string_view s, size_t lo, size_t hi) {
  const size_t n = digits_of(s).size();
  return n >= lo && n <= hi;
}

}  // namespace

struct PiiScrubber::Detector {
  PiiType type;
  pcre2_code* code = nullptr;
  bool jit = false;
  int group = 0;                                       // capture group replaced (0 = all)
  const char* needle = nullptr;                        // required substring, or null
  std::function<bool(std::string_view)> valid;         // on the replaced span
  ~Detector() { pcre2_code_free(code); }
};

namespace {

std::unique_ptr<PiiScrubber::Detector> make(PiiType type, const char* pattern, int group,
                                            const char* needle,
                                            std::function<bool(std::string_view)> valid) {
  auto d = std::make_unique<PiiScrubber::Detector>();
  d->type = type;
  d->group = group;
  d->needle = needle;
  d->valid = std::move(valid);
  int err = 0;
  PCRE2_SIZE at = 0;
  d->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern), PCRE2_ZERO_TERMINATED, 0, &err,
                          &at, nullptr);
  if (!d->code) {
    PCRE2_UCHAR buf[256];
    pcre2_get_error_message(err, buf, sizeof buf);
    fail("PII pattern for ", pii_type_name(type), " does not compile at ", at, ": ",
         reinterpret_cast<const char*>(buf));
  }
  d->jit = pcre2_jit_compile(d->code, PCRE2_JIT_COMPLETE) == 0;
  return d;
}

// Boundaries: a match may not continue a word or a number on either side.
#define L_EDGE "(?<![A-Za-z0-9_])"
#define R_EDGE "(?![A-Za-z0-9_])"

}  // namespace

PiiScrubber::PiiScrubber(const PiiConfig& cfg) : cfg_(cfg) {
  auto any = [](std::string_view) { return true; };
  if (cfg.secrets) {
    // PEM private keys, with or without their END line (a truncated paste still leaks).
    detectors_.push_back(make(
        PiiType::PrivateKey,
        "-----BEGIN[A-Z0-9 ]{0,32}PRIVATE KEY(?: BLOCK)?-----(?:[\\s\\S]*?-----END[A-Z0-9 ]{0,32}"
        "PRIVATE KEY(?: BLOCK)?-----|[A-Za-z0-9+/=\\s:,-]*)",
        0, "PRIVATE KEY", any));
    // Tokens in their providers' formats: GitHub, GitLab, Slack, npm, JWTs.
    detectors_.push_back(make(PiiType::Token,
                              L_EDGE "(?:gh[pousr]_[A-Za-z0-9]{36,255}|github_pat_[A-Za-z0-9_]{22,255}"
                              "|glpat-[A-Za-z0-9_-]{20,}|xox[abposr]-[A-Za-z0-9-]{10,}"
                              "|npm_[A-Za-z0-9]{36}"
                              "|eyJ[A-Za-z0-9_-]{8,}\\.eyJ[A-Za-z0-9_-]{8,}\\.[A-Za-z0-9_-]{8,})" R_EDGE,
                              0, nullptr, any));
    // API keys in their providers' formats: AWS key ids, Google, Stripe, OpenAI/Anthropic
    // style sk-..., SendGrid, Hugging Face. A digit is required (real keys are random).
    detectors_.push_back(make(PiiType::ApiKey,
                              L_EDGE "(?:(?:AKIA|ASIA|ABIA|ACCA)[0-9A-Z]{16}|AIza[0-9A-Za-z_-]{35}"
                              "|[sr]k_(?:live|test)_[0-9A-Za-z]{16,}"
                              "|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}"
                              "|SG\\.[A-Za-z0-9_-]{22}\\.[A-Za-z0-9_-]{43}|hf_[A-Za-z0-9]{34})" R_EDGE,
                              0, nullptr, [](std::string_view s) { return has_digit(s); }));
    // "Bearer <token>" headers.
    detectors_.push_back(make(PiiType::Token,
                              "(?i:\\bbearer)\\s+([A-Za-z0-9._~+/-]{20,}=*)", 1, nullptr,
                              [](std::string_view s) { return has_digit(s) && has_alpha(s); }));
    // key = "value" assignments of secrets. The value must mix letters and digits, which code
    // like `password = get_password()` and prose do not.
    detectors_.push_back(make(
        PiiType::ApiKey,
        "(?i:\\b(?:api[_-]?key|apikey|secret[_-]?key|access[_-]?key(?:[_-]?id)?|private[_-]?key)"
        "\\b)[\"']?\\s*[:=]\\s*[\"']?([A-Za-z0-9_+/=.-]{16,})",
        1, nullptr, [](std::string_view s) { return has_digit(s) && has_alpha(s); }));
    detectors_.push_back(make(
        PiiType::Token,
        "(?i:\\b(?:access[_-]?token|auth[_-]?token|client[_-]?secret|secret|token|password|"
        "passwd|pwd)\\b)[\"']?\\s*[:=]\\s*[\"']?([A-Za-z0-9_+/=.!@#$%^&*-]{12,})",
        1, nullptr, [](std::string_view s) { return has_digit(s) && has_alpha(s); }));
  }
  if (cfg.iban)
    detectors_.push_back(make(PiiType::Iban,
                              "(?<![A-Za-z0-9])[A-Z]{2}[0-9]{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,4})?"
                              "(?![A-Za-z0-9])",
                              0, nullptr, [](std::string_view s) { return iban_valid(s); }));
  if (cfg.cn_resident_id)
    detectors_.push_back(make(PiiType::CnResidentId,
                              "(?<![0-9A-Za-z])[1-8][0-9]{5}(?:18|19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
                              "(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9A-Za-z])",
                              0, nullptr,
                              [](std::string_view s) { return cn_resident_id_valid(s); }));
  if (cfg.credit_card)
    // 13-19 digits, optionally in groups split by one kind of separator; Luhn + brand prefix.
    detectors_.push_back(make(PiiType::CreditCard,
                              "(?<![0-9A-Za-z.,-])[0-9](?:[0-9]{11,18}|[0-9]{1,5}(?:([ -])[0-9]{2,6})"
                              "(?:\\1[0-9]{2,6}){1,4})(?![0-9A-Za-z]|[.,-][0-9])",
                              0, nullptr, [](std::string_view s) {
                                const std::string d = digits_of(s);
                                return d.size() >= 12 && d.size() <= 19 && luhn_valid(d) &&
                                       card_brand_ok(d);
                              }));
  if (cfg.us_ssn)
    detectors_.push_back(make(PiiType::UsSsn,
                              "(?<![0-9A-Za-z-])[0-9]{3}-[0-9]{2}-[0-9]{4}(?![0-9A-Za-z]|-[0-9])", 0,
                              nullptr, [](std::string_view s) { return us_ssn_valid(s); }));
  if (cfg.email)
    // local@domain.tld; the TLD is 2-24 letters. '@' is required before the regex runs.
    detectors_.push_back(make(PiiType::Email,
                              "(?<![A-Za-z0-9._%+-])[A-Za-z0-9_%+-][A-Za-z0-9._%+-]{0,63}@"
                              "[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?"
                              "(?:\\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)*\\.[A-Za-z]{2,24}"
                              "(?![A-Za-z0-9-])",
                              0, "@", any));
  if (cfg.ip) {
    detectors_.push_back(make(PiiType::Ipv6,
                              "(?<![A-Za-z0-9_:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:[0-9A-Fa-f]{1,4}"
                              "|(?:[0-9]{1,3}\\.){3}[0-9]{1,3})?(?![A-Za-z0-9_:])",
                              0, "::", ipv6_ok));
    detectors_.push_back(make(PiiType::Ipv6,
                              "(?<![A-Za-z0-9_:.])(?:[0-9A-Fa-f]{1,4}:){7}[0-9A-Fa-f]{1,4}"
                              "(?![A-Za-z0-9_:])",
                              0, ":", ipv6_ok));
    detectors_.push_back(make(PiiType::Ipv4,
                              "(?<![A-Za-z0-9_.])(?:(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])\\.){3}"
                              "(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(?![A-Za-z0-9_]|\\.[0-9])",
                              0, nullptr, any));
  }
  if (cfg.phone) {
    // International: +CC then 2-6 groups (an area code may sit in parentheses); E.164 allows
    // 8..15 digits in all.
    detectors_.push_back(make(PiiType::Phone,
                              "(?<![A-Za-z0-9_+])\\+[1-9][0-9]{0,2}(?:[ .-]?(?:\\([0-9]{1,4}\\)|[0-9]{1,5})){2,6}"
                              "(?![A-Za-z0-9_]|[.-][0-9])",
                              0, "+", [](std::string_view s) { return phone_digits_ok(s, 8, 15); }));
    // North American: (555) 123-4567, 555-123-4567, 555.123.4567, 1-800-555-0199. The
    // separator must repeat, and area and exchange codes start with 2-9 (NANP).
    detectors_.push_back(make(PiiType::Phone,
                              "(?<![A-Za-z0-9_+.-])(?:1[ .-])?(?:\\([2-9][0-9]{2}\\) ?[2-9][0-9]{2}[ .-]"
                              "|[2-9][0-9]{2}([.-])[2-9][0-9]{2}\\1)[0-9]{4}(?![A-Za-z0-9_]|[.-][0-9])",
                              0, nullptr, any));
    // National formats with a trunk 0: 020 7946 0958 (UK), 06 12 34 56 78 (FR),
    // 030-1234-5678; one kind of separator, 9..11 digits.
    detectors_.push_back(make(PiiType::Phone,
                              "(?<![A-Za-z0-9_+.,-])\\(?0[1-9][0-9]{0,3}\\)?([ -])[0-9]{2,4}(?:\\1[0-9]{2,4}){1,3}"
                              "(?![A-Za-z0-9_]|[.,-][0-9])",
                              0, nullptr, [](std::string_view s) { return phone_digits_ok(s, 9, 11); }));
  }
}

PiiScrubber::~PiiScrubber() = default;

void PiiScrubber::find(std::string_view text, std::vector<PiiMatch>& out) const {
  out.clear();
  if (text.empty()) return;
  Scratch& s = scratch();
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(text.data());
  // `taken` stays sorted, so overlap with an earlier (higher-priority) match is a binary search.
  auto overlaps = [&](size_t b, size_t e) {
    auto it = std::lower_bound(out.begin(), out.end(), b,
                               [](const PiiMatch& m, size_t pos) { return m.end <= pos; });
    return it != out.end() && it->begin < e;
  };
  for (const auto& dp : detectors_) {
    const Detector& d = *dp;
    if (d.needle && text.find(d.needle) == std::string_view::npos) continue;
    size_t pos = 0;
    while (pos < text.size()) {
      const int rc = d.jit ? pcre2_jit_match(d.code, subject, text.size(), pos, 0, s.md, s.mc)
                           : pcre2_match(d.code, subject, text.size(), pos, 0, s.md, s.mc);
      if (rc == PCRE2_ERROR_NOMATCH) break;
      if (rc < 0) break;  // a resource limit on a pathological text: leave the rest as is
      const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(s.md);
      const size_t mb = ov[0], me = ov[1];
      size_t b = mb, e = me;
      if (d.group > 0 && d.group < rc && ov[2 * d.group] != PCRE2_UNSET) {
        b = ov[2 * d.group];
        e = ov[2 * d.group + 1];
      }
      pos = me > mb ? me : mb + 1;
      if (e <= b || !d.valid(text.substr(b, e - b)) || overlaps(b, e)) {
        // a rejected candidate: look again one byte later, so "x 4111..." inside a longer
        // failed candidate is still found
        if (e <= b || me <= mb) continue;
        pos = mb + 1;
        continue;
      }
      PiiMatch m{b, e, d.type};
      out.insert(std::upper_bound(out.begin(), out.end(), m,
                                  [](const PiiMatch& x, const PiiMatch& y) {
                                    return x.begin < y.begin;
                                  }),
                 m);
    }
  }
}

size_t PiiScrubber::scrub(std::string& text, PiiCounts& counts) const {
  thread_local std::vector<PiiMatch> matches;
  find(text, matches);
  if (matches.empty()) return 0;
  std::string out;
  out.reserve(text.size());
  size_t pos = 0;
  for (const PiiMatch& m : matches) {
    out.append(text, pos, m.begin - pos);
    out += pii_placeholder(m.type);
    counts[size_t(m.type)]++;
    pos = m.end;
  }
  out.append(text, pos, std::string::npos);
  text.swap(out);
  return matches.size();
}

}  // namespace dsv3::curate
