#include "checkpoint/quantized.h"

#include <algorithm>

#include "checkpoint/hf.h"
#include "core/check.h"
#include "core/fields.h"
#include "core/io.h"

namespace dsv3 {

using json = nlohmann::json;

namespace {

constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'I', 'N', 'T', '8'};
constexpr uint64_t kMaxHeader = 1ull << 30;
constexpr size_t kChunk = size_t(64) << 20;


json high_json(const ParamTable& t) {
  json a = json::array();
  for (const auto& p : t.list) a.push_back({{"name", p.name}, {"shape", p.shape}, {"offset", p.offset}});
  return a;
}
json int8_json(const QuantLayout& l) {
  json a = json::array();
  for (const auto& u : l.units)
    a.push_back({{"name", u.name}, {"rows", u.rows}, {"cols", u.cols}, {"offset", u.offset}});
  return a;
}

}  // namespace

void save_int8_model(const std::string& path, const ModelConfig& c, const QuantizedParams& q,
                     const std::string& source) {
  validate(c);
  const ParamTable ht = high_precision_table(c);
  const QuantLayout l = quant_layout(c);
  DSV3_CHECK(q.scheme != QuantScheme::None, "cannot write ", path, ": no quantisation scheme");
  DSV3_CHECK(q.high.size() == ht.total && q.int8.size() == l.bytes, "cannot write ", path, ": ",
             q.high.size(), " + ", q.int8.size(), " values given, the config has ", ht.total,
             " + ", l.bytes);
  const uint64_t high_len = uint64_t(q.high.size()) * 4, int8_off = align64(high_len);
  static const char zeros[64] = {};
  uint32_t crc = crc32_update(0, q.high.data(), size_t(high_len));
  crc = crc32_update(crc, zeros, size_t(int8_off - high_len));
  crc = crc32_update(crc, q.int8.data(), q.int8.size());

  json h;
  h["model"] = fields_to_json(model_fields(), &c);
  h["scheme"] = quant_scheme_name(q.scheme);
  h["high"] = high_json(ht);
  h["int8"] = int8_json(l);
  h["sections"] = {{"high", {0, high_len}}, {"int8", {int8_off, q.int8.size()}}};
  h["source"] = source;
  h["crc32"] = crc;
  const std::string text = h.dump();
  const uint32_t header_crc = crc32_update(0, text.data(), text.size());
  const uint64_t payload_start = align64(kFrameBytes + text.size());
  write_file_atomic(path, [&](std::FILE* f) {
    write_bytes(f, kMagic, 8);
    write_u32le(f, kInt8ModelVersion);
    write_u32le(f, header_crc);
    write_u64le(f, text.size());
    write_bytes(f, text.data(), text.size());
    write_zeros(f, size_t(payload_start - kFrameBytes - text.size()));
    write_bytes(f, q.high.data(), size_t(high_len));
    write_zeros(f, size_t(int8_off - high_len));
    write_bytes(f, q.int8.data(), q.int8.size());
  });
}

namespace {
Int8Model load_int8_model_checked(const std::string& path) {
  InFile f(path);
  const uint64_t size = f.size();
  auto looks_like = [&] {
    const std::string k = sniff_file_kind(path);
    return k.empty() ? std::string() : " (it looks like " + k + ")";
  };
  DSV3_CHECK(size >= kFrameBytes, path, " is not a dsv3 int8 model: ", size,
             " bytes is too short for the header", looks_like());
  unsigned char head[kFrameBytes];
  f.read_at(0, head, kFrameBytes);
  DSV3_CHECK(std::equal(kMagic, kMagic + 8, reinterpret_cast<const char*>(head)), path,
             " is not a dsv3 int8 model (bad magic)", looks_like());
  const FrameHeader frame = check_frame(path, head, size, kInt8ModelVersion, kMaxHeader, "int8 model");
  const std::string text = f.read_string(kFrameBytes, size_t(frame.header_len));
  const uint32_t got = crc32_update(0, text.data(), text.size());
  DSV3_CHECK(got == frame.header_crc || !checksum_verification(), path, ": header checksum mismatch (stored ", frame.header_crc,
             ", computed ", got, "): the file is corrupt");
  json h;
  try {
    h = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, ": header is not valid JSON (error at byte ", e.byte, ")");
  }
  DSV3_CHECK(h.is_object(), path, ": header is not a JSON object");
  for (const char* key : {"model", "scheme", "high", "int8", "sections", "crc32"})
    DSV3_CHECK(h.contains(key), path, ": header has no '", key, "'");

  Int8Model m;
  fields_from_json(model_fields(), &m.config, h["model"], path + ": model config");
  try {
    validate(m.config);
  } catch (const Error& e) {
    fail(path, ": invalid model config: ", e.what());
  }
  DSV3_CHECK(h["scheme"].is_string(), path, ": 'scheme' is not a string");
  try {
    m.params.scheme = parse_quant_scheme(h["scheme"].get<std::string>());
  } catch (const Error& e) {
    fail(path, ": ", e.what());
  }
  DSV3_CHECK(m.params.scheme != QuantScheme::None, path, ": scheme 'none' in an int8 model");
  DSV3_CHECK(!h.contains("source") || h["source"].is_string(), path, ": 'source' is not a string");
  m.source = h.value("source", std::string());
  uint64_t crc_stored = 0;
  DSV3_CHECK(json_u64(h["crc32"], &crc_stored) && crc_stored <= 0xffffffffu, path, ": bad crc32");

  // Sizes first (a truncated file says so), then the layouts, which must be the ones this build
  // derives from the config (bounded first: a corrupt config must not make us build a table of
  // billions of entries).
  const json& sj = h["sections"];
  uint64_t ho = 0, hl = 0, io = 0, il = 0;
  DSV3_CHECK(sj.is_object() && sj.size() == 2 && sj.contains("high") && sj.contains("int8") &&
                 sj["high"].is_array() && sj["high"].size() == 2 && sj["int8"].is_array() &&
                 sj["int8"].size() == 2 && json_u64(sj["high"][0], &ho) &&
                 json_u64(sj["high"][1], &hl) && json_u64(sj["int8"][0], &io) &&
                 json_u64(sj["int8"][1], &il) && ho == 0 && hl % 4 == 0 && io == align64(hl) &&
                 il < (uint64_t(1) << 60) && hl < (uint64_t(1) << 60),
             path, ": 'sections' must be {\"high\": [0, length], \"int8\": [offset, length]}");
  const uint64_t payload_start = align64(kFrameBytes + frame.header_len);
  const uint64_t expected = payload_start + io + il;
  DSV3_CHECK(size >= expected, path, ": truncated: file is ", size, " bytes, its header describes ",
             expected);
  DSV3_CHECK(size == expected, path, ": file is ", size, " bytes but its header describes ",
             expected, " (", size - expected, " unexpected trailing bytes)");
  {  // the zero padding before the payload (the CRCs cover everything else)
    char pad[64];
    const size_t n = size_t(payload_start - kFrameBytes - frame.header_len);
    f.read_at(kFrameBytes + frame.header_len, pad, n);
    DSV3_CHECK(std::all_of(pad, pad + n, [](char c) { return c == 0; }), path,
               ": non-zero bytes in the header padding: the file is corrupt");
  }
  DSV3_CHECK(param_count_lower_bound(m.config) <= double(hl / 4 + il), path, ": the model config "
             "describes more parameters than the file holds (corrupt header)");
  const ParamTable ht = high_precision_table(m.config);
  const QuantLayout l = quant_layout(m.config);
  DSV3_CHECK(h["high"] == high_json(ht), path, ": the high-precision tensor layout differs from "
             "the one this build derives from the config (a file from another dsv3 version?)");
  DSV3_CHECK(h["int8"] == int8_json(l), path, ": the int8 tensor layout differs from the one this "
             "build derives from the config (a file from another dsv3 version?)");
  DSV3_CHECK(hl == uint64_t(ht.total) * 4 && il == l.bytes, path, ": sections of ", hl, " and ", il,
             " bytes, the config needs ", uint64_t(ht.total) * 4, " and ", l.bytes);

  m.params.high.resize(ht.total);
  m.params.int8.resize(l.bytes);
  uint32_t crc = 0;
  auto read = [&](uint64_t off, char* into, uint64_t len) {
    for (uint64_t done = 0; done < len; done += kChunk) {
      const size_t k = size_t(std::min<uint64_t>(kChunk, len - done));
      f.read_at(payload_start + off + done, into + done, k);
      crc = crc32_update(crc, into + done, k);
    }
  };
  read(0, reinterpret_cast<char*>(m.params.high.data()), hl);
  char pad[64];
  read(hl, pad, io - hl);
  read(io, reinterpret_cast<char*>(m.params.int8.data()), il);
  DSV3_CHECK(crc == crc_stored || !checksum_verification(), path, ": checksum mismatch (stored ", crc_stored, ", computed ",
             crc, "): the file is corrupt");
  check_quantized(m.config, m.params, path);
  return m;
}
}  // namespace

Int8Model load_int8_model(const std::string& path) {
  // Every header field is type-checked before use above; this is the backstop that keeps a
  // check we missed a named rejection rather than an escaped nlohmann exception (found by
  // fuzz_int8_model: a non-string 'source').
  try {
    return load_int8_model_checked(path);
  } catch (const json::exception& e) {
    fail(path, ": malformed header: ", e.what());
  }
}

}  // namespace dsv3
