#include "curate/writer.h"

#include <zlib.h>
#include <zstd.h>

#include <cmath>
#include <vector>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/io.h"
#include "curate/pii.h"

namespace dsv3::curate {

const char* compression_name(Compression c) {
  switch (c) {
    case Compression::None: return "none";
    case Compression::Zstd: return "zstd";
    case Compression::Gzip: return "gzip";
  }
  return "?";
}
Compression parse_compression(const std::string& s) {
  if (s == "none") return Compression::None;
  if (s == "zstd" || s == "zst") return Compression::Zstd;
  if (s == "gzip" || s == "gz") return Compression::Gzip;
  fail("compression must be zstd, gzip or none, not '", s, "'");
}
const char* compression_suffix(Compression c) {
  switch (c) {
    case Compression::None: return "";
    case Compression::Zstd: return ".zst";
    case Compression::Gzip: return ".gz";
  }
  return "";
}

struct StreamWriter::Impl {
  std::FILE* f;
  Compression c;
  ZSTD_CCtx* zc = nullptr;
  z_stream zs{};
  bool z_init = false;
  std::vector<char> out;
  bool finished = false;
};

StreamWriter::StreamWriter(std::FILE* f, Compression c, int level)
    : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.f = f;
  m.c = c;
  if (c == Compression::Zstd) {
    m.zc = ZSTD_createCCtx();
    DSV3_CHECK(m.zc, "cannot create a zstd encoder");
    ZSTD_CCtx_setParameter(m.zc, ZSTD_c_compressionLevel, level);
    ZSTD_CCtx_setParameter(m.zc, ZSTD_c_checksumFlag, 1);
    m.out.resize(ZSTD_CStreamOutSize());
  } else if (c == Compression::Gzip) {
    // windowBits 15 + 16: a gzip wrapper
    DSV3_CHECK(deflateInit2(&m.zs, std::min(std::max(level, 1), 9), Z_DEFLATED, 15 + 16, 8,
                            Z_DEFAULT_STRATEGY) == Z_OK,
               "cannot create a gzip encoder");
    m.z_init = true;
    m.out.resize(1 << 17);
  }
}

StreamWriter::~StreamWriter() {
  if (impl_->zc) ZSTD_freeCCtx(impl_->zc);
  if (impl_->z_init) deflateEnd(&impl_->zs);
}

void StreamWriter::write(std::string_view s) {
  Impl& m = *impl_;
  if (s.empty()) return;
  if (m.c == Compression::None) {
    write_bytes(m.f, s.data(), s.size());
  } else if (m.c == Compression::Zstd) {
    ZSTD_inBuffer in{s.data(), s.size(), 0};
    while (in.pos < in.size) {
      ZSTD_outBuffer o{m.out.data(), m.out.size(), 0};
      const size_t r = ZSTD_compressStream2(m.zc, &o, &in, ZSTD_e_continue);
      DSV3_CHECK(!ZSTD_isError(r), "zstd compression failed: ", ZSTD_getErrorName(r));
      write_bytes(m.f, m.out.data(), o.pos);
    }
  } else {
    m.zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(s.data()));
    m.zs.avail_in = uInt(s.size());
    while (m.zs.avail_in > 0) {
      m.zs.next_out = reinterpret_cast<Bytef*>(m.out.data());
      m.zs.avail_out = uInt(m.out.size());
      DSV3_CHECK(deflate(&m.zs, Z_NO_FLUSH) != Z_STREAM_ERROR, "gzip compression failed");
      write_bytes(m.f, m.out.data(), m.out.size() - m.zs.avail_out);
    }
  }
}

void StreamWriter::finish() {
  Impl& m = *impl_;
  if (m.finished) return;
  m.finished = true;
  if (m.c == Compression::Zstd) {
    ZSTD_inBuffer in{nullptr, 0, 0};
    size_t left = 1;
    while (left) {
      ZSTD_outBuffer o{m.out.data(), m.out.size(), 0};
      left = ZSTD_compressStream2(m.zc, &o, &in, ZSTD_e_end);
      DSV3_CHECK(!ZSTD_isError(left), "zstd compression failed: ", ZSTD_getErrorName(left));
      write_bytes(m.f, m.out.data(), o.pos);
    }
  } else if (m.c == Compression::Gzip) {
    int r = Z_OK;
    m.zs.avail_in = 0;
    while (r != Z_STREAM_END) {
      m.zs.next_out = reinterpret_cast<Bytef*>(m.out.data());
      m.zs.avail_out = uInt(m.out.size());
      r = deflate(&m.zs, Z_FINISH);
      DSV3_CHECK(r == Z_OK || r == Z_STREAM_END || r == Z_BUF_ERROR, "gzip compression failed");
      write_bytes(m.f, m.out.data(), m.out.size() - m.zs.avail_out);
    }
  }
}

namespace {

using ojson = nlohmann::ordered_json;

ojson base_record(const Document& doc, const std::string& source, bool with_text) {
  ojson j;
  j["id"] = doc.id;
  if (with_text) j["text"] = doc.text;
  if (doc.meta.is_object())
    for (auto it = doc.meta.begin(); it != doc.meta.end(); ++it)
      if (it.key() != "curate") j[it.key()] = it.value();
  ojson c;
  c["source"] = source;
  c["line"] = doc.line;
  ojson pii = ojson::object();
  for (size_t i = 0; i < kPiiTypes; i++)
    if (doc.pii[i]) pii[pii_type_name(PiiType(i))] = doc.pii[i];
  if (!pii.empty()) c["pii"] = pii;
  if (doc.c4_lines_removed) c["c4_lines_removed"] = doc.c4_lines_removed;
  if (!std::isnan(doc.classifier)) c["classifier"] = doc.classifier;
  if (!std::isnan(doc.perplexity)) c["perplexity"] = doc.perplexity;
  if (!std::isnan(doc.tfidf)) c["tfidf"] = doc.tfidf;
  j["curate"] = c;
  return j;
}

std::string line_of(const ojson& j) {
  // replace, not throw, on invalid UTF-8: the reader repairs text, but metadata fields came
  // from the input as they were
  std::string s = j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  s += '\n';
  return s;
}

}  // namespace

// JSON string escaping for the text, which is most of every record: runs of plain bytes are
// copied whole (nlohmann's serializer goes byte by byte through a copy of the text).
void append_json_string(std::string& out, std::string_view s) {
  static const char hex[] = "0123456789abcdef";
  out += '"';
  size_t run = 0;
  for (size_t i = 0; i < s.size(); i++) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    if (c >= 0x20 && c != '"' && c != '\\') continue;
    out.append(s.data() + run, i - run);
    run = i + 1;
    switch (c) {
      case '"': out += "\\\""; break;
      case '\\': out += "\\\\"; break;
      case '\n': out += "\\n"; break;
      case '\t': out += "\\t"; break;
      case '\r': out += "\\r"; break;
      case '\b': out += "\\b"; break;
      case '\f': out += "\\f"; break;
      default:
        out += "\\u00";
        out += hex[c >> 4];
        out += hex[c & 15];
    }
  }
  out.append(s.data() + run, s.size() - run);
  out += '"';
}

std::string curated_record(const Document& doc, const std::string& source) {
  // The same record as rejected_record builds through nlohmann, written directly: the text is
  // escaped in place, the small fields go through the library.
  ojson rest = base_record(doc, source, false);
  std::string out;
  out.reserve(doc.text.size() + doc.text.size() / 16 + 256);
  out += "{\"id\":";
  out += ojson(doc.id).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  out += ",\"text\":";
  append_json_string(out, doc.text);
  for (auto it = rest.begin(); it != rest.end(); ++it) {
    if (it.key() == "id") continue;
    out += ',';
    out += ojson(it.key()).dump();
    out += ':';
    out += it.value().dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  out += "}\n";
  return out;
}

std::string rejected_record(const Document& doc, const std::string& source,
                            const std::string& stage, const std::string& rule,
                            const std::string& detail, std::string_view raw) {
  ojson j = base_record(doc, source, raw.empty());
  if (!raw.empty()) j["raw"] = std::string(raw.substr(0, 4096));
  j["curate"]["stage"] = stage;
  j["curate"]["rule"] = rule;
  if (!detail.empty()) j["curate"]["detail"] = detail;
  return line_of(j);
}

}  // namespace dsv3::curate
