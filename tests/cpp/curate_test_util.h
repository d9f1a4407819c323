// Helpers for the curation tests and the planted benchmark: documents cut from ../shared texts,
// near-duplicates at a known Jaccard similarity, PII values of every type that pass their
// checksums, and small file utilities.
#pragma once
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/rng.h"
#include "curate/pii.h"
#include "curate/text.h"
#include "test_util.h"

namespace dsv3::test {

// Documents of `min_words`..`max_words` words made of consecutive paragraphs of the shared
// texts (hard-wrapped lines joined, so each paragraph is one line as on the web).
inline std::vector<std::string> shared_documents(const std::vector<std::string>& files,
                                                 size_t min_words, size_t max_words,
                                                 size_t max_docs) {
  std::vector<std::string> docs;
  for (const auto& f : files) {
    std::ifstream in(f, std::ios::binary);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string para, doc;
    size_t doc_words = 0;
    auto flush_para = [&] {
      size_t w = 0;
      for (size_t i = 0; i < para.size(); i++)
        w += (para[i] != ' ' && (i == 0 || para[i - 1] == ' '));
      if (w >= 8) {
        doc += (doc.empty() ? "" : "\n") + para;
        doc_words += w;
        if (doc_words >= min_words) {
          if (doc_words <= max_words) docs.push_back(doc);
          doc.clear();
          doc_words = 0;
        }
      }
      para.clear();
    };
    size_t pos = 0;
    while (pos < text.size() && docs.size() < max_docs) {
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) nl = text.size();
      std::string line = text.substr(pos, nl - pos);
      pos = nl + 1;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const auto t = curate::trim_view(line);
      if (t.empty()) {
        flush_para();
        continue;
      }
      if (!para.empty()) para += ' ';
      para += t;
    }
    flush_para();
    if (docs.size() >= max_docs) break;
  }
  return docs;
}

// The body of a Project Gutenberg file (between its START and END markers): the licence around
// it holds real contact addresses, which are not false positives of a PII detector.
inline std::string gutenberg_body(const std::string& text) {
  const size_t s = text.find("*** START OF");
  const size_t e = text.find("*** END OF");
  if (s == std::string::npos || e == std::string::npos || e < s) return text;
  const size_t from = text.find('\n', s);
  return text.substr(from, e - from);
}

inline std::vector<std::string> shared_text_files() {
  std::vector<std::string> files;
  for (const char* sub : {"data/text/wiki", "data/text/fiction"}) {
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(shared_dir() / sub, ec))
      if (e.path().extension() == ".txt") files.push_back(e.path().string());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// The set of word n-gram shingles of simplify_text(text), as strings: ground truth for Jaccard.
inline std::set<std::string> shingles(const std::string& text, size_t n = 5) {
  std::string s;
  std::vector<std::pair<uint32_t, uint32_t>> w;
  curate::simplify_words(text, s, w);
  std::set<std::string> out;
  if (w.size() < n) {
    if (!w.empty()) out.insert(s);
    return out;
  }
  for (size_t i = 0; i + n <= w.size(); i++) out.insert(s.substr(w[i].first, w[i + n - 1].second - w[i].first));
  return out;
}

inline double jaccard(const std::set<std::string>& a, const std::set<std::string>& b) {
  size_t inter = 0;
  for (const auto& x : a) inter += b.count(x);
  const size_t uni = a.size() + b.size() - inter;
  return uni ? double(inter) / double(uni) : 1.0;
}

// A copy of `doc` with words replaced by fresh ones until the shingle Jaccard with `doc` is as
// close to `target` as word replacements allow; returns the copy and sets *actual.
inline std::string near_duplicate(const std::string& doc, double target, Rng& rng, double* actual) {
  std::vector<std::string> words;  // with the separator that follows each
  std::vector<char> seps;
  {
    size_t i = 0;
    while (i < doc.size()) {
      size_t j = i;
      while (j < doc.size() && doc[j] != ' ' && doc[j] != '\n') j++;
      words.push_back(doc.substr(i, j - i));
      seps.push_back(j < doc.size() ? doc[j] : '\0');
      i = j + 1;
    }
  }
  const auto base = shingles(doc);
  std::vector<size_t> order(words.size());
  for (size_t i = 0; i < order.size(); i++) order[i] = i;
  for (size_t i = order.size(); i > 1; i--) std::swap(order[i - 1], order[rng.below(i)]);
  // Only the letters and digits of a word change; its punctuation stays, so line ends keep
  // their full stops and the quality filters see the same structure in both copies.
  auto build = [&](size_t m) {
    std::vector<std::string> w = words;
    for (size_t k = 0; k < m && k < order.size(); k++) {
      std::string& x = w[order[k]];
      size_t a = 0, e = x.size();
      while (a < e && !std::isalnum(static_cast<unsigned char>(x[a]))) a++;
      while (e > a && !std::isalnum(static_cast<unsigned char>(x[e - 1]))) e--;
      std::string fresh = "zq";
      for (int c = 0; c < 6; c++) fresh += char('a' + rng.below(26));
      x = x.substr(0, a) + fresh + x.substr(e);
    }
    std::string out;
    for (size_t i = 0; i < w.size(); i++) {
      out += w[i];
      if (seps[i]) out += seps[i];
    }
    return out;
  };
  // binary search on the number of replaced words (Jaccard falls as it grows)
  size_t lo = 0, hi = words.size();
  while (lo < hi) {
    const size_t mid = (lo + hi) / 2;
    if (jaccard(base, shingles(build(mid))) > target) lo = mid + 1;
    else hi = mid;
  }
  std::string best = build(lo);
  double j = jaccard(base, shingles(best));
  if (lo > 0) {  // the neighbour below may be closer
    std::string other = build(lo - 1);
    const double j2 = jaccard(base, shingles(other));
    if (std::abs(j2 - target) < std::abs(j - target)) best = other, j = j2;
  }
  *actual = j;
  return best;
}

// English-like prose that passes the quality filters: varied sentences, stop words, one
// paragraph per line.
inline std::string prose(Rng& r, int sentences) {
  // one word per slot from lists of 20: no phrase repeats often enough for Gopher repetition
  static const char* adj[] = {"old", "young", "quiet", "heavy", "northern", "bright", "small",
                              "ancient", "wooden", "careful", "distant", "famous", "narrow",
                              "patient", "golden", "broken", "silent", "eager", "humble", "rapid"};
  static const char* noun[] = {"miller", "teacher", "river", "council", "merchant", "village",
                               "student", "bridge", "letter", "garden", "market", "harvest",
                               "castle", "forest", "sailor", "painter", "doctor", "library",
                               "kingdom", "engine"};
  static const char* verb[] = {"carried", "described", "remembered", "built", "studied",
                               "crossed", "painted", "defended", "discovered", "sold", "repaired",
                               "visited", "measured", "praised", "followed", "watched", "copied",
                               "guarded", "opened", "traced"};
  static const char* prep[] = {"with", "near", "beyond", "under", "behind", "across", "toward",
                               "beside", "through", "after"};
  static const char* adv[] = {"slowly", "again", "today", "quietly", "together", "at last",
                              "at dawn", "in silence", "by hand", "with care"};
  auto cap = [](std::string w) {
    w[0] = char(w[0] - 32);
    return w;
  };
  std::string s;
  for (int i = 0; i < sentences; i++) {
    if (i) s += (i % 4 == 0) ? "\n" : " ";
    s += cap(std::string("the"));
    for (const char* w : {adj[r.below(20)], noun[r.below(20)], verb[r.below(20)], "the",
                          adj[r.below(20)], noun[r.below(20)], prep[r.below(10)], "the",
                          noun[r.below(20)], "and", verb[r.below(20)], "it", adv[r.below(10)]}) {
      s += ' ';
      s += w;
    }
    if (r.below(5)) {
      s += '.';
    } else {
      s += " in ";
      s += std::to_string(1000 + r.below(1000));
      s += '.';
    }
  }
  return s;
}

// --- PII values that pass their checksums ------------------------------------------------------
inline std::string digits(Rng& r, size_t n) {
  std::string s;
  for (size_t i = 0; i < n; i++) s += char('0' + r.below(10));
  return s;
}
inline std::string luhn_complete(std::string prefix_body) {
  for (char c = '0'; c <= '9'; c++)
    if (curate::luhn_valid(prefix_body + c)) return prefix_body + c;
  return prefix_body;
}
inline std::string credit_card(Rng& r) {
  switch (r.below(4)) {
    case 0: {
      const std::string n = luhn_complete("4" + digits(r, 14));
      return n.substr(0, 4) + " " + n.substr(4, 4) + " " + n.substr(8, 4) + " " + n.substr(12, 4);
    }
    case 1: {
      const std::string n = luhn_complete("5" + std::to_string(1 + r.below(5)) + digits(r, 13));
      return n.substr(0, 4) + "-" + n.substr(4, 4) + "-" + n.substr(8, 4) + "-" + n.substr(12, 4);
    }
    case 2:
      return luhn_complete("3" + std::string(r.below(2) ? "4" : "7") + digits(r, 12));
    default:
      return luhn_complete("6011" + digits(r, 11));
  }
}
inline std::string iban(Rng& r) {
  struct C {
    const char* cc;
    int len;
    bool letters;
  };
  static const C cs[] = {{"DE", 22, false}, {"GB", 22, true}, {"FR", 27, false}, {"NL", 18, true},
                         {"ES", 24, false}, {"IT", 27, true}};
  const C& c = cs[r.below(6)];
  std::string bban;
  const size_t n = size_t(c.len - 4);
  for (size_t i = 0; i < n; i++)
    bban += (c.letters && i < 4) ? char('A' + r.below(26)) : char('0' + r.below(10));
  // check digits: 98 - (BBAN + CC + "00") mod 97
  const std::string re = bban + c.cc + "00";
  int mod = 0;
  for (char ch : re) {
    if (ch >= '0' && ch <= '9') mod = (mod * 10 + (ch - '0')) % 97;
    else mod = (mod * 100 + (ch - 'A' + 10)) % 97;
  }
  const int check = 98 - mod;
  std::string s = std::string(c.cc) + (check < 10 ? "0" : "") + std::to_string(check) + bban;
  if (r.below(2)) {  // the printed form, in groups of four
    std::string g;
    for (size_t i = 0; i < s.size(); i++) {
      if (i && i % 4 == 0) g += ' ';
      g += s[i];
    }
    s = g;
  }
  return s;
}
inline std::string cn_id(Rng& r) {
  static const int w[17] = {7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2};
  char date[16];
  std::snprintf(date, sizeof date, "%04d%02d%02d", int(1950 + r.below(60)), int(1 + r.below(12)),
                int(1 + r.below(28)));
  std::string s = std::to_string(1 + r.below(8)) + digits(r, 5) + date + digits(r, 3);
  int sum = 0;
  for (int i = 0; i < 17; i++) sum += (s[size_t(i)] - '0') * w[i];
  return s + "10X98765432"[sum % 11];
}
inline std::string ssn(Rng& r) {
  std::string a;
  do a = digits(r, 3);
  while (a == "000" || a == "666" || a[0] == '9');
  return a + "-" + std::to_string(10 + r.below(89)) + "-" + std::to_string(1000 + r.below(8999));
}
inline std::string phone(Rng& r) {
  switch (r.below(7)) {
    case 0: return "+1 (" + std::to_string(200 + r.below(799)) + ") " + std::to_string(200 + r.below(799)) + "-" + digits(r, 4);
    case 1: return std::to_string(200 + r.below(799)) + "-" + std::to_string(200 + r.below(799)) + "-" + digits(r, 4);
    case 2: return "+44 20 " + digits(r, 4) + " " + digits(r, 4);
    case 3: return "+49 30 " + digits(r, 8);
    case 4: return "+33 6 " + digits(r, 2) + " " + digits(r, 2) + " " + digits(r, 2) + " " + digits(r, 2);
    case 5: return "+86 138 " + digits(r, 4) + " " + digits(r, 4);
    default: return "020 " + digits(r, 4) + " " + digits(r, 4);
  }
}
inline std::string email(Rng& r) {
  static const char* users[] = {"john.smith", "m.garcia", "li_wei", "anna-k", "ops+alerts"};
  static const char* hosts[] = {"example.com", "mail.example.org", "uni.edu", "corp.co.uk"};
  return std::string(users[r.below(5)]) + std::to_string(r.below(100)) + "@" + hosts[r.below(4)];
}
inline std::string ipv4(Rng& r) {
  return std::to_string(1 + r.below(223)) + "." + std::to_string(r.below(256)) + "." +
         std::to_string(r.below(256)) + "." + std::to_string(1 + r.below(254));
}
inline std::string ipv6(Rng& r) {
  auto h = [&] {
    char b[8];
    std::snprintf(b, sizeof b, "%x", unsigned(r.below(65536)));
    return std::string(b);
  };
  if (r.below(2)) return "2001:db8:" + h() + ":" + h() + "::" + h();
  return "fe80:" + h() + ":" + h() + ":" + h() + ":" + h() + ":" + h() + ":" + h() + ":" + h();
}
inline std::string alnum(Rng& r, size_t n, bool upper_only = false) {
  static const char a[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
  std::string s;
  for (size_t i = 0; i < n; i++) s += a[r.below(upper_only ? 26 : 62)];
  if (upper_only) s[n / 2] = char('0' + r.below(10));
  return s;
}
inline std::string api_key(Rng& r) {
  switch (r.below(3)) {
    case 0: return "AKIA" + alnum(r, 16, true);
    case 1: return "sk_live_" + alnum(r, 24) + "7";
    default: return "AIza" + alnum(r, 34) + "Q";
  }
}
inline std::string token(Rng& r) {
  if (r.below(2)) return "ghp_" + alnum(r, 35) + "9";
  return "xoxb-" + digits(r, 12) + "-" + alnum(r, 24);
}
inline std::string private_key(Rng& r) {
  std::string s = "-----BEGIN RSA PRIVATE KEY-----\n";
  for (int i = 0; i < 4; i++) s += alnum(r, 64) + "\n";
  return s + "-----END RSA PRIVATE KEY-----";
}

// --- files ---------------------------------------------------------------------------------
inline void write_text(const std::filesystem::path& p, const std::string& s) {
  std::ofstream(p, std::ios::binary) << s;
}
inline void write_gz(const std::filesystem::path& p, const std::string& s) {
  gzFile f = gzopen(p.c_str(), "wb");
  gzwrite(f, s.data(), unsigned(s.size()));
  gzclose(f);
}
inline void write_zst(const std::filesystem::path& p, const std::string& s) {
  std::string out(ZSTD_compressBound(s.size()), '\0');
  out.resize(ZSTD_compress(out.data(), out.size(), s.data(), s.size(), 3));
  write_text(p, out);
}
inline std::string jsonl(const std::vector<nlohmann::json>& rows) {
  std::string s;
  for (const auto& r : rows) s += r.dump() + "\n";
  return s;
}

}  // namespace dsv3::test
