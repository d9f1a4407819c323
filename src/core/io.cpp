#include "core/io.h"

#include <cerrno>
#include <climits>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <unordered_map>
#include <vector>

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zlib.h>

#include "core/check.h"

namespace dsv3 {

namespace {

std::string errno_text(int e) { return std::strerror(e); }

// fsync of the directory makes the rename itself durable. Some file systems cannot fsync a
// directory (EINVAL); the rename is still atomic there, so that is not an error.
void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) fail("cannot open directory ", dir, " to sync it: ", errno_text(errno));
  int rc = ::fsync(fd), e = errno;
  ::close(fd);
  if (rc != 0 && e != EINVAL && e != EROFS)
    fail("cannot sync directory ", dir, ": ", errno_text(e));
}

// The path each open write_file_atomic stream stands for, so that a failed write names the file
// even when the callbacks of nested atomic writes interleave their streams.
std::mutex g_stream_paths_mu;
std::unordered_map<const std::FILE*, std::string> g_stream_paths;

struct StreamPath {
  const std::FILE* f;
  StreamPath(const std::FILE* file, const std::string& path) : f(file) {
    std::lock_guard<std::mutex> lock(g_stream_paths_mu);
    g_stream_paths[f] = path;
  }
  ~StreamPath() {
    std::lock_guard<std::mutex> lock(g_stream_paths_mu);
    g_stream_paths.erase(f);
  }
};

std::string stream_path(const std::FILE* f) {
  std::lock_guard<std::mutex> lock(g_stream_paths_mu);
  auto it = g_stream_paths.find(f);
  return it == g_stream_paths.end() ? std::string() : it->second;
}

}  // namespace

void write_bytes(std::FILE* f, const void* data, size_t n) {
  if (n == 0) return;
  errno = 0;
  if (std::fwrite(data, 1, n, f) != n) {
    const int e = errno;
    const std::string path = stream_path(f);
    fail(path.empty() ? std::string("write failed") : "cannot write " + path, ": ",
         e ? errno_text(e) : std::string("short write"));
  }
}

void write_zeros(std::FILE* f, size_t n) {
  static const char zeros[4096] = {};
  while (n > 0) {
    size_t k = std::min(n, sizeof zeros);
    write_bytes(f, zeros, k);
    n -= k;
  }
}

void write_u32le(std::FILE* f, uint32_t v) {
  unsigned char b[4] = {uint8_t(v), uint8_t(v >> 8), uint8_t(v >> 16), uint8_t(v >> 24)};
  write_bytes(f, b, 4);
}

void write_u64le(std::FILE* f, uint64_t v) {
  write_u32le(f, uint32_t(v));
  write_u32le(f, uint32_t(v >> 32));
}

void write_file_atomic(const std::string& path, const std::function<void(std::FILE*)>& write) {
  namespace fs = std::filesystem;
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) fail("cannot write ", path, ": cannot create ", tmp, ": ", errno_text(errno));
  auto abandon = [&] {
    if (f) std::fclose(f);
    f = nullptr;
    std::remove(tmp.c_str());
  };
  try {
    {
      // Errors of the callback pass through as they are: a failed write_bytes names its file
      // itself, and anything else (a bad input record read while writing) is not a write error.
      const StreamPath named(f, path);
      write(f);
    }
    errno = 0;
    if (std::ferror(f)) fail("cannot write ", path, ": write failed");
    if (std::fflush(f) != 0) fail("cannot write ", path, ": ", errno_text(errno));
    if (::fsync(::fileno(f)) != 0) fail("cannot write ", path, ": fsync failed: ", errno_text(errno));
    int rc = std::fclose(f);
    f = nullptr;
    if (rc != 0) fail("cannot write ", path, ": ", errno_text(errno));
    if (std::rename(tmp.c_str(), path.c_str()) != 0)
      fail("cannot write ", path, ": cannot rename ", tmp, " to it: ", errno_text(errno));
  } catch (...) {
    abandon();
    throw;
  }
  fs::path dir = fs::path(path).parent_path();
  fsync_dir(dir.empty() ? std::string(".") : dir.string());
}

InFile::InFile(const std::string& path) : path_(path) {
  fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd_ < 0) fail("cannot open ", path, ": ", errno_text(errno));
  struct stat st;
  if (::fstat(fd_, &st) != 0) {
    int e = errno;
    ::close(fd_);
    fail("cannot stat ", path, ": ", errno_text(e));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd_);
    fail("cannot open ", path, ": it is a directory, expected a file");
  }
  size_ = uint64_t(st.st_size);
}

InFile::~InFile() {
  if (fd_ >= 0) ::close(fd_);
}

void InFile::read_at(uint64_t offset, void* dst, size_t n) const {
  DSV3_CHECK(offset <= size_ && n <= size_ - offset, path_, ": unexpected end of file (reading ",
             n, " bytes at offset ", offset, ", file is ", size_, " bytes)");
  auto* p = static_cast<char*>(dst);
  while (n > 0) {
    size_t chunk = std::min(n, size_t(1) << 30);
    ssize_t got = ::pread(fd_, p, chunk, off_t(offset));
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) fail(path_, ": read failed at offset ", offset, ": ", errno_text(errno));
    if (got == 0) fail(path_, ": unexpected end of file at offset ", offset, " (file shrank?)");
    p += got, offset += uint64_t(got), n -= size_t(got);
  }
}

std::string InFile::read_string(uint64_t offset, size_t n) const {
  DSV3_CHECK(offset <= size_ && n <= size_ - offset, path_, ": unexpected end of file (reading ",
             n, " bytes at offset ", offset, ", file is ", size_, " bytes)");
  std::string s(n, '\0');
  read_at(offset, s.data(), n);
  return s;
}

std::string read_file(const std::string& path) {
  InFile f(path);
  DSV3_CHECK(f.size() < (uint64_t(1) << 40), path, ": file too large to read into memory");
  return f.read_string(0, size_t(f.size()));
}

FrameHeader check_frame(const std::string& path, const unsigned char* head, uint64_t size,
                        uint32_t max_version, uint64_t max_header, const char* what) {
  FrameHeader f;
  f.version = load_u32le(head + 8);
  DSV3_CHECK(f.version <= max_version, path, ": ", what, " format version ", f.version,
             " is newer than this build reads (", max_version, "): update dsv3");
  DSV3_CHECK(f.version >= 1, path, ": unsupported ", what, " format version ", f.version);
  f.header_crc = load_u32le(head + 12);
  f.header_len = load_u64le(head + 16);
  DSV3_CHECK(f.header_len <= max_header, path, ": header length ", f.header_len,
             " is not sane (corrupt file)");
  DSV3_CHECK(f.header_len <= size - kFrameBytes, path, ": truncated: file is ", size,
             " bytes, expected at least ", kFrameBytes + f.header_len, " (the ", kFrameBytes,
             "-byte frame and a header length of ", f.header_len, ")");
  return f;
}

namespace {
bool g_verify_checksums = true;
}
bool checksum_verification() { return g_verify_checksums; }
void set_checksum_verification_for_fuzzing(bool on) { g_verify_checksums = on; }

uint32_t crc32_update(uint32_t crc, const void* data, size_t n) {
  auto* p = static_cast<const Bytef*>(data);
  uLong c = crc;
  while (n > 0) {
    uInt k = uInt(std::min<size_t>(n, size_t(1) << 30));
    c = ::crc32(c, p, k);
    p += k, n -= k;
  }
  return uint32_t(c);
}

std::string sniff_file_kind(const void* head, size_t n) {
  auto* b = static_cast<const unsigned char*>(head);
  if (n == 0) return "an empty file";
  if (n >= 8 && std::memcmp(b, "DSV3CKPT", 8) == 0) return "a dsv3 checkpoint";
  if (n >= 8 && std::memcmp(b, "DSV3SHRD", 8) == 0) return "a dsv3 token shard";
  if (n >= 8 && std::memcmp(b, "DSV3INT8", 8) == 0) return "a dsv3 int8 model";
  if (n >= 4 && load_u32le(b) == 20240520u) return "an llm.c token file";
  if (n >= 9 && b[8] == '{') {
    uint64_t len = load_u64le(b);
    if (len >= 2 && len <= 100u * 1024 * 1024) return "a safetensors file";
  }
  if (n >= 4 && std::memcmp(b, "PK\x03\x04", 4) == 0) return "a zip archive (a PyTorch .pt file?)";
  if (n >= 2 && b[0] == 0x1f && b[1] == 0x8b) return "a gzip file";
  bool text = true;
  for (size_t i = 0; i < std::min<size_t>(n, 512); i++) {
    unsigned char c = b[i];
    if (c < 0x20 && c != '\n' && c != '\r' && c != '\t') text = false;
    if (c == 0x7f) text = false;
  }
  if (text) return "text";
  return "";
}

std::string sniff_file_kind(const std::string& path) {
  try {
    InFile f(path);
    std::string head = f.read_string(0, size_t(std::min<uint64_t>(f.size(), 512)));
    return sniff_file_kind(head.data(), head.size());
  } catch (const Error&) {
    return "";
  }
}

}  // namespace dsv3
