#include "data/reader.h"

#include <fnmatch.h>
#include <zlib.h>
#include <zstd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <set>

#include "core/check.h"
#include "core/io.h"

namespace dsv3 {

namespace fs = std::filesystem;

// --- inputs ----------------------------------------------------------------------------------
namespace {

bool has_wildcard(const std::string& s) { return s.find_first_of("*?[") != std::string::npos; }

std::vector<std::string> split_path(const std::string& p) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= p.size()) {
    size_t slash = p.find('/', pos);
    if (slash == std::string::npos) slash = p.size();
    out.push_back(p.substr(pos, slash - pos));
    pos = slash + 1;
  }
  return out;
}

bool match_segments(const std::vector<std::string>& pat, size_t i,
                    const std::vector<std::string>& path, size_t j) {
  if (i == pat.size()) return j == path.size();
  if (pat[i] == "**") {
    for (size_t k = j; k <= path.size(); k++)  // ** = zero or more whole segments
      if (match_segments(pat, i + 1, path, k)) return true;
    return false;
  }
  if (j == path.size()) return false;
  if (fnmatch(pat[i].c_str(), path[j].c_str(), FNM_PERIOD) != 0) return false;
  return match_segments(pat, i + 1, path, j + 1);
}

// Raw lines may hold invalid UTF-8, so blankness is judged on ASCII whitespace only.
bool blank_line(const std::string& s) {
  for (char c : s)
    if (c != ' ' && c != '\t' && c != '\r' && c != '\v' && c != '\f') return false;
  return true;
}

bool hidden(const fs::path& p) {
  const std::string n = p.filename().string();
  return !n.empty() && n[0] == '.';
}

}  // namespace

bool glob_match(const std::string& pattern, const std::string& path) {
  return match_segments(split_path(pattern), 0, split_path(path), 0);
}

std::vector<std::string> expand_inputs(const std::vector<std::string>& items) {
  std::vector<std::string> files;
  std::set<std::string> seen;
  auto add = [&](const std::string& f) {
    if (seen.insert(f).second) files.push_back(f);
  };
  for (const std::string& item : items) {
    if (item.empty()) continue;
    std::error_code ec;
    std::vector<std::string> found;
    if (has_wildcard(item)) {
      // Walk from the longest wildcard-free directory prefix; without ** the walk stops at the
      // depth of the pattern.
      const auto segs = split_path(item);
      size_t fixed = 0;
      while (fixed + 1 < segs.size() && !has_wildcard(segs[fixed])) fixed++;
      std::string base;
      for (size_t k = 0; k < fixed; k++) base += (k ? "/" : "") + segs[k];
      if (base.empty()) base = item[0] == '/' ? "/" : ".";
      const bool deep = std::find(segs.begin(), segs.end(), "**") != segs.end();
      const int max_depth = int(segs.size() - fixed) - 1;
      const bool dot_prefix = base == "." && item.rfind("./", 0) != 0;
      if (fs::is_directory(base, ec)) {
        fs::recursive_directory_iterator it(base, fs::directory_options::skip_permission_denied,
                                            ec),
            end;
        for (; !ec && it != end; it.increment(ec)) {
          if (hidden(it->path())) {
            if (it->is_directory(ec)) it.disable_recursion_pending();
            continue;
          }
          if (!deep && it.depth() >= max_depth) it.disable_recursion_pending();
          if (!it->is_regular_file(ec)) continue;
          std::string p = it->path().string();
          if (dot_prefix && p.rfind("./", 0) == 0) p = p.substr(2);
          if (glob_match(item, p)) found.push_back(p);
        }
      }
      DSV3_CHECK(!found.empty(), "input pattern ", item, " matches no files");
    } else if (fs::is_directory(item, ec)) {
      fs::recursive_directory_iterator it(item, fs::directory_options::skip_permission_denied,
                                          ec),
          end;
      for (; !ec && it != end; it.increment(ec)) {
        if (hidden(it->path())) {
          if (it->is_directory(ec)) it.disable_recursion_pending();
          continue;
        }
        if (it->is_regular_file(ec)) found.push_back(it->path().string());
      }
      DSV3_CHECK(!ec, "cannot list ", item, ": ", ec.message());
      DSV3_CHECK(!found.empty(), "input directory ", item, " has no files");
    } else {
      DSV3_CHECK(fs::exists(item, ec), "input ", item, " does not exist");
      found.push_back(item);
    }
    std::sort(found.begin(), found.end());
    for (const auto& f : found) add(f);
  }
  DSV3_CHECK(!files.empty(), "--input names no files");
  return files;
}

const char* input_format_name(InputFormat f) {
  switch (f) {
    case InputFormat::Auto: return "auto";
    case InputFormat::Jsonl: return "jsonl";
    case InputFormat::Text: return "text";
  }
  return "?";
}
InputFormat parse_input_format(const std::string& s) {
  if (s == "auto") return InputFormat::Auto;
  if (s == "jsonl") return InputFormat::Jsonl;
  if (s == "text" || s == "txt") return InputFormat::Text;
  fail("input_format must be auto, jsonl or text, not '", s, "'");
}

InputFormat format_of(const std::string& path) {
  std::string name = fs::path(path).filename().string();
  for (const char* z : {".gz", ".zst", ".zstd"}) {
    const size_t n = std::strlen(z);
    if (name.size() > n && name.compare(name.size() - n, n, z) == 0) {
      name.resize(name.size() - n);
      break;
    }
  }
  for (const char* j : {".jsonl", ".json", ".ndjson"}) {
    const size_t n = std::strlen(j);
    if (name.size() > n && name.compare(name.size() - n, n, j) == 0) return InputFormat::Jsonl;
  }
  return InputFormat::Text;
}

const char* text_unit_name(TextUnit u) {
  switch (u) {
    case TextUnit::File: return "file";
    case TextUnit::Paragraph: return "paragraph";
    case TextUnit::Line: return "line";
  }
  return "?";
}
TextUnit parse_text_unit(const std::string& s) {
  if (s == "file") return TextUnit::File;
  if (s == "paragraph") return TextUnit::Paragraph;
  if (s == "line") return TextUnit::Line;
  fail("text_unit must be file, paragraph or line, not '", s, "'");
}

// --- decompression ---------------------------------------------------------------------------
struct ByteSource::Impl {
  std::string path;
  std::FILE* f = nullptr;
  gzFile gz = nullptr;
  ZSTD_DCtx* zd = nullptr;
  std::vector<char> zin;
  ZSTD_inBuffer in{nullptr, 0, 0};
  size_t last_ret = 0;  // ZSTD_decompressStream's last hint: 0 = a frame just ended
  bool zeof = false;
  const char* codec = "plain";
};

ByteSource::ByteSource(const std::string& path) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  m.f = std::fopen(path.c_str(), "rb");
  DSV3_CHECK(m.f, "cannot open ", path, ": ", std::strerror(errno));
  unsigned char head[4] = {0, 0, 0, 0};
  const size_t got = std::fread(head, 1, 4, m.f);
  std::rewind(m.f);
  // The name promises a codec the bytes do not have: say so, rather than parse compressed
  // garbage or a mislabelled file as records.
  auto named = [&](const char* ext) {
    const size_t n = std::strlen(ext);
    return path.size() > n && path.compare(path.size() - n, n, ext) == 0;
  };
  const bool is_gzip = got >= 2 && head[0] == 0x1f && head[1] == 0x8b;
  const bool is_zstd = got == 4 && head[0] == 0x28 && head[1] == 0xb5 && head[2] == 0x2f &&
                       head[3] == 0xfd;
  if ((named(".gz") && !is_gzip) || (named(".zst") && !is_zstd)) {
    std::fclose(m.f);
    m.f = nullptr;
    const std::string kind = sniff_file_kind(path);
    fail(path, ": not a ", named(".gz") ? "gzip" : "zstd", " file, though named so",
         kind.empty() ? "" : " (it looks like " + kind + ")");
  }
  if (is_gzip) {
    std::fclose(m.f);
    m.f = nullptr;
    m.gz = gzopen(path.c_str(), "rb");
    DSV3_CHECK(m.gz, "cannot open ", path, " as gzip");
    gzbuffer(m.gz, 1 << 17);
    m.codec = "gzip";
  } else if (is_zstd) {
    m.zd = ZSTD_createDCtx();
    DSV3_CHECK(m.zd, "cannot create a zstd decoder");
    m.zin.resize(ZSTD_DStreamInSize());
    m.codec = "zstd";
  }
}

ByteSource::~ByteSource() {
  if (impl_->f) std::fclose(impl_->f);
  if (impl_->gz) gzclose(impl_->gz);
  if (impl_->zd) ZSTD_freeDCtx(impl_->zd);
}

const char* ByteSource::codec() const { return impl_->codec; }

size_t ByteSource::read(char* dst, size_t n) {
  Impl& m = *impl_;
  if (m.gz) {
    const int r = gzread(m.gz, dst, unsigned(std::min<size_t>(n, 1u << 30)));
    if (r < 0) {
      int code = 0;
      const char* msg = gzerror(m.gz, &code);
      fail(m.path, ": corrupt gzip stream (", msg ? msg : "?", ")");
    }
    if (r == 0 && !gzeof(m.gz)) fail(m.path, ": gzip read failed");
    // zlib reports a stream cut mid-member only as an early EOF; gzerror says so.
    if (r == 0) {
      int code = 0;
      gzerror(m.gz, &code);
      DSV3_CHECK(code == Z_OK || code == Z_STREAM_END, m.path, ": truncated gzip stream");
    }
    return size_t(r);
  }
  if (m.zd) {
    ZSTD_outBuffer out{dst, n, 0};
    while (out.pos == 0) {
      if (m.in.pos == m.in.size) {
        if (m.zeof) {
          DSV3_CHECK(m.last_ret == 0, m.path, ": truncated zstd stream");
          return 0;
        }
        const size_t got = std::fread(m.zin.data(), 1, m.zin.size(), m.f);
        if (got == 0) {
          DSV3_CHECK(!std::ferror(m.f), "cannot read ", m.path, ": ", std::strerror(errno));
          m.zeof = true;
          continue;
        }
        m.in = {m.zin.data(), got, 0};
      }
      const size_t ret = ZSTD_decompressStream(m.zd, &out, &m.in);
      DSV3_CHECK(!ZSTD_isError(ret), m.path, ": corrupt zstd stream (", ZSTD_getErrorName(ret),
                 ")");
      m.last_ret = ret;
    }
    return out.pos;
  }
  const size_t got = std::fread(dst, 1, n, m.f);
  DSV3_CHECK(got > 0 || !std::ferror(m.f), "cannot read ", m.path, ": ", std::strerror(errno));
  return got;
}

// --- records ---------------------------------------------------------------------------------
const char* bad_input_name(BadInput b) {
  switch (b) {
    case BadInput::None: return "none";
    case BadInput::BrokenJson: return "broken_json";
    case BadInput::NotAnObject: return "not_an_object";
    case BadInput::MissingText: return "missing_text";
    case BadInput::TextNotString: return "text_not_string";
    case BadInput::InvalidUtf8: return "invalid_utf8";
    case BadInput::NulBytes: return "nul_bytes";
    case BadInput::Empty: return "empty";
    case BadInput::TooLarge: return "too_large";
    case BadInput::ReadError: return "read_error";
    case BadInput::Count_: break;
  }
  return "?";
}

bool bad_input_is_repairable(BadInput b) {
  return b == BadInput::None || b == BadInput::InvalidUtf8 || b == BadInput::NulBytes;
}

RecordReader::RecordReader(const std::string& path, const ReaderConfig& cfg)
    : path_(path), cfg_(cfg), src_(std::make_unique<ByteSource>(path)) {
  format_ = cfg.format == InputFormat::Auto ? format_of(path) : cfg.format;
  buf_.resize(1 << 20);
}
RecordReader::~RecordReader() = default;

bool RecordReader::next_line(std::string& out, bool& too_large, uint64_t& bytes) {
  out.clear();
  too_large = false;
  bytes = 0;
  bool any = false;
  const uint64_t limit = uint64_t(std::max<int64_t>(cfg_.max_doc_bytes, 0));
  while (true) {
    if (pos_ == end_) {
      if (eof_) break;
      end_ = src_->read(buf_.data(), buf_.size());
      pos_ = 0;
      if (end_ == 0) {
        eof_ = true;
        break;
      }
    }
    any = true;
    const char* start = buf_.data() + pos_;
    const char* nl = static_cast<const char*>(std::memchr(start, '\n', end_ - pos_));
    const size_t take = nl ? size_t(nl - start) : end_ - pos_;
    bytes += take;
    // Past the limit the bytes are only counted, so a 10 GB line costs no memory.
    if (!too_large) {
      if (out.size() + take > limit) {
        too_large = true;
        std::string().swap(out);
      } else {
        out.append(start, take);
      }
    }
    pos_ += take;
    if (nl) {
      pos_++;
      break;
    }
  }
  if (!any) return false;
  line_++;
  if (!out.empty() && out.back() == '\r') out.pop_back();
  return true;
}

bool RecordReader::next(RawRecord& r) {
  r.data.clear();
  r.too_large = false;
  r.bytes = 0;
  std::string line;
  bool big = false;
  uint64_t bytes = 0;
  if (format_ == InputFormat::Jsonl || cfg_.text_unit == TextUnit::Line) {
    while (next_line(line, big, bytes)) {
      // blank lines are not records (a trailing newline, spacing between JSON lines)
      if (!big && blank_line(line)) continue;
      r.line = line_;
      r.bytes = bytes;
      r.too_large = big;
      r.data.swap(line);
      return true;
    }
    return false;
  }
  const uint64_t limit = uint64_t(std::max<int64_t>(cfg_.max_doc_bytes, 0));
  if (cfg_.text_unit == TextUnit::File) {
    if (file_done_) return false;
    file_done_ = true;
    r.line = 1;
    bool first = true;
    while (next_line(line, big, bytes)) {
      const uint64_t add = bytes + (first ? 0 : 1);
      r.bytes += add;
      if (!r.too_large && (big || r.data.size() + add > limit)) {
        r.too_large = true;
        std::string().swap(r.data);
      }
      if (!r.too_large) {
        if (!first) r.data += '\n';
        r.data += line;
      }
      first = false;
    }
    return !first;
  }
  // Paragraphs: runs of non-blank lines; blank lines separate them.
  bool started = false;
  while (next_line(line, big, bytes)) {
    const bool blank = !big && blank_line(line);
    if (blank) {
      if (started) return true;
      continue;
    }
    if (!started) {
      r.line = line_;
      started = true;
    } else {
      r.bytes += 1;
      if (!r.too_large) r.data += '\n';
    }
    r.bytes += bytes;
    if (!r.too_large && (big || r.data.size() + line.size() > limit)) {
      r.too_large = true;
      std::string().swap(r.data);
    }
    if (!r.too_large) r.data += line;
  }
  return started;
}

namespace {

// UTF-8 checks of the reader. curate/text.cpp has the same rules (utf8_valid, utf8_repair,
// is_space, trim_view) for the curation stages; the data layer cannot include it.

// Length of the valid UTF-8 sequence at p (1..4), or 0 if the bytes there are not one
// (overlong forms, surrogates and code points above U+10FFFF are invalid, as in Python).
size_t valid_seq(const unsigned char* p, size_t left) {
  const unsigned c = p[0];
  if (c < 0x80) return 1;
  auto cont = [&](size_t k) { return k < left && (p[k] & 0xC0) == 0x80; };
  if (c >= 0xC2 && c <= 0xDF) return cont(1) ? 2 : 0;
  if (c >= 0xE0 && c <= 0xEF) {
    if (!cont(1) || !cont(2)) return 0;
    if (c == 0xE0 && p[1] < 0xA0) return 0;  // overlong
    if (c == 0xED && p[1] >= 0xA0) return 0;  // surrogate
    return 3;
  }
  if (c >= 0xF0 && c <= 0xF4) {
    if (!cont(1) || !cont(2) || !cont(3)) return 0;
    if (c == 0xF0 && p[1] < 0x90) return 0;  // overlong
    if (c == 0xF4 && p[1] >= 0x90) return 0;  // > U+10FFFF
    return 4;
  }
  return 0;
}

// Replaces every maximal invalid subsequence by U+FFFD (Python's errors="replace"); returns
// how many replacements were made.
size_t repair_utf8(std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {  // the common case: already valid, nothing copied
    if (i + 8 <= n) {  // 8 ASCII bytes at a time
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if (!(w & 0x8080808080808080ull)) {
        i += 8;
        continue;
      }
    }
    const size_t k = valid_seq(p + i, n - i);
    if (!k) break;
    i += k;
  }
  if (i == n) return 0;
  std::string out(s, 0, i);
  out.reserve(s.size() + 16);
  size_t fixes = 0;
  while (i < n) {
    const size_t k = valid_seq(p + i, n - i);
    if (k) {
      out.append(s, i, k);
      i += k;
      continue;
    }
    // One U+FFFD per maximal invalid prefix: a lead byte with its valid continuation bytes,
    // or a single stray byte.
    size_t skip = 1;
    const unsigned c = p[i];
    const size_t want = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC2 ? 2 : 1;
    while (skip < want && i + skip < n && (p[i + skip] & 0xC0) == 0x80) skip++;
    out += "\xEF\xBF\xBD";
    i += skip;
    fixes++;
  }
  s.swap(out);
  return fixes;
}

// Whether valid UTF-8 text is only whitespace in Python's sense (str.strip() would empty it).
bool blank_text(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  for (size_t i = 0; i < s.size();) {
    const unsigned c = p[i];
    const size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    if (len > s.size() - i) return false;
    uint32_t cp;
    if (c < 0x80) cp = c, i += 1;
    else if (c < 0xE0) cp = (c & 0x1F) << 6 | (p[i + 1] & 0x3F), i += 2;
    else if (c < 0xF0) cp = (c & 0x0F) << 12 | (p[i + 1] & 0x3F) << 6 | (p[i + 2] & 0x3F), i += 3;
    else return false;  // U+10000 and above: no whitespace there
    const bool space = cp == ' ' || (cp >= 9 && cp <= 13) || (cp >= 0x1c && cp <= 0x1f) ||
                       cp == 0x85 || cp == 0xA0 || cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) ||
                       cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F || cp == 0x3000;
    if (!space) return false;
  }
  return true;
}

size_t strip_nul(std::string& s) {
  const size_t before = s.size();
  if (std::memchr(s.data(), 0, s.size()) == nullptr) return 0;
  s.erase(std::remove(s.begin(), s.end(), '\0'), s.end());
  return before - s.size();
}

}  // namespace

uint32_t parse_record(RawRecord& raw, InputFormat format, const ReaderConfig& cfg,
                      const std::string& path, Record& doc, std::string& detail) {
  uint32_t problems = 0;
  detail.clear();
  doc.line = raw.line;
  doc.bytes_in = raw.bytes;
  doc.id = path + ":" + std::to_string(raw.line);
  doc.meta = nullptr;
  if (raw.too_large) {
    detail = std::to_string(raw.bytes) + " bytes > max_doc_bytes " +
             std::to_string(cfg.max_doc_bytes);
    return bad_input_bit(BadInput::TooLarge);
  }
  // Repair first: a JSON parser rejects a whole line for one bad byte inside a string.
  if (const size_t fixes = repair_utf8(raw.data)) {
    problems |= bad_input_bit(BadInput::InvalidUtf8);
    detail = std::to_string(fixes) + " invalid UTF-8 sequence(s) replaced by U+FFFD";
  }
  if (format == InputFormat::Jsonl) {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(raw.data);
    } catch (const nlohmann::json::exception& e) {
      detail = e.what();
      return problems | bad_input_bit(BadInput::BrokenJson);
    }
    if (!j.is_object()) {
      detail = std::string("a JSON ") + j.type_name() + ", not an object";
      return problems | bad_input_bit(BadInput::NotAnObject);
    }
    if (auto id = j.find(cfg.id_key); id != j.end()) {
      if (id->is_string()) doc.id = id->get<std::string>();
      else if (!id->is_null()) doc.id = id->dump();
      j.erase(id);
    }
    auto t = j.find(cfg.text_key);
    if (t == j.end()) {
      detail = "no \"" + cfg.text_key + "\" field";
      return problems | bad_input_bit(BadInput::MissingText);
    }
    if (!t->is_string()) {
      detail = std::string("\"") + cfg.text_key + "\" is a JSON " + t->type_name();
      return problems | bad_input_bit(BadInput::TextNotString);
    }
    doc.text = std::move(t->get_ref<std::string&>());
    j.erase(t);
    doc.meta = std::move(j);
  } else {
    doc.text.swap(raw.data);
  }
  if (const size_t nul = strip_nul(doc.text)) {
    if (!problems) detail = std::to_string(nul) + " NUL byte(s) removed";
    problems |= bad_input_bit(BadInput::NulBytes);
  }
  if (blank_text(doc.text)) {
    detail = "no text";
    problems |= bad_input_bit(BadInput::Empty);
  }
  return problems;
}

}  // namespace dsv3
