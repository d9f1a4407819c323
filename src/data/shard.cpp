#include "data/shard.h"

#include <algorithm>
#include <cerrno>
#include <cstring>

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/io.h"
#include "data/token_file.h"

namespace dsv3 {

namespace {

using json = nlohmann::json;

constexpr char kMagic[8] = {'D', 'S', 'V', '3', 'S', 'H', 'R', 'D'};
constexpr uint64_t kFixedHeader = 24;  // magic, version, header crc, header length
constexpr uint64_t kMaxHeader = 1u << 20;
constexpr int64_t kMaxVocab4 = int64_t(1) << 31;  // ids are handed out as int32

uint64_t align8(uint64_t x) { return (x + 7) / 8 * 8; }

std::string looks_like(const std::string& path) {
  const std::string k = sniff_file_kind(path);
  return k.empty() ? std::string() : " (it looks like " + k + ")";
}

// Checks what the header says about the vocabulary and width; `where` starts each message.
void check_vocab(const std::string& where, int token_bytes, int64_t vocab, int32_t eos) {
  DSV3_CHECK(token_bytes == 2 || token_bytes == 4, where, ": token_bytes is ", token_bytes,
             " (must be 2 or 4)");
  DSV3_CHECK(vocab >= 1, where, ": vocab_size is ", vocab, " (must be at least 1)");
  DSV3_CHECK(token_bytes == 4 || vocab <= 65536, where, ": vocab_size ", vocab,
             " does not fit 2-byte ids (at most 65536): use 4-byte ids");
  DSV3_CHECK(vocab <= kMaxVocab4, where, ": vocab_size ", vocab, " exceeds 2^31");
  DSV3_CHECK(eos >= -1 && eos < vocab, where, ": eos id ", eos, " is outside the vocabulary [0, ",
             vocab, ") (-1 = unknown)");
}

// Maps a whole file read-only. Throws an Error naming the file.
const unsigned char* map_file(const std::string& path, size_t size) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  DSV3_CHECK(fd >= 0, "cannot open ", path, ": ", std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || uint64_t(st.st_size) != size) {
    ::close(fd);
    fail(path, ": the file changed while it was being opened");
  }
  void* p = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int err = errno;
  ::close(fd);
  DSV3_CHECK(p != MAP_FAILED, "cannot map ", path, " into memory: ", std::strerror(err));
  return static_cast<const unsigned char*>(p);
}

// One header field as an unsigned integer, with a message naming it.
uint64_t get_u64(const json& h, const char* key, const std::string& path) {
  DSV3_CHECK(h.contains(key), path, ": shard header has no '", key, "'");
  const json& v = h[key];
  DSV3_CHECK(v.is_number_unsigned() || (v.is_number_integer() && v.get<int64_t>() >= 0), path,
             ": shard header field '", key, "' must be a non-negative integer, not ", v.dump());
  return v.get<uint64_t>();
}
int64_t get_i64(const json& h, const char* key, const std::string& path) {
  DSV3_CHECK(h.contains(key), path, ": shard header has no '", key, "'");
  const json& v = h[key];
  DSV3_CHECK(v.is_number_integer() && (!v.is_number_unsigned() || v.get<uint64_t>() <= INT64_MAX),
             path, ": shard header field '", key, "' must be an integer, not ", v.dump());
  return v.get<int64_t>();
}
std::string get_str(const json& h, const char* key, const std::string& path) {
  DSV3_CHECK(h.contains(key), path, ": shard header has no '", key, "'");
  DSV3_CHECK(h[key].is_string(), path, ": shard header field '", key, "' must be a string, not ",
             h[key].dump());
  return h[key].get<std::string>();
}

int32_t load_id(const unsigned char* ids, int width, uint64_t i) {
  if (width == 2) {
    const unsigned char* b = ids + 2 * i;
    return int32_t(uint32_t(b[0]) | uint32_t(b[1]) << 8);
  }
  return int32_t(load_u32le(ids + 4 * i));
}

}  // namespace

// ---------------------------------------------------------------- writer

ShardWriter::ShardWriter(std::string path, ShardInfo info) : path_(std::move(path)), info_(info) {
  if (info_.token_bytes == 0) info_.token_bytes = info_.vocab_size <= 65536 ? 2 : 4;
  check_vocab("cannot write shard " + path_, info_.token_bytes, info_.vocab_size, info_.eos);
  info_.n_docs = info_.n_tokens = info_.n_text_bytes = 0;
  info_.crc32 = 0;
}

uint64_t ShardWriter::payload_bytes() const { return 8 * offsets_.size() + ids_.size(); }

void ShardWriter::add_document(std::span<const int32_t> ids, uint64_t text_bytes) {
  DSV3_CHECK(!done_, "shard ", path_, " is already finished: add_document after finish()");
  const uint64_t doc = n_docs();
  DSV3_CHECK(!ids.empty(), "cannot add document ", doc, " to shard ", path_,
             ": it has no tokens (skip empty texts before tokenizing)");
  const size_t w = size_t(info_.token_bytes), at = ids_.size();
  ids_.resize(at + w * ids.size());
  unsigned char* out = ids_.data() + at;
  for (size_t i = 0; i < ids.size(); i++, out += w) {
    const int32_t id = ids[i];
    if (id < 0 || id >= info_.vocab_size) {
      ids_.resize(at);  // the shard stays as it was
      fail("cannot add document ", doc, " to shard ", path_, ": token ", i, " is ", id,
           ", outside the vocabulary [0, ", info_.vocab_size, ") of ", info_.token_bytes,
           "-byte ids");
    }
    const uint32_t u = uint32_t(id);
    out[0] = uint8_t(u), out[1] = uint8_t(u >> 8);
    if (w == 4) out[2] = uint8_t(u >> 16), out[3] = uint8_t(u >> 24);
  }
  offsets_.push_back(offsets_.back() + ids.size());
  info_.n_text_bytes += text_bytes;
}

ShardInfo ShardWriter::finish() {
  DSV3_CHECK(!done_, "shard ", path_, " is already finished");
  info_.n_docs = n_docs();
  info_.n_tokens = n_tokens();
  std::vector<unsigned char> table(8 * offsets_.size());
  for (size_t i = 0; i < offsets_.size(); i++)
    for (int k = 0; k < 8; k++) table[8 * i + k] = uint8_t(offsets_[i] >> (8 * k));
  info_.crc32 = crc32_update(crc32_update(0, table.data(), table.size()), ids_.data(), ids_.size());

  const json h = {{"domain", info_.domain},         {"split", info_.split},
                  {"token_bytes", info_.token_bytes}, {"vocab_size", info_.vocab_size},
                  {"n_docs", info_.n_docs},           {"n_tokens", info_.n_tokens},
                  {"n_text_bytes", info_.n_text_bytes}, {"eos", info_.eos},
                  {"tokenizer", info_.tokenizer},     {"crc32", info_.crc32}};
  const std::string text = h.dump();
  const uint32_t header_crc = crc32_update(0, text.data(), text.size());
  write_file_atomic(path_, [&](std::FILE* f) {
    write_bytes(f, kMagic, 8);
    write_u32le(f, kShardVersion);
    write_u32le(f, header_crc);
    write_u64le(f, text.size());
    write_bytes(f, text.data(), text.size());
    write_zeros(f, size_t(align8(kFixedHeader + text.size()) - kFixedHeader - text.size()));
    write_bytes(f, table.data(), table.size());
    write_bytes(f, ids_.data(), ids_.size());
  });
  done_ = true;  // only once written: a failed write (disk full) may be retried
  std::vector<unsigned char>().swap(ids_);
  return info_;
}

// ---------------------------------------------------------------- reader

Shard::Shard(Shard&& o) noexcept { *this = std::move(o); }

Shard& Shard::operator=(Shard&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    info_ = std::move(o.info_);
    llmc_ = o.llmc_;
    map_ = o.map_, map_size_ = o.map_size_, ids_ = o.ids_;
    offsets_ = std::move(o.offsets_);
    o.map_ = nullptr, o.map_size_ = 0, o.ids_ = nullptr;
  }
  return *this;
}

Shard::~Shard() { release(); }

void Shard::release() {
  if (map_) ::munmap(const_cast<unsigned char*>(map_), map_size_);
  map_ = nullptr, map_size_ = 0, ids_ = nullptr;
}

Shard Shard::open(const std::string& path, const ShardOpenOptions& opt) {
  Shard s;
  s.path_ = path;
  uint64_t size = 0;
  unsigned char head[kFixedHeader] = {};
  {
    InFile f(path);
    size = f.size();
    DSV3_CHECK(size > 0, path, " is not a dsv3 token shard: the file is empty");
    f.read_at(0, head, size_t(std::min<uint64_t>(size, kFixedHeader)));
  }

  // llm.c / modded-nanogpt token file: uint16 ids after a 1 KiB header.
  if (size >= 4 && load_u32le(head) == uint32_t(kTokenFileMagic)) {
    const uint64_t count = uint64_t(read_token_file_header(path));  // validates size too
    DSV3_CHECK(count > 0, path, ": the llm.c token file holds no tokens");
    s.llmc_ = true;
    s.map_ = map_file(path, size_t(size)), s.map_size_ = size_t(size);
    s.ids_ = s.map_ + kTokenFileHeaderBytes;
    s.info_.split = "train";
    s.info_.token_bytes = 2;
    s.info_.eos = opt.llmc_eos;
    s.info_.tokenizer = "llm.c token file";
    s.info_.n_tokens = count;
    int32_t max_id = 0;
    if (opt.llmc_eos < 0) {
      for (uint64_t i = 0; i < count; i++) max_id = std::max(max_id, load_id(s.ids_, 2, i));
      s.offsets_ = {0, count};
    } else {
      // Documents are the runs between EOS ids; offsets_ holds (begin, end) pairs here.
      uint64_t begin = 0;
      for (uint64_t i = 0; i <= count; i++) {
        const int32_t id = i < count ? load_id(s.ids_, 2, i) : opt.llmc_eos;
        max_id = std::max(max_id, id);
        if (id != opt.llmc_eos) continue;
        if (i > begin) s.offsets_.push_back(begin), s.offsets_.push_back(i);
        begin = i + 1;
      }
      DSV3_CHECK(!s.offsets_.empty(), path, ": the llm.c token file holds only EOS ids (",
                 opt.llmc_eos, "): no documents");
    }
    s.info_.n_docs = opt.llmc_eos < 0 ? 1 : s.offsets_.size() / 2;
    s.info_.vocab_size = int64_t(max_id) + 1;
    return s;
  }

  DSV3_CHECK(size >= 8 && std::memcmp(head, kMagic, 8) == 0, path,
             " is not a dsv3 token shard (bad magic)", looks_like(path));
  DSV3_CHECK(size >= kFixedHeader, path, ": truncated: ", size,
             " bytes is too short for the shard header (", kFixedHeader, " bytes)");
  const FrameHeader frame = check_frame(path, head, size, kShardVersion, kMaxHeader, "shard");
  const uint32_t header_crc = frame.header_crc;
  const uint64_t hlen = frame.header_len;

  s.map_ = map_file(path, size_t(size)), s.map_size_ = size_t(size);
  const unsigned char* m = s.map_;
  const std::string text(reinterpret_cast<const char*>(m + kFixedHeader), size_t(hlen));
  const uint32_t got_crc = crc32_update(0, text.data(), text.size());
  DSV3_CHECK(got_crc == header_crc || !checksum_verification(), path, ": header checksum mismatch (stored ", header_crc,
             ", computed ", got_crc, "): the file is corrupt");
  json h;
  try {
    h = json::parse(text);
  } catch (const json::exception& e) {
    fail(path, ": shard header is not valid JSON (", e.what(), ")");
  }
  DSV3_CHECK(h.is_object(), path, ": shard header is not a JSON object");

  ShardInfo& in = s.info_;
  in.domain = get_str(h, "domain", path);
  in.split = get_str(h, "split", path);
  in.tokenizer = get_str(h, "tokenizer", path);
  const int64_t tb = get_i64(h, "token_bytes", path), eos = get_i64(h, "eos", path);
  in.vocab_size = get_i64(h, "vocab_size", path);
  DSV3_CHECK(tb == 2 || tb == 4, path, ": token_bytes is ", tb, " (must be 2 or 4)");
  DSV3_CHECK(eos >= -1 && eos <= INT32_MAX, path, ": eos id ", eos, " is out of range");
  in.token_bytes = int(tb), in.eos = int32_t(eos);
  check_vocab(path, in.token_bytes, in.vocab_size, in.eos);
  in.n_docs = get_u64(h, "n_docs", path);
  in.n_tokens = get_u64(h, "n_tokens", path);
  in.n_text_bytes = get_u64(h, "n_text_bytes", path);
  const uint64_t crc = get_u64(h, "crc32", path);
  DSV3_CHECK(crc <= 0xffffffffu, path, ": crc32 ", crc, " does not fit 32 bits");
  in.crc32 = uint32_t(crc);

  // The sizes must describe this file exactly (checked without overflow first).
  const uint64_t start = align8(kFixedHeader + hlen);
  DSV3_CHECK(in.n_docs < size / 8 && in.n_tokens <= size / uint64_t(tb), path,
             ": truncated: the header describes ", in.n_docs, " documents and ", in.n_tokens,
             " tokens but the file has only ", size, " bytes");
  const uint64_t expected = start + 8 * (in.n_docs + 1) + uint64_t(tb) * in.n_tokens;
  DSV3_CHECK(size >= expected, path, ": truncated: the file is ", size,
             " bytes, its header describes ", expected, " (", in.n_docs, " documents, ",
             in.n_tokens, " tokens of ", tb, " bytes)");
  DSV3_CHECK(size == expected, path, ": the file is ", size, " bytes but its header describes ",
             expected, " (", size - expected, " unexpected trailing bytes)");
  for (uint64_t i = kFixedHeader + hlen; i < start; i++)
    DSV3_CHECK(m[i] == 0, path, ": non-zero padding after the header (corrupt file)");

  // Offset table: 0, strictly increasing, n_tokens.
  s.offsets_.resize(size_t(in.n_docs + 1));
  for (uint64_t i = 0; i <= in.n_docs; i++) s.offsets_[i] = load_u64le(m + start + 8 * i);
  DSV3_CHECK(s.offsets_[0] == 0, path, ": document offset table starts at ", s.offsets_[0],
             ", not 0 (corrupt file)");
  for (uint64_t i = 0; i < in.n_docs; i++) {
    const uint64_t a = s.offsets_[i], b = s.offsets_[i + 1];
    DSV3_CHECK(b <= in.n_tokens, path, ": document ", i, " ends at token ", b,
               ", past the shard's ", in.n_tokens, " tokens (corrupt offset table)");
    DSV3_CHECK(b > a, path, ": document ", i, " has offsets [", a, ", ", b,
               ") which are not increasing (corrupt offset table)");
  }
  DSV3_CHECK(s.offsets_[in.n_docs] == in.n_tokens, path, ": the offset table ends at token ",
             s.offsets_[in.n_docs], " but the shard holds ", in.n_tokens,
             " tokens (corrupt offset table)");
  s.ids_ = m + start + 8 * (in.n_docs + 1);

  if (opt.verify) {
    const uint32_t got = crc32_update(0, m + start, size_t(size - start));
    DSV3_CHECK(got == in.crc32 || !checksum_verification(), path, ": payload checksum mismatch (stored ", in.crc32,
               ", computed ", got, "): the file is corrupt");
    int64_t max_id = -1;
    uint64_t at = 0;
    for (uint64_t i = 0; i < in.n_tokens; i++) {
      const int64_t id = int64_t(uint32_t(load_id(s.ids_, in.token_bytes, i)));
      if (id > max_id) max_id = id, at = i;
    }
    DSV3_CHECK(max_id < in.vocab_size, path, ": token ", at, " is ", max_id,
               ", outside the vocabulary [0, ", in.vocab_size, ")");
  }
  return s;
}

uint64_t Shard::doc_begin(uint64_t i) const {
  DSV3_CHECK(i < info_.n_docs, path_, ": document ", i, " out of range (", info_.n_docs,
             " documents)");
  return llmc_ && info_.eos >= 0 ? offsets_[2 * i] : offsets_[i];
}

uint64_t Shard::doc_size(uint64_t i) const {
  DSV3_CHECK(i < info_.n_docs, path_, ": document ", i, " out of range (", info_.n_docs,
             " documents)");
  return llmc_ && info_.eos >= 0 ? offsets_[2 * i + 1] - offsets_[2 * i]
                                 : offsets_[i + 1] - offsets_[i];
}

std::vector<int32_t> Shard::doc(uint64_t i) const {
  std::vector<int32_t> out(size_t(doc_size(i)));
  read_tokens(doc_begin(i), out.size(), out.data());
  return out;
}

void Shard::read_tokens(uint64_t begin, uint64_t n, int32_t* out) const {
  DSV3_CHECK(begin <= info_.n_tokens && n <= info_.n_tokens - begin, path_, ": tokens [", begin,
             ", ", begin + n, ") out of range (", info_.n_tokens, " tokens)");
  if (info_.token_bytes == 4) {
    std::memcpy(out, ids_ + 4 * begin, size_t(4 * n));  // little-endian, < 2^31
    return;
  }
  const unsigned char* p = ids_ + 2 * begin;
  for (uint64_t i = 0; i < n; i++) out[i] = int32_t(uint32_t(p[2 * i]) | uint32_t(p[2 * i + 1]) << 8);
}

}  // namespace dsv3
