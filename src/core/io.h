// File I/O shared by every on-disk format: atomic writes, bounds-checked reads, little-endian
// integers, CRC-32 and a sniffer that says what an unexpected file looks like.
// Every failure is a dsv3::Error whose message names the file.
#pragma once
#include <bit>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <functional>
#include <string>

namespace dsv3 {

static_assert(std::endian::native == std::endian::little,
              "dsv3 file formats store raw little-endian floats");

// Writes `path` atomically: `write` fills a temp file path + ".tmp." + pid in the same directory,
// which is flushed, fsync'ed, renamed over `path`, and the directory fsync'ed. If anything fails
// (including `write` throwing) the temp file is removed, `path` is untouched, and an Error
// naming `path` is thrown. A process killed mid-write leaves at most a stale temp file.
void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write);

// Helpers for the `write` callback; they throw Error on a short write (disk full, ...).
void write_bytes(std::FILE* f, const void* data, size_t n);
void write_zeros(std::FILE* f, size_t n);
void write_u32le(std::FILE* f, uint32_t v);
void write_u64le(std::FILE* f, uint64_t v);

// The whole file; throws "cannot open X: reason".
std::string read_file(const std::string& path);

// A file opened for random-access reads. Reads past the end throw an Error naming the file.
class InFile {
 public:
  explicit InFile(const std::string& path);  // throws "cannot open X: reason"
  ~InFile();
  InFile(const InFile&) = delete;
  InFile& operator=(const InFile&) = delete;

  const std::string& path() const { return path_; }
  uint64_t size() const { return size_; }
  // Reads exactly n bytes at offset; throws "X: unexpected end of file ..." otherwise.
  void read_at(uint64_t offset, void* dst, size_t n) const;
  std::string read_string(uint64_t offset, size_t n) const;

 private:
  std::string path_;
  int fd_ = -1;
  uint64_t size_ = 0;
};

inline uint32_t load_u32le(const void* p) {
  auto* b = static_cast<const unsigned char*>(p);
  return uint32_t(b[0]) | uint32_t(b[1]) << 8 | uint32_t(b[2]) << 16 | uint32_t(b[3]) << 24;
}
inline uint64_t load_u64le(const void* p) {
  auto* b = static_cast<const unsigned char*>(p);
  return uint64_t(load_u32le(b)) | uint64_t(load_u32le(b + 4)) << 32;
}

// dsv3's own binary files (checkpoints, token shards) share a 24-byte frame: 8-byte magic, u32
// format version, u32 CRC-32 of the JSON header, u64 JSON header length. Given the first 24
// bytes (magic already checked), validates version and length against the file size and
// `max_header`; `what` names the format in messages ("checkpoint", "shard").
struct FrameHeader {
  uint32_t version = 0;
  uint32_t header_crc = 0;
  uint64_t header_len = 0;
};
constexpr uint64_t kFrameBytes = 24;
// Payloads after the header start on 64-byte boundaries (cache-line and SIMD aligned when mapped).
constexpr uint64_t align64(uint64_t x) { return (x + 63) / 64 * 64; }
FrameHeader check_frame(const std::string& path, const unsigned char* head, uint64_t file_size,
                        uint32_t max_version, uint64_t max_header, const char* what);

// CRC-32 (zlib's polynomial); chain calls by passing the previous value as `crc`.
uint32_t crc32_update(uint32_t crc, const void* data, size_t n);

// Whether readers of checksummed formats (checkpoints, shards, dsv3 tokenizers) reject a
// checksum mismatch: always, except in the fuzz/ harnesses, which turn it off so that mutated
// files reach the parsing behind the checksums. Nothing in the product calls the setter.
bool checksum_verification();
void set_checksum_verification_for_fuzzing(bool on);

// What the first bytes of a file look like, for error messages: "a dsv3 checkpoint",
// "a dsv3 int8 model",
// "a safetensors file", "an llm.c token file", "a zip archive (PyTorch .pt?)", "a gzip file",
// "text", "an empty file", or "" when unknown.
std::string sniff_file_kind(const void* head, size_t n);
// Same, reading the head of `path` itself ("" if it cannot be read).
std::string sniff_file_kind(const std::string& path);

}  // namespace dsv3
