#include "tokenizer/formats.h"

#include <algorithm>
#include <array>
#include <charconv>
#include <cstring>
#include <filesystem>
#include <unordered_map>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/io.h"

namespace dsv3 {

using json = nlohmann::json;
namespace fs = std::filesystem;

// ---------------------------------------------------------------------------------------------
// GPT-2's byte alphabet

namespace {

struct ByteAlphabet {
  std::array<uint32_t, 256> to_cp{};     // byte -> code point
  std::array<int16_t, 324> to_byte{};    // code point (< 324) -> byte, -1 if none
  std::array<std::string, 256> utf8;     // byte -> its character as UTF-8
  ByteAlphabet() {
    to_byte.fill(-1);
    uint32_t extra = 256;
    for (int b = 0; b < 256; b++) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
      to_cp[size_t(b)] = printable ? uint32_t(b) : extra++;
    }
    for (int b = 0; b < 256; b++) {
      const uint32_t cp = to_cp[size_t(b)];
      to_byte[cp] = int16_t(b);
      std::string& s = utf8[size_t(b)];
      if (cp < 0x80) s = std::string(1, char(cp));
      else s = {char(0xc0 | (cp >> 6)), char(0x80 | (cp & 0x3f))};  // all cps are < 0x800
    }
  }
};

const ByteAlphabet& alphabet() {
  static const ByteAlphabet a;
  return a;
}

}  // namespace

std::string bytes_to_gpt2_text(std::string_view bytes) {
  const ByteAlphabet& a = alphabet();
  std::string out;
  out.reserve(bytes.size() * 2);
  for (char c : bytes) out += a.utf8[uint8_t(c)];
  return out;
}

bool gpt2_text_to_bytes(std::string_view text, std::string& bytes) {
  const ByteAlphabet& a = alphabet();
  bytes.clear();
  for (size_t i = 0; i < text.size();) {
    const uint8_t c = uint8_t(text[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c, i += 1;
    } else if ((c & 0xe0) == 0xc0 && i + 1 < text.size() && (uint8_t(text[i + 1]) & 0xc0) == 0x80) {
      cp = uint32_t(c & 0x1f) << 6 | (uint8_t(text[i + 1]) & 0x3f), i += 2;
    } else {
      return false;  // 3- and 4-byte characters are all outside the table
    }
    if (cp >= a.to_byte.size() || a.to_byte[cp] < 0) return false;
    bytes += char(a.to_byte[cp]);
  }
  return true;
}

// ---------------------------------------------------------------------------------------------
// Helpers

namespace {

std::string looks_like(const std::string& path) {
  const std::string k = sniff_file_kind(path);
  return k.empty() ? std::string() : " (it looks like " + k + ")";
}

json parse_json_file(const std::string& path, const std::string& what) {
  const std::string text = read_file(path);
  DSV3_CHECK(!text.empty(), path, ": empty file, expected ", what);
  try {
    return json::parse(text);
  } catch (const json::exception& e) {  // parse_error, or out_of_range for a number like 1e999
    fail(path, ": not valid JSON, expected ", what, looks_like(path), ": ", json_error_text(e));
  }
}

// An id read from a file: a non-negative integer below `limit`.
int32_t json_id(const json& v, size_t limit, const std::string& where) {
  DSV3_CHECK(v.is_number_integer(), where, ": id ", v.dump(), " is not an integer");
  const int64_t id = v.get<int64_t>();
  DSV3_CHECK(id >= 0 && uint64_t(id) < limit, where, ": id ", id, " is out of range (the file has ",
             limit, " entries; ids must be below that plus a few holes)");
  return int32_t(id);
}

// How far ids may run past the number of entries (holes) before a file is taken as corrupt;
// keeps a mutated id from allocating gigabytes.
constexpr size_t kMaxHoles = 65536;

// Builds the vocabulary from id -> bytes pairs; unlisted ids below the maximum are holes.
std::vector<std::string> vocab_from_pairs(std::vector<std::pair<int32_t, std::string>>& entries,
                                          const std::string& where) {
  int32_t max_id = -1;
  for (const auto& e : entries) max_id = std::max(max_id, e.first);
  std::vector<std::string> vocab(size_t(max_id + 1));
  std::vector<uint8_t> seen(vocab.size(), 0);
  for (auto& [id, bytes] : entries) {
    DSV3_CHECK(!seen[size_t(id)], where, ": id ", id, " is given to two tokens");
    seen[size_t(id)] = 1;
    DSV3_CHECK(!bytes.empty(), where, ": token ", id, " is empty");
    vocab[size_t(id)] = std::move(bytes);
  }
  return vocab;
}

bool looks_special(const std::string& text) {
  return text.size() >= 3 && text.front() == '<' && text.back() == '>';
}

std::string json_string(const std::string& s, const std::string& where) {
  try {
    return json(s).dump();
  } catch (const json::exception&) {
    fail(where, ": '", s, "' is not valid UTF-8 and cannot be written to JSON");
  }
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// dsv3 format
//
//   offset 0   "DSV3TOKN"            magic, 8 bytes
//          8   u32 format version    1
//         12   u32 header crc32      CRC-32 of the JSON header bytes
//         16   u64 header length N
//         24   N bytes of JSON: {"pretokenizer": {"name", "patterns"}, "vocab_size": V,
//                "merges": M, "specials": [{"id", "text"}], "roles": {"bos": id, ...},
//                "ignore_merges": bool, "payload_bytes": P, "payload_crc32": c}
//     24 + N   payload: V x (u32 length, bytes) -- the bytes of each id, special texts included,
//              length 0 for a hole -- then M x (u32 left, u32 right), the merges in rank order
// All integers little-endian; the file is exactly 24 + N + P bytes.

namespace {
constexpr char kDsv3Magic[8] = {'D', 'S', 'V', '3', 'T', 'O', 'K', 'N'};
constexpr uint32_t kDsv3TokVersion = 1;
}  // namespace

void save_dsv3_tokenizer(const std::string& path, const Tokenizer& t) {
  validate_tokenizer(t, "cannot write " + path);
  std::string payload;
  auto put_u32 = [&](uint32_t v) {
    const char b[4] = {char(v), char(v >> 8), char(v >> 16), char(v >> 24)};
    payload.append(b, 4);
  };
  for (const std::string& b : t.vocab) {
    put_u32(uint32_t(b.size()));
    payload += b;
  }
  for (const auto& [a, b] : t.merges) put_u32(uint32_t(a)), put_u32(uint32_t(b));
  json specials = json::array(), roles = json::object();
  for (const SpecialToken& s : t.specials) {
    json_string(s.text, "cannot write " + path);  // throws unless valid UTF-8
    specials.push_back({{"id", s.id}, {"text", s.text}});
  }
  for (const std::string& r : special_role_names())
    if (role_id(t.roles, r) >= 0) roles[r] = role_id(t.roles, r);
  const json h = {{"pretokenizer", {{"name", t.pretok.name}, {"patterns", t.pretok.patterns}}},
                  {"vocab_size", t.vocab.size()},
                  {"merges", t.merges.size()},
                  {"specials", specials},
                  {"roles", roles},
                  {"ignore_merges", t.ignore_merges},
                  {"payload_bytes", payload.size()},
                  {"payload_crc32", crc32_update(0, payload.data(), payload.size())}};
  std::string header;
  try {
    header = h.dump();
  } catch (const json::exception& e) {
    fail("cannot write ", path, ": ", e.what());
  }
  write_file_atomic(path, [&](std::FILE* f) {
    write_bytes(f, kDsv3Magic, 8);
    write_u32le(f, kDsv3TokVersion);
    write_u32le(f, crc32_update(0, header.data(), header.size()));
    write_u64le(f, header.size());
    write_bytes(f, header.data(), header.size());
    write_bytes(f, payload.data(), payload.size());
  });
}

Tokenizer load_dsv3_tokenizer(const std::string& path) {
  InFile f(path);
  DSV3_CHECK(f.size() >= 24, path, ": too short for a dsv3 tokenizer (", f.size(), " bytes)",
             looks_like(path));
  unsigned char head[24];
  f.read_at(0, head, sizeof head);
  DSV3_CHECK(std::memcmp(head, kDsv3Magic, 8) == 0, path, ": not a dsv3 tokenizer (bad magic)",
             looks_like(path));
  const uint32_t version = load_u32le(head + 8), header_crc = load_u32le(head + 12);
  const uint64_t n = load_u64le(head + 16);
  DSV3_CHECK(version == kDsv3TokVersion, path, ": dsv3 tokenizer format version ", version,
             " is not supported (this build reads version ", kDsv3TokVersion, ")");
  DSV3_CHECK(n <= f.size() - 24, path, ": truncated: the header says ", n,
             " bytes of JSON but the file has ", f.size() - 24, " after the fixed header");
  const std::string header = f.read_string(24, size_t(n));
  DSV3_CHECK(crc32_update(0, header.data(), header.size()) == header_crc ||
                 !checksum_verification(),
             path,
             ": header checksum mismatch (the file is corrupt)");
  Tokenizer t;
  try {
    const json h = json::parse(header);
    const uint64_t V = h.at("vocab_size").get<uint64_t>(), M = h.at("merges").get<uint64_t>();
    const uint64_t P = h.at("payload_bytes").get<uint64_t>();
    DSV3_CHECK(P == f.size() - 24 - n, path, ": the header says ", P, " payload bytes but the file has ",
               f.size() - 24 - n, " (truncated or padded)");
    DSV3_CHECK(V <= P / 4 && M <= P / 8 && V * 4 + M * 8 <= P, path, ": the header's ", V, " tokens and ", M,
               " merges do not fit in ", P, " payload bytes");
    const std::string payload = f.read_string(24 + n, size_t(P));
    DSV3_CHECK(crc32_update(0, payload.data(), payload.size()) ==
                       h.at("payload_crc32").get<uint32_t>() ||
                   !checksum_verification(),
               path, ": payload checksum mismatch (the file is corrupt)");
    // The name is a label; what runs is the patterns, so the name is re-derived from them.
    t.pretok = pretok_from_patterns(
        h.at("pretokenizer").at("patterns").get<std::vector<std::string>>());
    t.ignore_merges = h.at("ignore_merges").get<bool>();
    size_t pos = 0;
    t.vocab.resize(size_t(V));
    for (auto& b : t.vocab) {
      DSV3_CHECK(pos + 4 <= payload.size(), path, ": payload ends inside the vocabulary");
      const uint32_t len = load_u32le(payload.data() + pos);
      pos += 4;
      DSV3_CHECK(len <= payload.size() - pos, path, ": payload ends inside the vocabulary");
      b.assign(payload, pos, len);
      pos += len;
    }
    DSV3_CHECK(payload.size() - pos == M * 8, path, ": ", payload.size() - pos,
               " bytes after the vocabulary, expected ", M, " merges x 8");
    t.merges.resize(size_t(M));
    for (auto& [a, b] : t.merges) {
      a = int32_t(load_u32le(payload.data() + pos));
      b = int32_t(load_u32le(payload.data() + pos + 4));
      pos += 8;
    }
    for (const json& s : h.at("specials"))
      t.specials.push_back({json_id(s.at("id"), size_t(V), path), s.at("text").get<std::string>()});
    for (const auto& [name, id] : h.at("roles").items()) {
      const auto& names = special_role_names();
      DSV3_CHECK(std::find(names.begin(), names.end(), name) != names.end(), path,
                 ": unknown special-token role '", name, "'");
      role_slot(t.roles, name) = json_id(id, size_t(V), path);
    }
  } catch (const json::exception& e) {
    fail(path, ": bad dsv3 tokenizer header: ", json_error_text(e));
  }
  validate_tokenizer(t, path);
  return t;
}

// ---------------------------------------------------------------------------------------------
// GPT-2 files

Tokenizer load_gpt2_files(const std::string& encoder_json, const std::string& vocab_bpe,
                          const PretokSpec& pretok) {
  const json enc = parse_json_file(encoder_json, "GPT-2 encoder.json (an object of token: id)");
  DSV3_CHECK(enc.is_object() && !enc.empty(), encoder_json,
             ": expected an object of token: id (GPT-2 encoder.json)");
  DSV3_CHECK(!enc.contains("model") || !enc.at("model").is_object(), encoder_json,
             ": this is a Hugging Face tokenizer.json, not a GPT-2 encoder.json");
  std::unordered_map<std::string, int32_t> id_of;
  id_of.reserve(enc.size());
  const size_t limit = enc.size() + kMaxHoles;
  for (const auto& [text, v] : enc.items()) id_of[text] = json_id(v, limit, encoder_json);

  // vocab.bpe: "#version: 0.2" then one "left right" merge per line.
  const std::string bpe = read_file(vocab_bpe);
  DSV3_CHECK(bpe.find_first_not_of(" \t\r\n") != std::string::npos, vocab_bpe,
             ": empty file, expected GPT-2 merges ('#version: 0.2' then one 'left right' per "
             "line); a tokenizer without merges is written with the '#version' line alone");
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::unordered_set<std::string> made;
  size_t line_no = 0;
  for (size_t pos = 0; pos < bpe.size();) {
    size_t end = bpe.find('\n', pos);
    if (end == std::string::npos) end = bpe.size();
    std::string_view line(bpe.data() + pos, end - pos);
    pos = end + 1;
    line_no++;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && line.rfind("#version", 0) == 0)) continue;
    const size_t sp = line.find(' ');
    DSV3_CHECK(sp != std::string_view::npos && sp > 0 && sp + 1 < line.size() &&
                   line.find(' ', sp + 1) == std::string_view::npos,
               vocab_bpe, ":", line_no, ": expected 'left right' (two tokens and one space), got '",
               quote_bytes(line), "'", line_no == 1 ? looks_like(vocab_bpe) : "");
    const std::string a(line.substr(0, sp)), b(line.substr(sp + 1));
    auto ia = id_of.find(a), ib = id_of.find(b);
    DSV3_CHECK(ia != id_of.end() && ib != id_of.end(), vocab_bpe, ":", line_no, ": token '",
               quote_bytes(ia == id_of.end() ? a : b), "' is not in ", encoder_json);
    merges.push_back({ia->second, ib->second});
    made.insert(a + b);
  }

  std::vector<std::pair<int32_t, std::string>> entries;
  std::vector<SpecialToken> specials;
  std::string bytes;
  for (const auto& [text, id] : id_of) {
    const bool is_bytes = gpt2_text_to_bytes(text, bytes);
    if (!made.count(text) && !(is_bytes && bytes.size() == 1) && (!is_bytes || looks_special(text))) {
      specials.push_back({id, text});
      entries.push_back({id, text});
      continue;
    }
    DSV3_CHECK(is_bytes, encoder_json, ": token '", quote_bytes(text), "' (id ", id,
               ") is not in GPT-2's byte alphabet");
    entries.push_back({id, bytes});
  }
  Tokenizer t;
  t.pretok = pretok;
  t.vocab = vocab_from_pairs(entries, encoder_json);
  t.merges = std::move(merges);
  std::sort(specials.begin(), specials.end(),
            [](const SpecialToken& a, const SpecialToken& b) { return a.id < b.id; });
  t.specials = std::move(specials);
  t.roles = infer_roles(t.specials);
  validate_tokenizer(t, encoder_json + " + " + vocab_bpe);
  return t;
}

void export_gpt2_files(const std::string& dir, const Tokenizer& t) {
  validate_tokenizer(t, "cannot export to " + dir);
  std::error_code ec;
  fs::create_directories(dir, ec);
  DSV3_CHECK(!ec, "cannot create directory ", dir, ": ", ec.message());
  std::vector<uint8_t> special(t.vocab.size(), 0);
  for (const SpecialToken& s : t.specials) special[size_t(s.id)] = 1;
  std::unordered_set<std::string> keys;
  std::string enc = "{";
  for (size_t id = 0; id < t.vocab.size(); id++) {
    if (t.vocab[id].empty()) continue;
    const std::string key = special[id] ? t.vocab[id] : bytes_to_gpt2_text(t.vocab[id]);
    DSV3_CHECK(keys.insert(key).second, "cannot export to GPT-2 files: special token '", key,
               "' has the same text as an ordinary token");
    enc += (enc.size() > 1 ? ", " : "") + json_string(key, "cannot export to GPT-2 files") +
           ": " + std::to_string(id);
  }
  enc += "}";
  std::string bpe = "#version: 0.2\n";
  for (const auto& [a, b] : t.merges)
    bpe += bytes_to_gpt2_text(t.vocab[size_t(a)]) + " " + bytes_to_gpt2_text(t.vocab[size_t(b)]) +
           "\n";
  write_file_atomic((fs::path(dir) / "encoder.json").string(),
                    [&](std::FILE* f) { write_bytes(f, enc.data(), enc.size()); });
  write_file_atomic((fs::path(dir) / "vocab.bpe").string(),
                    [&](std::FILE* f) { write_bytes(f, bpe.data(), bpe.size()); });
}

// ---------------------------------------------------------------------------------------------
// tiktoken files

namespace {

constexpr char kB64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

std::string base64_encode(std::string_view in) {
  std::string out;
  for (size_t i = 0; i < in.size(); i += 3) {
    uint32_t v = uint32_t(uint8_t(in[i])) << 16;
    if (i + 1 < in.size()) v |= uint32_t(uint8_t(in[i + 1])) << 8;
    if (i + 2 < in.size()) v |= uint8_t(in[i + 2]);
    out += kB64[v >> 18];
    out += kB64[(v >> 12) & 63];
    out += i + 1 < in.size() ? kB64[(v >> 6) & 63] : '=';
    out += i + 2 < in.size() ? kB64[v & 63] : '=';
  }
  return out;
}

bool base64_decode(std::string_view in, std::string& out) {
  out.clear();
  if (in.empty() || in.size() % 4 != 0) return false;
  auto val = [](char c) -> int {
    const char* p = std::strchr(kB64, c);
    return c && p ? int(p - kB64) : -1;
  };
  for (size_t i = 0; i < in.size(); i += 4) {
    int v[4];
    int pad = 0;
    for (int k = 0; k < 4; k++) {
      const char c = in[i + size_t(k)];
      if (c == '=' && i + 4 == in.size() && k >= 2) {
        v[k] = 0, pad++;
        continue;
      }
      if (pad) return false;
      v[k] = val(c);
      if (v[k] < 0) return false;
    }
    const uint32_t x = uint32_t(v[0]) << 18 | uint32_t(v[1]) << 12 | uint32_t(v[2]) << 6 | uint32_t(v[3]);
    out += char(x >> 16);
    if (pad < 2) out += char((x >> 8) & 255);
    if (pad < 1) out += char(x & 255);
  }
  return true;
}

}  // namespace

Tokenizer load_tiktoken_file(const std::string& path, const PretokSpec& pretok) {
  const std::string text = read_file(path);
  DSV3_CHECK(!text.empty(), path, ": empty file, expected a .tiktoken rank file");
  std::vector<std::pair<int32_t, std::string>> entries;
  std::string bytes;
  size_t line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    pos = end + 1;
    line_no++;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) continue;
    const size_t sp = line.find(' ');
    int64_t rank = -1;
    const char* rank_end = line.data() + line.size();
    const bool ok = sp != std::string_view::npos && base64_decode(line.substr(0, sp), bytes) &&
                    std::from_chars(line.data() + sp + 1, rank_end, rank).ptr == rank_end &&
                    sp + 1 < line.size() && rank >= 0 && rank < INT32_MAX;
    DSV3_CHECK(ok, path, ":", line_no, ": expected 'base64 rank' (a .tiktoken rank file), got '",
               quote_bytes(line), "'", line_no == 1 ? looks_like(path) : "");
    entries.push_back({int32_t(rank), bytes});
  }
  DSV3_CHECK(!entries.empty(), path, ": no ranks in the file");
  int64_t max_rank = 0;
  for (const auto& e : entries) max_rank = std::max<int64_t>(max_rank, e.first);
  DSV3_CHECK(size_t(max_rank) < entries.size() + kMaxHoles, path, ": rank ", max_rank,
             " is far beyond the ", entries.size(), " ranks in the file");
  Tokenizer t;
  t.pretok = pretok;
  t.vocab = vocab_from_pairs(entries, path);
  t.ignore_merges = true;

  // Derive the merges in rank order: BPE with the merges found so far (all of lower rank) on a
  // token's bytes leaves the two parts it is made of.
  std::unordered_map<std::string_view, int32_t> id_of;
  for (size_t id = 0; id < t.vocab.size(); id++)
    if (!t.vocab[id].empty()) {
      DSV3_CHECK(id_of.emplace(t.vocab[id], int32_t(id)).second, path, ": rank ", id,
                 " repeats the bytes of rank ", id_of[t.vocab[id]]);
    }
  std::unordered_map<uint64_t, std::pair<uint32_t, int32_t>> pair_rank;
  auto key = [](int32_t a, int32_t b) { return uint64_t(uint32_t(a)) << 32 | uint32_t(b); };
  std::vector<int32_t> parts;
  for (size_t id = 0; id < t.vocab.size(); id++) {
    const std::string& b = t.vocab[id];
    if (b.size() < 2) continue;
    parts.clear();
    bool bytes_ok = true;
    for (char c : b) {
      auto it = id_of.find(std::string_view(&c, 1));
      if (it == id_of.end()) bytes_ok = false;
      else parts.push_back(it->second);
    }
    if (!bytes_ok) break;  // validation below names the missing byte
    while (parts.size() > 2) {
      size_t best = 0;
      uint32_t best_rank = UINT32_MAX;
      int32_t best_made = -1;
      for (size_t i = 0; i + 1 < parts.size(); i++) {
        auto it = pair_rank.find(key(parts[i], parts[i + 1]));
        if (it != pair_rank.end() && it->second.first < best_rank)
          best_rank = it->second.first, best = i, best_made = it->second.second;
      }
      if (best_made < 0) break;
      parts[best] = best_made;
      parts.erase(parts.begin() + std::ptrdiff_t(best) + 1);
    }
    if (parts.size() != 2) continue;  // reachable only as a whole piece (ignore_merges)
    pair_rank.emplace(key(parts[0], parts[1]), std::make_pair(uint32_t(t.merges.size()), int32_t(id)));
    t.merges.push_back({parts[0], parts[1]});
  }
  // tiktoken's gpt2 / r50k / cl100k encodings add <|endoftext|> right after the ranks.
  if (!id_of.count("<|endoftext|>")) {
    const int32_t eot = int32_t(t.vocab.size());
    t.vocab.push_back("<|endoftext|>");
    t.specials.push_back({eot, "<|endoftext|>"});
    t.roles.bos = t.roles.eos = eot;
  }
  validate_tokenizer(t, path);
  return t;
}

void export_tiktoken_file(const std::string& path, const Tokenizer& t) {
  validate_tokenizer(t, "cannot export to " + path);
  std::vector<uint8_t> special(t.vocab.size(), 0);
  for (const SpecialToken& s : t.specials) special[size_t(s.id)] = 1;
  std::unordered_map<std::string_view, int32_t> id_of;
  for (size_t id = 0; id < t.vocab.size(); id++)
    if (!special[id] && !t.vocab[id].empty()) id_of.emplace(t.vocab[id], int32_t(id));
  int32_t last = -1;
  for (size_t r = 0; r < t.merges.size(); r++) {
    const auto [a, b] = t.merges[r];
    const int32_t made = id_of.at(t.vocab[size_t(a)] + t.vocab[size_t(b)]);
    DSV3_CHECK(made > last && made > a && made > b, "cannot export to ", path,
               ": the .tiktoken format needs ids in merge order, but merge ", r, " makes id ",
               made);
    last = made;
  }
  std::string out;
  for (size_t id = 0; id < t.vocab.size(); id++)
    if (!special[id] && !t.vocab[id].empty())
      out += base64_encode(t.vocab[id]) + " " + std::to_string(id) + "\n";
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, out.data(), out.size()); });
}

// ---------------------------------------------------------------------------------------------
// Hugging Face tokenizer.json

namespace {

// Escapes a literal for PCRE2 (HF's Split {"String": ...} patterns).
std::string regex_literal(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (std::strchr("\\^$.|?*+()[]{}-#/ ", c) && c) out += '\\';
    out += c;
  }
  return out;
}

// Collects the Split regexes of a pre_tokenizer; the last element must be ByteLevel.
void read_pre_tokenizer(const json& p, std::vector<std::string>& patterns, bool& byte_level,
                        const std::string& where) {
  const std::string type = p.at("type").get<std::string>();
  DSV3_CHECK(!byte_level, where, ": pre_tokenizer ", type,
             " comes after ByteLevel; only Split regexes before a final ByteLevel are supported");
  if (type == "Sequence") {
    for (const json& q : p.at("pretokenizers")) read_pre_tokenizer(q, patterns, byte_level, where);
  } else if (type == "ByteLevel") {
    DSV3_CHECK(!p.value("add_prefix_space", false), where,
               ": ByteLevel add_prefix_space = true is not supported");
    if (p.value("use_regex", true)) patterns.push_back(kGpt2Pattern);
    byte_level = true;
  } else if (type == "Split") {
    const json& pat = p.at("pattern");
    DSV3_CHECK(p.value("behavior", std::string()) == "Isolated" && !p.value("invert", false),
               where, ": Split behavior '", p.value("behavior", std::string()),
               "' (invert ", p.value("invert", false),
               ") is not supported; only Isolated without invert");
    if (pat.contains("Regex")) patterns.push_back(pat.at("Regex").get<std::string>());
    else patterns.push_back(regex_literal(pat.at("String").get<std::string>()));
  } else {
    fail(where, ": pre_tokenizer type '", type,
         "' is not supported (ByteLevel, Split and Sequence are)");
  }
}

// The post-processor adds special tokens around each encoded text. dsv3 never adds tokens
// implicitly (encode --bos / --eos, prepare's EOS separators), so what it can take from one is
// which special starts and which ends a text: TemplateProcessing "single" = [bos] $A [eos] names
// the bos / eos roles. ByteLevel only adjusts offsets. Anything else is refused.
void read_post_processor(const json& p, Tokenizer& t, const std::string& where) {
  DSV3_CHECK(p.is_object(), where, ": post_processor is not an object");
  const std::string type = p.value("type", std::string());
  if (type == "ByteLevel") return;
  if (type == "Sequence") {
    for (const json& q : p.at("processors")) read_post_processor(q, t, where);
    return;
  }
  DSV3_CHECK(type == "TemplateProcessing", where, ": post_processor '", quote_bytes(type),
             "' is not supported (ByteLevel and TemplateProcessing [bos] $A [eos] are)");
  const json& single = p.at("single");
  DSV3_CHECK(single.is_array(), where, ": TemplateProcessing 'single' is not a list");
  std::vector<std::string> before, after;
  bool seen_a = false;
  for (const json& item : single) {
    if (item.contains("Sequence")) {
      DSV3_CHECK(!seen_a && item.at("Sequence").value("id", std::string()) == "A", where,
                 ": TemplateProcessing 'single' must hold the sequence $A once");
      seen_a = true;
    } else {
      (seen_a ? after : before).push_back(item.at("SpecialToken").at("id").get<std::string>());
    }
  }
  DSV3_CHECK(seen_a && before.size() <= 1 && after.size() <= 1, where,
             ": TemplateProcessing ", quote_bytes(single.dump()),
             " is not supported: dsv3 reads [bos] $A [eos] (at most one special on each side)");
  auto id_of = [&](const std::string& text) {
    for (const SpecialToken& s : t.specials)
      if (s.text == text) return s.id;
    fail(where, ": TemplateProcessing uses '", quote_bytes(text),
         "', which is not an added token of this file");
  };
  if (!before.empty()) t.roles.bos = id_of(before[0]);
  if (!after.empty()) t.roles.eos = id_of(after[0]);
}

}  // namespace

Tokenizer load_hf_tokenizer_json(const std::string& path) {
  const json j = parse_json_file(path, "a Hugging Face tokenizer.json");
  Tokenizer t;
  try {
    DSV3_CHECK(j.is_object() && j.contains("model") && j.at("model").is_object(), path,
               ": no \"model\" entry: not a Hugging Face tokenizer.json");
    const json& m = j.at("model");
    const std::string type = m.value("type", std::string("BPE"));
    DSV3_CHECK(type == "BPE", path, ": model type '", type, "' is not supported (only BPE)");
    if (m.contains("dropout") && !m.at("dropout").is_null()) {
      const json& dr = m.at("dropout");
      DSV3_CHECK(dr.is_number() && dr.get<double>() == 0, path, ": BPE dropout ", dr.dump(),
                 " is not supported: dsv3 encodes deterministically (set \"dropout\": null)");
    }
    DSV3_CHECK(!m.value("byte_fallback", false), path,
               ": byte_fallback BPE (SentencePiece style) is not supported; dsv3 reads byte-level BPE");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      DSV3_CHECK(!m.contains(k) || m.at(k).is_null() || m.at(k).get<std::string>().empty(), path,
                 ": BPE ", k, " is not supported");
    if (j.contains("normalizer") && !j.at("normalizer").is_null()) {
      const json& n = j.at("normalizer");
      DSV3_CHECK(n.value("type", std::string()) == "Sequence" && n.at("normalizers").empty(), path,
                 ": normalizer '", n.value("type", std::string("?")),
                 "' is not supported (dsv3 tokenizers encode raw bytes)");
    }
    bool byte_level = false;
    DSV3_CHECK(j.contains("pre_tokenizer") && !j.at("pre_tokenizer").is_null(), path,
               ": no pre_tokenizer: not a byte-level BPE");
    read_pre_tokenizer(j.at("pre_tokenizer"), t.pretok.patterns, byte_level, path);
    DSV3_CHECK(byte_level, path, ": the pre_tokenizer has no ByteLevel step: not a byte-level BPE");
    t.pretok = pretok_from_patterns(t.pretok.patterns);
    t.ignore_merges = m.value("ignore_merges", false);

    const json& vocab = m.at("vocab");
    DSV3_CHECK(vocab.is_object(), path, ": model.vocab is not an object");
    const json added = j.value("added_tokens", json::array());
    const size_t limit = vocab.size() + added.size() + kMaxHoles;
    std::unordered_map<int32_t, std::string> added_text;
    for (const json& a : added) {
      const int32_t id = json_id(a.at("id"), limit, path);
      const std::string content = a.at("content").get<std::string>();
      DSV3_CHECK(added_text.emplace(id, content).second, path, ": added token id ", id,
                 " appears twice");
      t.specials.push_back({id, content});
    }
    std::vector<std::pair<int32_t, std::string>> entries;
    std::unordered_map<std::string, int32_t> id_of;
    id_of.reserve(vocab.size());
    std::string bytes;
    for (const auto& [text, v] : vocab.items()) {
      const int32_t id = json_id(v, limit, path);
      id_of[text] = id;
      if (auto it = added_text.find(id); it != added_text.end()) {
        DSV3_CHECK(it->second == text, path, ": id ", id, " is vocabulary token '",
                   quote_bytes(text), "' and added token '", quote_bytes(it->second), "'");
        continue;
      }
      DSV3_CHECK(gpt2_text_to_bytes(text, bytes), path, ": vocabulary token '", quote_bytes(text), "' (id ", id,
                 ") is not in the ByteLevel alphabet");
      entries.push_back({id, bytes});
    }
    for (const auto& [id, text] : added_text) entries.push_back({id, text});
    t.vocab = vocab_from_pairs(entries, path);

    for (const json& mg : m.at("merges")) {
      std::string a, b;
      if (mg.is_string()) {  // "left right" (older files)
        const std::string s = mg.get<std::string>();
        const size_t sp = s.find(' ');
        DSV3_CHECK(sp != std::string::npos && s.find(' ', sp + 1) == std::string::npos, path,
                   ": merge '", quote_bytes(s), "' is not 'left right'");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else {  // ["left", "right"] (tokenizers >= 0.20)
        DSV3_CHECK(mg.is_array() && mg.size() == 2, path, ": merge ", mg.dump(),
                   " is not a pair");
        a = mg[0].get<std::string>(), b = mg[1].get<std::string>();
      }
      auto ia = id_of.find(a), ib = id_of.find(b);
      DSV3_CHECK(ia != id_of.end() && ib != id_of.end(), path, ": merge '", quote_bytes(a + " " + b),
                 "' uses a token that is not in the vocabulary");
      t.merges.push_back({ia->second, ib->second});
    }
    std::sort(t.specials.begin(), t.specials.end(),
              [](const SpecialToken& x, const SpecialToken& y) { return x.id < y.id; });
    t.roles = infer_roles(t.specials);
    // tokenizer_config.json beside the file names bos/eos/pad when the texts are not the usual.
    const fs::path cfg = fs::path(path).parent_path() / "tokenizer_config.json";
    if (fs::exists(cfg)) {
      const json c = parse_json_file(cfg.string(), "tokenizer_config.json");
      for (const char* role : {"bos", "eos", "pad"}) {
        const std::string key = std::string(role) + "_token";
        if (!c.is_object() || !c.contains(key) || c.at(key).is_null()) continue;
        const json& v = c.at(key);
        const std::string text = v.is_string() ? v.get<std::string>() : v.at("content").get<std::string>();
        for (const SpecialToken& s : t.specials)
          if (s.text == text) role_slot(t.roles, role) = s.id;
      }
    }
    if (j.contains("post_processor") && !j.at("post_processor").is_null())
      read_post_processor(j.at("post_processor"), t, path);
  } catch (const json::exception& e) {
    fail(path, ": unexpected tokenizer.json content: ", json_error_text(e));
  }
  validate_tokenizer(t, path);
  return t;
}

void export_hf_tokenizer_json(const std::string& path, const Tokenizer& t) {
  const std::string where = "cannot export to " + path;
  validate_tokenizer(t, where);
  std::vector<uint8_t> special(t.vocab.size(), 0);
  for (const SpecialToken& s : t.specials) special[size_t(s.id)] = 1;

  json added = json::array();
  for (const SpecialToken& s : t.specials)
    added.push_back({{"id", s.id}, {"content", s.text}, {"single_word", false}, {"lstrip", false},
                     {"rstrip", false}, {"normalized", false}, {"special", true}});
  json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true},
                     {"use_regex", true}};
  json pre;
  if (t.pretok.patterns == pretok_preset("gpt2").patterns) {
    pre = byte_level;  // ByteLevel's own regex is GPT-2's
  } else {
    byte_level["use_regex"] = false;
    json seq = json::array();
    for (const std::string& p : t.pretok.patterns)
      seq.push_back({{"type", "Split"}, {"pattern", {{"Regex", p}}}, {"behavior", "Isolated"},
                     {"invert", false}});
    seq.push_back(byte_level);
    pre = {{"type", "Sequence"}, {"pretokenizers", seq}};
  }
  json decoder = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"trim_offsets", true},
                  {"use_regex", true}};

  // The vocabulary and merges are written by hand, in id and rank order (nlohmann's objects
  // would sort the keys).
  std::string vocab = "{";
  for (size_t id = 0; id < t.vocab.size(); id++) {
    if (special[id] || t.vocab[id].empty()) continue;
    vocab += (vocab.size() > 1 ? ",\n      " : "\n      ") +
             json(bytes_to_gpt2_text(t.vocab[id])).dump() + ": " + std::to_string(id);
  }
  vocab += "\n    }";
  std::string merges = "[";
  for (size_t r = 0; r < t.merges.size(); r++) {
    const auto [a, b] = t.merges[r];
    merges += (r ? ",\n      " : "\n      ") +
              json(bytes_to_gpt2_text(t.vocab[size_t(a)]) + " " +
                   bytes_to_gpt2_text(t.vocab[size_t(b)]))
                  .dump();
  }
  merges += "\n    ]";
  std::string out;
  try {
    out = "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n"
          "  \"added_tokens\": " + added.dump() + ",\n  \"normalizer\": null,\n"
          "  \"pre_tokenizer\": " + pre.dump() + ",\n  \"post_processor\": null,\n"
          "  \"decoder\": " + decoder.dump() + ",\n  \"model\": {\n"
          "    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n"
          "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n"
          "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n" +
          std::string(t.ignore_merges ? "    \"ignore_merges\": true,\n" : "") +
          "    \"vocab\": " + vocab + ",\n    \"merges\": " + merges + "\n  }\n}\n";
  } catch (const json::exception& e) {
    fail(where, ": ", e.what(), " (special token texts must be valid UTF-8)");
  }
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, out.data(), out.size()); });
}

// ---------------------------------------------------------------------------------------------
// Any file

Tokenizer load_tokenizer_any(const std::string& path, const std::string& pretok, std::string* what) {
  const PretokSpec plain = pretok_preset(pretok.empty() ? "gpt2" : pretok);
  auto own_pretok = [&](Tokenizer t, const std::string& desc) {
    DSV3_CHECK(pretok.empty() || pretok == t.pretok.name, path, " carries its own pre-tokenizer (",
               t.pretok.name, "); --pretokenizer ", pretok,
               " applies only to GPT-2 and .tiktoken files");
    if (what) *what = desc + " (pre-tokenizer " + t.pretok.name + ")";
    return t;
  };
  auto plain_desc = [&](const std::string& desc) {
    if (what) *what = desc + " (pre-tokenizer " + plain.name + ")";
  };
  auto gpt2_pair = [&](const fs::path& enc, const fs::path& bpe) {
    DSV3_CHECK(fs::exists(enc) && fs::exists(bpe), "GPT-2 tokenizer files come in pairs: ",
               enc.string(), " and ", bpe.string(), " (", fs::exists(enc) ? bpe.string() : enc.string(),
               " is missing)");
    plain_desc("GPT-2 files " + enc.string() + " + " + bpe.string());
    return load_gpt2_files(enc.string(), bpe.string(), plain);
  };
  std::error_code ec;
  DSV3_CHECK(fs::exists(path, ec), "tokenizer ", path, " does not exist");
  const fs::path p(path);
  if (fs::is_directory(p, ec)) {
    std::vector<fs::path> dsv3, tiktoken;
    for (const auto& e : fs::directory_iterator(p, ec)) {
      if (e.path().extension() == ".dsv3tok") dsv3.push_back(e.path());
      if (e.path().extension() == ".tiktoken") tiktoken.push_back(e.path());
    }
    if (dsv3.size() == 1) return load_tokenizer_any(dsv3[0].string(), pretok, what);
    if (fs::exists(p / "tokenizer.json")) return load_tokenizer_any((p / "tokenizer.json").string(), pretok, what);
    if (fs::exists(p / "encoder.json") || fs::exists(p / "vocab.bpe"))
      return gpt2_pair(p / "encoder.json", p / "vocab.bpe");
    if (tiktoken.size() == 1) return load_tokenizer_any(tiktoken[0].string(), pretok, what);
    fail(path, ": no tokenizer in this directory (looked for one *.dsv3tok, tokenizer.json, "
               "encoder.json + vocab.bpe, or one *.tiktoken)");
  }
  char head[8] = {};
  {
    InFile f(path);
    DSV3_CHECK(f.size() > 0, path, ": empty file, expected a tokenizer");
    f.read_at(0, head, size_t(std::min<uint64_t>(8, f.size())));
  }
  if (std::memcmp(head, kDsv3Magic, 8) == 0)
    return own_pretok(load_dsv3_tokenizer(path), "dsv3 tokenizer " + path);
  const std::string name = p.filename().string(), ext = p.extension().string();
  if (name == "vocab.bpe" || ext == ".bpe") return gpt2_pair(p.parent_path() / "encoder.json", p);
  if (ext == ".tiktoken") {
    plain_desc("tiktoken file " + path);
    return load_tiktoken_file(path, plain);
  }
  if (ext == ".json" || head[0] == '{' || head[0] == '[') {
    const json j = parse_json_file(path, "a tokenizer.json or encoder.json");
    if (j.is_object() && j.contains("model") && j.at("model").is_object())
      return own_pretok(load_hf_tokenizer_json(path), "Hugging Face tokenizer.json " + path);
    // encoder.json is an object of token: id; anything else is no tokenizer this reads.
    const bool encoder_like = j.is_object() && !j.empty() &&
                              std::all_of(j.begin(), j.end(), [](const json& v) {
                                return v.is_number_integer();
                              });
    if (!encoder_like || name == "tokenizer.json")
      fail(path, ": not a tokenizer this reads: ",
           name == "tokenizer.json" || j.contains("model") || j.contains("added_tokens")
               ? "a Hugging Face tokenizer.json needs a \"model\" object (its BPE vocabulary "
                 "and merges)"
               : std::string("expected a Hugging Face tokenizer.json (an object with \"model\") "
                             "or a GPT-2 encoder.json (an object of token: id), got ") +
                     (j.is_object() ? (j.empty() ? "an empty object" : "an object of other values")
                                    : std::string("a JSON ") + j.type_name()));
    return gpt2_pair(p, p.parent_path() / "vocab.bpe");
  }
  // A rank file without the usual extension: its first line is "base64 rank".
  const std::string kind = sniff_file_kind(path);
  if (kind == "text") {
    plain_desc("tiktoken file " + path);
    return load_tiktoken_file(path, plain);
  }
  fail(path, ": not a tokenizer file", looks_like(path),
       "; expected a dsv3 tokenizer (.dsv3tok), tokenizer.json, encoder.json + vocab.bpe or a "
       ".tiktoken file");
}

}  // namespace dsv3
