#include "checkpoint/checkpoint.h"

#include <algorithm>
#include <cerrno>
#include <csignal>
#include <filesystem>

#include <unistd.h>

#include "checkpoint/hf.h"
#include "checkpoint/quantized.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/sharded.h"
#include "core/check.h"
#include "core/fields.h"
#include "core/io.h"
#include "model/params.h"

namespace dsv3 {

const std::vector<FieldSpec>& checkpoint_fields() {
  using K = CheckpointConfig;
  static const std::vector<FieldSpec> f = {
      field("save_every", &K::save_every, "checkpoint every N steps (0 = only at the end)", at_least(0)),
      field("keep", &K::keep, "checkpoints to keep", in_range(1, 1000000)),
      field("resume", &K::resume, "continue from this checkpoint or run directory"),
      field("overwrite", &K::overwrite,
            "start even though --out holds another run: its checkpoints and metrics are "
            "deleted (a resumed run: also its checkpoints after the one resumed from)"),
  };
  return f;
}

void validate(const CheckpointConfig& c) {
  DSV3_CHECK(c.save_every >= 0, "save_every must be >= 0");
  DSV3_CHECK(c.keep >= 1, "keep must be >= 1");
}


namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'C', 'K', 'P', 'T'};
constexpr uint64_t kFixedHeader = 24;               // magic, version, header crc, header length
constexpr uint64_t kMaxHeader = 1ull << 30;         // 1 GiB of JSON is corrupt, not a model
constexpr size_t kChunk = size_t(64) << 20;         // bytes per read while checksumming
const char* const kSectionNames[3] = {"params", "adam_m", "adam_v"};


struct Section {
  const char* name;
  uint64_t off = 0, len = 0;  // bytes from the payload start
};

// Section layout of a file holding `count` arrays of n floats: back to back, 64-byte aligned.
std::vector<Section> layout(size_t n, int count) {
  std::vector<Section> s;
  uint64_t off = 0;
  for (int i = 0; i < count; i++) {
    off = align64(off);
    s.push_back({kSectionNames[i], off, uint64_t(n) * 4});
    off += uint64_t(n) * 4;
  }
  return s;
}

std::string looks_like(const std::string& path) {
  std::string k = sniff_file_kind(path);
  return k.empty() ? "" : " (it looks like " + k + ")";
}

}  // namespace

void save_checkpoint(const std::string& path, const ModelConfig& c, const json& train,
                     const float* params, const float* adam_m, const float* adam_v, size_t n) {
  validate(c);
  const ParamTable t = build_param_table(c);
  DSV3_CHECK(n == t.total, "cannot write ", path, ": ", n, " floats given, the config has ",
             t.total);
  DSV3_CHECK(params, "cannot write ", path, ": no parameters");
  DSV3_CHECK((adam_m == nullptr) == (adam_v == nullptr), "cannot write ", path,
             ": pass both Adam moments or neither");
  const float* data[3] = {params, adam_m, adam_v};
  const std::vector<Section> secs = layout(n, adam_m ? 3 : 1);

  static const char zeros[64] = {};
  uint32_t crc = 0;
  uint64_t cursor = 0;
  for (size_t i = 0; i < secs.size(); i++) {
    crc = crc32_update(crc, zeros, size_t(secs[i].off - cursor));
    crc = crc32_update(crc, data[i], size_t(secs[i].len));
    cursor = secs[i].off + secs[i].len;
  }

  json h;
  h["model"] = fields_to_json(model_fields(), &c);
  h["train"] = train;
  h["n_params"] = n;
  json tensors = json::array();
  for (const auto& p : t.list)
    tensors.push_back({{"name", p.name}, {"shape", p.shape}, {"offset", p.offset}});
  h["tensors"] = std::move(tensors);
  h["sections"] = json::object();
  for (const auto& s : secs) h["sections"][s.name] = {s.off, s.len};
  h["crc32"] = crc;
  std::string text;
  try {
    text = h.dump();
  } catch (const json::exception& e) {
    fail("cannot write ", path, ": the train state is not serialisable (", e.what(), ")");
  }
  const uint32_t header_crc = crc32_update(0, text.data(), text.size());
  const uint64_t payload_start = align64(kFixedHeader + text.size());

  write_file_atomic(path, [&](std::FILE* f) {
    write_bytes(f, kMagic, 8);
    write_u32le(f, kCheckpointVersion);
    write_u32le(f, header_crc);
    write_u64le(f, text.size());
    write_bytes(f, text.data(), text.size());
    write_zeros(f, size_t(payload_start - kFixedHeader - text.size()));
    uint64_t at = 0;
    for (size_t i = 0; i < secs.size(); i++) {
      write_zeros(f, size_t(secs[i].off - at));
      write_bytes(f, data[i], size_t(secs[i].len));
      at = secs[i].off + secs[i].len;
    }
  });
}

namespace {

// The frame and the JSON header of an open checkpoint, checked (magic, version, length, CRC).
json read_header(const InFile& f, uint64_t* header_len) {
  const std::string& path = f.path();
  const uint64_t size = f.size();
  if (size < kFixedHeader) {
    char head[kFixedHeader] = {};
    f.read_at(0, head, size_t(size));
    DSV3_CHECK(size == 0 || !std::equal(head, head + std::min<uint64_t>(size, 8), kMagic), path,
               ": truncated: file is ", size, " bytes, expected at least ", kFixedHeader,
               " (too short for the frame of a dsv3 checkpoint)");
    fail(path, " is not a dsv3 checkpoint: ", size, " bytes is too short for the header",
         looks_like(path));
  }
  unsigned char head[kFixedHeader];
  f.read_at(0, head, kFixedHeader);
  DSV3_CHECK(std::equal(kMagic, kMagic + 8, reinterpret_cast<const char*>(head)), path,
             " is not a dsv3 checkpoint (bad magic)", looks_like(path));
  const FrameHeader frame =
      check_frame(path, head, size, kCheckpointVersion, kMaxHeader, "checkpoint");
  const uint32_t header_crc = frame.header_crc;
  *header_len = frame.header_len;
  const std::string text = f.read_string(kFixedHeader, size_t(frame.header_len));
  const uint32_t got_crc = crc32_update(0, text.data(), text.size());
  DSV3_CHECK(got_crc == header_crc || !checksum_verification(), path,
             ": header checksum mismatch (stored ", header_crc, ", computed ", got_crc,
             "): the file is corrupt");
  json h;
  try {
    h = json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, ": header is not valid JSON (error at byte ", e.byte, ")");
  } catch (const json::exception& e) {  // out_of_range: a number like 1e999
    fail(path, ": header is not valid JSON: ", json_error_text(e));
  }
  DSV3_CHECK(h.is_object(), path, ": header is not a JSON object");
  for (const char* key : {"model", "train", "n_params", "tensors", "sections", "crc32"})
    DSV3_CHECK(h.contains(key), path, ": header has no '", key, "'");
  return h;
}

}  // namespace

json load_checkpoint_train_state(const std::string& path) {
  InFile f(path);
  uint64_t hlen = 0;
  json h = read_header(f, &hlen);
  return std::move(h["train"]);
}

Checkpoint load_checkpoint(const std::string& path, bool load_optimizer) {
  InFile f(path);
  const uint64_t size = f.size();
  uint64_t hlen = 0;
  json h = read_header(f, &hlen);

  Checkpoint ck;
  fields_from_json(model_fields(), &ck.config, h["model"], path + ": model config");
  try {
    validate(ck.config);
  } catch (const Error& e) {
    fail(path, ": invalid model config: ", e.what());
  }
  ck.train = std::move(h["train"]);

  uint64_t n = 0, crc_stored = 0;
  // Sane before any arithmetic; whether the file holds them is the size check below, so a cut
  // file is reported as truncated wherever the cut is.
  DSV3_CHECK(json_u64(h["n_params"], &n) && n <= (uint64_t(1) << 56), path, ": bad n_params ",
             quote_bytes(h["n_params"].dump(), 40));
  DSV3_CHECK(json_u64(h["crc32"], &crc_stored) && crc_stored <= 0xffffffffu, path, ": bad crc32");

  // Sections: params, optionally both Adam moments, each n floats, in order, 64-byte aligned.
  const json& sj = h["sections"];
  DSV3_CHECK(sj.is_object(), path, ": 'sections' is not an object");
  for (auto it = sj.begin(); it != sj.end(); ++it)
    DSV3_CHECK(std::find_if(std::begin(kSectionNames), std::end(kSectionNames),
                            [&](const char* s) { return it.key() == s; }) != std::end(kSectionNames),
               path, ": unknown section '", it.key(), "'");
  DSV3_CHECK(sj.contains("params"), path, ": no 'params' section");
  DSV3_CHECK(sj.contains("adam_m") == sj.contains("adam_v"), path,
             ": has one Adam moment section without the other");
  const int count = sj.contains("adam_m") ? 3 : 1;
  std::vector<Section> secs;
  uint64_t payload_len = 0;
  for (int i = 0; i < count; i++) {
    const json& v = sj[kSectionNames[i]];
    Section s{kSectionNames[i]};
    DSV3_CHECK(v.is_array() && v.size() == 2 && json_u64(v[0], &s.off) && json_u64(v[1], &s.len),
               path, ": section '", s.name, "' must be [offset, length]");
    DSV3_CHECK(s.len == n * 4, path, ": section '", s.name, "' holds ", s.len,
               " bytes, expected ", n * 4, " (n_params ", n, ")");
    DSV3_CHECK(s.off % 64 == 0 && s.off >= payload_len && s.off - payload_len < 64 &&
                   s.off <= (uint64_t(1) << 60),
               path,
               ": section '", s.name, "' has a bad offset ", s.off);
    payload_len = s.off + s.len;
    secs.push_back(s);
  }
  const uint64_t payload_start = align64(kFixedHeader + hlen);
  const uint64_t expected = payload_start + payload_len;
  DSV3_CHECK(size >= expected, path, ": truncated: file is ", size, " bytes, expected ", expected,
             " (as its header describes)");
  DSV3_CHECK(size == expected, path, ": file is ", size, " bytes but its header describes ",
             expected, " (", size - expected, " unexpected trailing bytes)");

  // The stored layout must be the one this build derives from the config.
  DSV3_CHECK(param_count_lower_bound(ck.config) <= double(n), path,
             ": param count mismatch: the model config needs more than the ", n,
             " floats the file holds");
  const ParamTable t = build_param_table(ck.config);
  DSV3_CHECK(t.total == n, path, ": param count mismatch: file has ", n,
             " floats, the model config gives ", t.total);
  const json& tj = h["tensors"];
  DSV3_CHECK(tj.is_array() && tj.size() == t.list.size(), path, ": tensor list has ",
             tj.is_array() ? tj.size() : 0, " entries, the model config gives ", t.list.size());
  for (size_t i = 0; i < t.list.size(); i++) {
    const ParamInfo& p = t.list[i];
    const json& e = tj[i];
    uint64_t off = 0;
    bool same = e.is_object() && e.contains("name") && e["name"] == p.name &&
                e.contains("shape") && e["shape"] == json(p.shape) && e.contains("offset") &&
                json_u64(e["offset"], &off) && off == p.offset;
    DSV3_CHECK(same, path, ": tensor layout differs from this build's at entry ", i, " (expected '",
               p.name, "' ", shape_str(p.shape), " at offset ", p.offset, ")");
  }

  // Read the payload front to back, checksumming every byte including the padding.
  ck.params.resize(n);
  if (count == 3 && load_optimizer) ck.adam_m.resize(n), ck.adam_v.resize(n);
  float* dst[3] = {ck.params.data(), ck.adam_m.data(), ck.adam_v.data()};
  std::vector<char> scratch;
  uint32_t crc = 0;
  uint64_t cursor = 0;
  for (int i = 0; i < count; i++) {
    char pad[64];
    const size_t gap = size_t(secs[i].off - cursor);
    f.read_at(payload_start + cursor, pad, gap);
    crc = crc32_update(crc, pad, gap);
    for (uint64_t done = 0; done < secs[i].len; done += kChunk) {
      const size_t k = size_t(std::min<uint64_t>(kChunk, secs[i].len - done));
      char* into;
      if (dst[i]) {
        into = reinterpret_cast<char*>(dst[i]) + done;
      } else {
        scratch.resize(k);
        into = scratch.data();
      }
      f.read_at(payload_start + secs[i].off + done, into, k);
      crc = crc32_update(crc, into, k);
    }
    cursor = secs[i].off + secs[i].len;
  }
  DSV3_CHECK(crc == crc_stored || !checksum_verification(), path, ": checksum mismatch (stored ", crc_stored, ", computed ",
             crc, "): the file is corrupt");
  return ck;
}

std::string checkpoint_path(const std::string& dir, int64_t step) {
  char name[48];
  std::snprintf(name, sizeof name, "ckpt_%08lld.dsv3", static_cast<long long>(step));
  return (fs::path(dir) / name).string();
}

int64_t checkpoint_step(const std::string& path) { return checkpoint_step(path, ".dsv3"); }

int64_t checkpoint_step(const std::string& path, const std::string& suf) {
  const std::string name = fs::path(path).filename().string();
  const std::string pre = "ckpt_";
  if (name.size() <= pre.size() + suf.size() || name.compare(0, pre.size(), pre) != 0 ||
      name.compare(name.size() - suf.size(), suf.size(), suf) != 0)
    return -1;
  const std::string digits = name.substr(pre.size(), name.size() - pre.size() - suf.size());
  if (digits.size() > 18 || !std::all_of(digits.begin(), digits.end(), ::isdigit)) return -1;
  return std::stoll(digits);
}

std::vector<std::string> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string p = it->path().string();
    const int64_t step = checkpoint_step(p);
    if (step >= 0 && it->is_regular_file(ec)) found.emplace_back(step, p);
  }
  std::sort(found.begin(), found.end());
  std::vector<std::string> paths;
  for (auto& [step, p] : found) paths.push_back(std::move(p));
  return paths;
}

void prune_checkpoints(const std::string& dir, int keep) {
  if (keep <= 0) return;
  const std::vector<std::string> all = list_checkpoints(dir);
  for (size_t i = 0; i + size_t(keep) < all.size(); i++) {
    std::error_code ec;
    fs::remove(all[i], ec);
    DSV3_CHECK(!ec, "cannot delete old checkpoint ", all[i], ": ", ec.message());
  }
  remove_stale_checkpoint_temps(dir);
}

namespace {
// The pid of a checkpoint temp file name, or -1.
pid_t temp_pid(const std::string& name) {
  const size_t at = name.rfind(".tmp.");
  if (at == std::string::npos || checkpoint_step(name.substr(0, at)) < 0) return -1;
  const std::string pid_text = name.substr(at + 5);
  if (pid_text.empty() || pid_text.size() > 9 ||
      !std::all_of(pid_text.begin(), pid_text.end(), ::isdigit))
    return -1;
  return pid_t(std::stol(pid_text));
}
}  // namespace

bool is_checkpoint_temp(const std::string& name) { return temp_pid(name) >= 0; }

void remove_stale_checkpoint_temps(const std::string& dir) {
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const pid_t pid = temp_pid(it->path().filename().string());
    if (pid < 0 || pid == ::getpid() || ::kill(pid, 0) == 0 || errno != ESRCH) continue;
    std::error_code rm;
    fs::remove(it->path(), rm);  // best effort: a stale temp file is harmless
  }
}

LoadedModel load_model_any(const std::string& path, bool keep_int8) {
  const char* expected =
      "expected a dsv3 checkpoint file, a sharded checkpoint directory (ckpt_*.shards), a run "
      "directory (with checkpoints), a Hugging Face directory (with config.json) or a dsv3 int8 "
      "model";
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  DSV3_CHECK(fs::exists(st), "cannot open ", path, ": no such file or directory (", expected, ")");
  LoadedModel m;
  if (fs::is_directory(st)) {
    if (fs::exists(fs::path(path) / "config.json")) {
      HfModel hf = import_hf(path);
      m.config = hf.config;
      m.params = std::move(hf.params);
      m.source = "hf " + path;
      m.note = hf_defaults_note(hf);
      return m;
    }
    // a sharded checkpoint (ckpt_*.shards), or a run directory's newest complete checkpoint
    const std::string ck_path = is_sharded_checkpoint(path) ? path : latest_checkpoint(path);
    DSV3_CHECK(!ck_path.empty(), path, " has neither checkpoints (ckpt_*.dsv3, ckpt_*.shards) nor "
               "config.json: ", expected);
    if (is_sharded_checkpoint(ck_path)) {
      const ShardedCheckpoint sc(ck_path);
      m.config = sc.config();
      m.params = sc.full_params();
      m.source = "sharded checkpoint " + ck_path;
      return m;
    }
    Checkpoint ck = load_checkpoint(ck_path, false);
    m.config = ck.config;
    m.params = std::move(ck.params);
    m.source = "checkpoint " + ck_path;
    return m;
  }
  const std::string kind = sniff_file_kind(path);
  if (kind == "a dsv3 int8 model") {
    Int8Model q = load_int8_model(path);
    m.config = q.config;
    if (!keep_int8) m.params = dequantize_params(q.config, q.params);
    m.int8 = std::move(q.params);
    m.source = "int8 model " + path + " (" + quant_scheme_name(m.int8.scheme) + ")";
    return m;
  }
  // A file cut inside the magic is a truncated checkpoint too: load_checkpoint says so.
  const bool cut_magic = [&] {
    InFile f(path);
    if (f.size() == 0 || f.size() >= 8) return false;
    const std::string head = f.read_string(0, size_t(f.size()));
    return std::equal(head.begin(), head.end(), kMagic);
  }();
  if (kind != "a dsv3 checkpoint" && !cut_magic) {
    if (kind == "a safetensors file" || fs::path(path).filename() == "config.json")
      fail(path, " is part of a Hugging Face model: pass its directory (", expected, ")");
    fail(path, " is not a dsv3 checkpoint", kind.empty() ? "" : " (it looks like " + kind + ")",
         ": ", expected);
  }
  Checkpoint ck = load_checkpoint(path, false);
  m.config = ck.config;
  m.params = std::move(ck.params);
  m.source = "checkpoint " + path;
  return m;
}

}  // namespace dsv3
