#include "checkpoint/sharded.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <filesystem>
#include <map>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf.h"
#include "core/check.h"
#include "core/fields.h"
#include "core/io.h"
#include "model/params.h"

namespace dsv3 {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {
constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'S', 'H', 'R', 'D'};
constexpr uint64_t kMaxHeader = 1ull << 30;
constexpr const char* kFormat = "dsv3-sharded";

// "ckpt_00000100.shards" -> 100; else -1
int64_t shards_step(const std::string& path) { return checkpoint_step(path, ".shards"); }
}  // namespace

std::string sharded_checkpoint_dir(const std::string& run_dir, int64_t step) {
  char name[48];
  std::snprintf(name, sizeof name, "ckpt_%08lld.shards", static_cast<long long>(step));
  return (fs::path(run_dir) / name).string();
}

std::string shard_file(const std::string& dir, int rank) {
  char name[32];
  std::snprintf(name, sizeof name, "rank_%05d.bin", rank);
  return (fs::path(dir) / name).string();
}

void write_shard(const std::string& dir, int rank, int world, const ShardData& d) {
  size_t n = 0;
  for (const auto& s : d.segments) n += s.count;
  DSV3_CHECK(d.values.size() == d.arrays.size(), "internal: shard arrays and values differ");
  for (const auto& v : d.values) DSV3_CHECK(v.size() == n, "internal: shard array size");
  json h;
  h["rank"] = rank;
  h["world"] = world;
  h["arrays"] = d.arrays;
  h["elements"] = n;
  json segs = json::array();
  size_t at = 0;
  for (const auto& s : d.segments) {
    json crcs = json::array();
    for (const auto& v : d.values) crcs.push_back(crc32_update(0, v.data() + at, s.count * 4));
    segs.push_back({s.tensor, s.begin, s.count, crcs});
    at += s.count;
  }
  h["segments"] = std::move(segs);
  const std::string text = h.dump();
  const uint32_t hcrc = crc32_update(0, text.data(), text.size());
  const uint64_t payload = align64(kFrameBytes + text.size());
  std::error_code ec;
  fs::create_directories(dir, ec);
  DSV3_CHECK(!ec, "cannot create checkpoint directory ", dir, ": ", ec.message());
  write_file_atomic(shard_file(dir, rank), [&](std::FILE* f) {
    write_bytes(f, kMagic, 8);
    write_u32le(f, kCkptShardVersion);
    write_u32le(f, hcrc);
    write_u64le(f, text.size());
    write_bytes(f, text.data(), text.size());
    write_zeros(f, size_t(payload - kFrameBytes - text.size()));
    for (const auto& v : d.values) {
      write_bytes(f, v.data(), v.size() * 4);
      write_zeros(f, size_t(align64(v.size() * 4) - v.size() * 4));
    }
  });
}

void write_manifest(const std::string& dir, const json& manifest) {
  json m = manifest;
  m["format"] = kFormat;
  m["version"] = kCkptShardVersion;
  const std::string text = m.dump(1);
  write_file_atomic((fs::path(dir) / "manifest.json").string(),
                    [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
}

// ---------------------------------------------------------------- reading

struct ShardedCheckpoint::Impl {
  struct Shard {
    std::unique_ptr<InFile> file;
    std::vector<std::string> arrays;
    uint64_t elements = 0, payload = 0;
  };
  struct Entry {
    size_t begin, count, shard, at;  // at: element offset within the shard's arrays
    std::vector<uint32_t> crc;       // per array
  };
  std::vector<Shard> shards;
  std::map<std::string, std::vector<Entry>> index;
};

ShardedCheckpoint::~ShardedCheckpoint() = default;

// A function-try-block: the checks below name each malformed field; a JSON type error one of them
// missed still leaves as a named rejection of this checkpoint, not an escaped nlohmann exception.
ShardedCheckpoint::ShardedCheckpoint(const std::string& dir) try
    : dir_(dir), p_(std::make_unique<Impl>()) {
  const std::string mpath = (fs::path(dir) / "manifest.json").string();
  DSV3_CHECK(fs::exists(mpath), dir, " is an incomplete sharded checkpoint: it has no "
             "manifest.json (the save did not finish); resume from an earlier checkpoint");
  try {
    manifest_ = json::parse(read_file(mpath));
  } catch (const json::parse_error& e) {
    fail(mpath, ": not valid JSON (error at byte ", e.byte, ")");
  }
  DSV3_CHECK(manifest_.is_object() && manifest_.contains("format") &&
                 manifest_["format"] == kFormat,
             mpath, ": not a dsv3 sharded checkpoint manifest");
  uint64_t version = 0;
  DSV3_CHECK(manifest_.contains("version") && json_u64(manifest_["version"], &version) &&
                 version >= 1 && version <= kCkptShardVersion,
             mpath, ": manifest version ", manifest_.value("version", json()).dump(),
             " is not one this build reads (", kCkptShardVersion, ")");
  for (const char* k : {"model", "train", "shards", "layout"})
    DSV3_CHECK(manifest_.contains(k), mpath, ": manifest has no '", k, "'");
  fields_from_json(model_fields(), &config_, manifest_["model"], mpath + ": model config");
  try {
    validate(config_);
  } catch (const Error& e) {
    fail(mpath, ": invalid model config: ", e.what());
  }
  const json& files = manifest_["shards"];
  DSV3_CHECK(files.is_array() && !files.empty(), mpath, ": 'shards' must list the shard files");
  for (const auto& fj : files) {
    DSV3_CHECK(fj.is_string(), mpath, ": 'shards' entries must be file names");
    const std::string name = fj.get<std::string>();
    DSV3_CHECK(name.find('/') == std::string::npos && name != ".." && name != ".", mpath,
               ": shard name '", name, "' is not a plain file name");
    const std::string path = (fs::path(dir) / name).string();
    DSV3_CHECK(fs::exists(path), dir, ": shard ", name, " is missing (",
               files.size(), " shards listed): the checkpoint was copied or deleted partially; "
               "resume from another checkpoint");
    Impl::Shard sh;
    sh.file = std::make_unique<InFile>(path);
    const InFile& f = *sh.file;
    unsigned char head[kFrameBytes];
    DSV3_CHECK(f.size() >= kFrameBytes, path, ": too short for a shard header");
    f.read_at(0, head, kFrameBytes);
    DSV3_CHECK(std::memcmp(head, kMagic, 8) == 0, path, " is not a dsv3 checkpoint shard (bad magic)");
    const FrameHeader fr = check_frame(path, head, f.size(), kCkptShardVersion, kMaxHeader, "shard");
    const std::string text = f.read_string(kFrameBytes, size_t(fr.header_len));
    DSV3_CHECK(crc32_update(0, text.data(), text.size()) == fr.header_crc || !checksum_verification(),
               path, ": header checksum mismatch: the file is corrupt");
    json h;
    try {
      h = json::parse(text);
    } catch (const json::parse_error& e) {
      fail(path, ": header is not valid JSON (error at byte ", e.byte, ")");
    }
    DSV3_CHECK(h.is_object() && h.contains("arrays") && h.contains("segments") &&
                   h.contains("elements") && json_u64(h["elements"], &sh.elements),
               path, ": shard header lacks arrays, segments or elements");
    DSV3_CHECK(h["arrays"].is_array() && h["segments"].is_array(), path, ": malformed header");
    for (const auto& a : h["arrays"]) {
      DSV3_CHECK(a.is_string(), path, ": 'arrays' entries must be names");
      sh.arrays.push_back(a.get<std::string>());
    }
    // bounded by the file before any size is computed from it (elements * 4 must not wrap)
    DSV3_CHECK(sh.elements <= f.size() / 4, path, ": header says ", sh.elements,
               " elements per array, more than the file holds (corrupt header)");
    sh.payload = align64(kFrameBytes + fr.header_len);
    const uint64_t expect = sh.payload + uint64_t(sh.arrays.size()) * align64(sh.elements * 4);
    DSV3_CHECK(f.size() == expect, path, ": file is ", f.size(), " bytes, its header describes ",
               expect, " (truncated or corrupt)");
    const size_t si = p_->shards.size();
    size_t at = 0;
    for (const auto& s : h["segments"]) {
      uint64_t b = 0, c = 0;
      DSV3_CHECK(s.is_array() && s.size() == 4 && s[0].is_string() && json_u64(s[1], &b) &&
                     json_u64(s[2], &c) && s[3].is_array() && s[3].size() == sh.arrays.size(),
                 path, ": malformed segment");
      DSV3_CHECK(c <= sh.elements - at && b <= (uint64_t(1) << 48), path, ": segment ",
                 s[0].get<std::string>(), " of ", c, " elements at ", b,
                 " lies outside the shard or any tensor (corrupt header)");
      Impl::Entry e{size_t(b), size_t(c), si, at, {}};
      for (const auto& x : s[3]) {
        uint64_t crc = 0;
        DSV3_CHECK(json_u64(x, &crc) && crc <= 0xffffffffu, path, ": malformed segment checksum");
        e.crc.push_back(uint32_t(crc));
      }
      at += size_t(c);
      p_->index[s[0].get<std::string>()].push_back(std::move(e));
    }
    DSV3_CHECK(at == sh.elements, path, ": segments cover ", at, " elements, header says ",
               sh.elements);
    p_->shards.push_back(std::move(sh));
  }
} catch (const json::exception& e) {
  fail(dir, ": malformed sharded checkpoint: ", e.what());
}

bool ShardedCheckpoint::has_array(const std::string& name) const {
  for (const auto& s : p_->shards)
    if (std::find(s.arrays.begin(), s.arrays.end(), name) == s.arrays.end()) return false;
  return true;
}

void ShardedCheckpoint::read(const std::string& array, const std::string& name, size_t begin,
                             size_t count, float* out) const {
  size_t covered = 0;
  const auto it = p_->index.find(name);
  if (it != p_->index.end())
    for (const auto& e : it->second) {
      const size_t a = std::max(begin, e.begin), b = std::min(begin + count, e.begin + e.count);
      if (a >= b) continue;
      const Impl::Shard& sh = p_->shards[e.shard];
      const auto ai = std::find(sh.arrays.begin(), sh.arrays.end(), array);
      DSV3_CHECK(ai != sh.arrays.end(), sh.file->path(), " has no '", array, "' array (a "
                 "weights-only checkpoint cannot be resumed)");
      const size_t k = size_t(ai - sh.arrays.begin());
      std::vector<float> seg(e.count);
      sh.file->read_at(sh.payload + k * align64(sh.elements * 4) + uint64_t(e.at) * 4, seg.data(),
                       e.count * 4);
      DSV3_CHECK(crc32_update(0, seg.data(), e.count * 4) == e.crc[k] || !checksum_verification(),
                 sh.file->path(),
                 ": checksum mismatch in ", name, " (", array, "): the file is corrupt");
      std::memcpy(out + (a - begin), seg.data() + (a - e.begin), (b - a) * 4);
      covered += b - a;
    }
  DSV3_CHECK(covered == count, dir_, ": elements of ", name, " (", array, ") are in no shard (",
             covered, " of ", count, " found): the checkpoint is of another model or a shard "
             "is missing");
}

std::vector<float> ShardedCheckpoint::full_params() const {
  // every parameter is in some shard, so the shards bound the model: a corrupt config must not
  // make us build a table of billions of entries, or allocate for them
  double held = 0;
  for (const auto& s : p_->shards) held += double(s.elements);
  DSV3_CHECK(param_count_lower_bound(config_) <= held, dir_, ": the model config describes more "
             "parameters than the shards hold (", held, " elements): a corrupt manifest");
  const ParamTable t = build_param_table(config_);
  std::vector<float> out(t.total, 0.0f);
  for (const ParamInfo& p : t.list) read("params", p.name, 0, p.numel, out.data() + p.offset);
  return out;
}

bool is_sharded_checkpoint(const std::string& path) {
  std::error_code ec;
  return fs::is_directory(path, ec) && fs::exists(fs::path(path) / "manifest.json", ec);
}

int64_t any_checkpoint_step(const std::string& path) {
  const int64_t s = shards_step(path);
  return s >= 0 ? s : checkpoint_step(path);
}

namespace {
// (step, path, complete) of every checkpoint of either kind in dir, by step.
std::vector<std::tuple<int64_t, std::string, bool>> all_checkpoints(const std::string& dir) {
  std::vector<std::tuple<int64_t, std::string, bool>> out;
  for (const std::string& p : list_checkpoints(dir)) out.emplace_back(checkpoint_step(p), p, true);
  std::error_code ec;
  for (fs::directory_iterator it(dir, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string p = it->path().string();
    const int64_t step = shards_step(p);
    if (step >= 0 && it->is_directory(ec)) out.emplace_back(step, p, is_sharded_checkpoint(p));
  }
  std::sort(out.begin(), out.end());
  return out;
}
}  // namespace

std::string latest_checkpoint(const std::string& dir) {
  std::string best;
  for (const auto& [step, path, complete] : all_checkpoints(dir))
    if (complete) best = path;
  return best;
}

void prune_all_checkpoints(const std::string& dir, int keep) {
  if (keep <= 0) return;
  const auto all = all_checkpoints(dir);
  std::vector<std::string> complete;
  int64_t newest = -1;
  for (const auto& [step, path, ok] : all)
    if (ok) complete.push_back(path), newest = step;
  for (size_t i = 0; i + size_t(keep) < complete.size(); i++) {
    std::error_code ec;
    fs::remove_all(complete[i], ec);
    DSV3_CHECK(!ec, "cannot delete old checkpoint ", complete[i], ": ", ec.message());
  }
  for (const auto& [step, path, ok] : all)
    if (!ok && step < newest) {
      std::error_code ec;
      fs::remove_all(path, ec);  // an abandoned save: harmless if it stays
    }
  prune_checkpoints(dir, INT_MAX);  // stale temp files of killed saves
}

}  // namespace dsv3
