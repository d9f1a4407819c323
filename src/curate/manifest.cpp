#include "curate/manifest.h"

#include <sys/stat.h>

#include <algorithm>
#include <cstring>
#include <numeric>

#include "core/check.h"
#include "core/io.h"

namespace dsv3::curate {

namespace {
constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'C', 'U', 'R', 'K'};
constexpr char kEnd[8] = {'D', 'S', 'V', '3', 'K', 'E', 'N', 'D'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHead = 20, kTail = 24;
}  // namespace

std::vector<InputFile> stat_inputs(const std::vector<std::string>& paths) {
  std::vector<InputFile> out;
  for (const auto& p : paths) {
    InputFile f;
    f.path = p;
    struct stat st{};
    if (::stat(p.c_str(), &st) == 0) {
      f.size = uint64_t(st.st_size);
      f.mtime_ns = int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec;
    }  // an unreadable file stays size 0; reading it reports the problem with its name
    out.push_back(f);
  }
  return out;
}

std::vector<Part> plan_parts(const std::vector<InputFile>& inputs, uint64_t part_bytes) {
  std::vector<Part> parts;
  for (const auto& f : inputs) {
    if (parts.empty() || (parts.back().bytes + f.size > part_bytes && !parts.back().files.empty())) {
      parts.emplace_back();
      parts.back().index = parts.size() - 1;
    }
    parts.back().files.push_back(f);
    parts.back().bytes += f.size;
  }
  return parts;
}

std::vector<int> assign_parts(const std::vector<Part>& parts, int ranks) {
  std::vector<int> owner(parts.size(), 0);
  if (ranks <= 1) return owner;
  std::vector<size_t> order(parts.size());
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(),
                   [&](size_t a, size_t b) { return parts[a].bytes > parts[b].bytes; });
  std::vector<uint64_t> load(size_t(ranks), 0);
  for (size_t p : order) {
    const size_t r = size_t(std::min_element(load.begin(), load.end()) - load.begin());
    owner[p] = int(r);
    load[r] += parts[p].bytes + 1;  // +1: empty files still spread out
  }
  return owner;
}

std::string part_name(size_t index) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "part-%05zu", index);
  return buf;
}

nlohmann::json part_files_json(const Part& p) {
  nlohmann::json a = nlohmann::json::array();
  for (const auto& f : p.files) a.push_back({{"path", f.path}, {"size", f.size}, {"mtime_ns", f.mtime_ns}});
  return a;
}

// --- keys files ----------------------------------------------------------------------------
KeysWriter::KeysWriter(std::FILE* f, int num_perm, uint32_t flags)
    : f_(f), num_perm_(num_perm), flags_(flags) {
  write_bytes(f_, kMagic, 8);
  write_u32le(f_, kVersion);
  write_u32le(f_, uint32_t(num_perm));
  write_u32le(f_, flags);
}

void KeysWriter::put(const void* p, size_t n) {
  write_bytes(f_, p, n);
  crc_ = crc32_update(crc_, p, n);
}

void KeysWriter::add(uint64_t index, uint64_t text_bytes, const Hash128& h, const uint16_t* sig,
                     const std::string& id) {
  put(&index, 8);
  put(&text_bytes, 8);
  records_bytes_ += 16;
  if (flags_ & kKeyExact) {
    put(&h.lo, 8);
    put(&h.hi, 8);
    records_bytes_ += 16;
  }
  if (flags_ & kKeyMinhash) {
    put(sig, size_t(num_perm_) * 2);
    records_bytes_ += size_t(num_perm_) * 2;
  }
  const uint32_t n = uint32_t(id.size());
  put(&n, 4);
  put(id.data(), id.size());
  records_bytes_ += 4 + id.size();
  kept_++;
}

void KeysWriter::finish(const std::vector<std::pair<uint32_t, uint32_t>>& df,
                        nlohmann::json trailer) {
  const uint32_t n = uint32_t(df.size());
  put(&n, 4);
  for (const auto& [b, c] : df) {
    put(&b, 4);
    put(&c, 4);
  }
  trailer["kept"] = kept_;
  trailer["records_bytes"] = records_bytes_;
  const std::string t = trailer.dump();
  write_bytes(f_, t.data(), t.size());
  write_u64le(f_, t.size());
  write_u32le(f_, crc32_update(0, t.data(), t.size()));
  write_u32le(f_, crc_);
  write_bytes(f_, kEnd, 8);
}

namespace {

struct Framed {
  nlohmann::json trailer;
  uint64_t body_begin = kHead, body_end = 0;
  uint32_t body_crc = 0, num_perm = 0, flags = 0;
};

Framed read_frame(const InFile& in) {
  const std::string& path = in.path();
  DSV3_CHECK(in.size() >= kHead + 4 + kTail, path, ": too short to be a curate keys file");
  char magic[8];
  in.read_at(0, magic, 8);
  DSV3_CHECK(std::memcmp(magic, kMagic, 8) == 0, path, ": not a curate keys file");
  unsigned char head[12];
  in.read_at(8, head, 12);
  DSV3_CHECK(load_u32le(head) == kVersion, path, ": keys format version ", load_u32le(head));
  Framed fr;
  fr.num_perm = load_u32le(head + 4);
  fr.flags = load_u32le(head + 8);
  unsigned char tail[kTail];
  in.read_at(in.size() - kTail, tail, kTail);
  DSV3_CHECK(std::memcmp(tail + 16, kEnd, 8) == 0, path, ": incomplete keys file");
  const uint64_t tlen = load_u64le(tail);
  DSV3_CHECK(tlen + kHead + kTail <= in.size(), path, ": bad trailer length");
  const std::string t = in.read_string(in.size() - kTail - tlen, size_t(tlen));
  DSV3_CHECK(crc32_update(0, t.data(), t.size()) == load_u32le(tail + 8), path,
             ": trailer checksum mismatch");
  fr.trailer = nlohmann::json::parse(t);
  fr.body_end = in.size() - kTail - tlen;
  fr.body_crc = load_u32le(tail + 12);
  return fr;
}

}  // namespace

nlohmann::json read_keys_trailer(const std::string& path) {
  InFile in(path);
  return read_frame(in).trailer;
}

PartKeys read_keys(const std::string& path) {
  InFile in(path);
  Framed fr = read_frame(in);
  PartKeys k;
  k.trailer = fr.trailer;
  k.num_perm = int(fr.num_perm);
  k.flags = fr.flags;
  k.body = in.read_string(fr.body_begin, size_t(fr.body_end - fr.body_begin));
  DSV3_CHECK(crc32_update(0, k.body.data(), k.body.size()) == fr.body_crc, path,
             ": body checksum mismatch (corrupt file)");
  parse_keys_body(k, path);
  return k;
}

void parse_keys_body(PartKeys& k, const std::string& where) {
  const std::string& b = k.body;
  size_t pos = 0;
  auto need = [&](size_t n) {
    DSV3_CHECK(pos + n <= b.size(), where, ": keys body truncated at byte ", pos);
  };
  const uint64_t kept = k.trailer.at("kept");
  k.records.clear();
  k.records.reserve(size_t(kept));
  for (uint64_t i = 0; i < kept; i++) {
    KeyRecord r;
    need(16);
    r.index = load_u64le(b.data() + pos);
    r.text_bytes = load_u64le(b.data() + pos + 8);
    pos += 16;
    if (k.flags & kKeyExact) {
      need(16);
      r.exact.lo = load_u64le(b.data() + pos);
      r.exact.hi = load_u64le(b.data() + pos + 8);
      pos += 16;
    }
    if (k.flags & kKeyMinhash) {
      need(size_t(k.num_perm) * 2);
      r.sig = b.data() + pos;
      pos += size_t(k.num_perm) * 2;
    }
    need(4);
    const uint32_t n = load_u32le(b.data() + pos);
    pos += 4;
    need(n);
    r.id.assign(b.data() + pos, n);
    pos += n;
    k.records.push_back(std::move(r));
  }
  need(4);
  const uint32_t entries = load_u32le(b.data() + pos);
  pos += 4;
  need(size_t(entries) * 8);
  k.df.resize(entries);
  for (uint32_t i = 0; i < entries; i++) {
    k.df[i] = {load_u32le(b.data() + pos), load_u32le(b.data() + pos + 4)};
    pos += 8;
  }
  DSV3_CHECK(pos == b.size(), where, ": ", b.size() - pos, " unexpected bytes after the keys");
}

}  // namespace dsv3::curate
