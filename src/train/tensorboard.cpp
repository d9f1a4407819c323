#include "train/tensorboard.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>

#include "core/check.h"
#include "core/io.h"

namespace dsv3 {

// ---- CRC-32C (Castagnoli). No Debian package ships a C/C++ CRC-32C (Google's crc32c is not
// packaged), and zlib's crc32 is the other polynomial; a table is 20 lines.
namespace {
std::array<uint32_t, 256> crc32c_table() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; i++) {
    uint32_t c = i;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82f63b78u : c >> 1;
    t[i] = c;
  }
  return t;
}
}  // namespace

uint32_t crc32c(const void* data, size_t n, uint32_t crc) {
  static const std::array<uint32_t, 256> table = crc32c_table();
  const auto* p = static_cast<const unsigned char*>(data);
  crc = ~crc;
  for (size_t i = 0; i < n; i++) crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
  return ~crc;
}

uint32_t masked_crc32c(const void* data, size_t n) {
  const uint32_t c = crc32c(data, n);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view payload) {
  std::string r(8 + 4 + payload.size() + 4, '\0');
  const uint64_t len = payload.size();
  for (int i = 0; i < 8; i++) r[i] = char(len >> (8 * i));
  const uint32_t lc = masked_crc32c(r.data(), 8);
  for (int i = 0; i < 4; i++) r[8 + i] = char(lc >> (8 * i));
  std::memcpy(r.data() + 12, payload.data(), payload.size());
  const uint32_t pc = masked_crc32c(payload.data(), payload.size());
  for (int i = 0; i < 4; i++) r[12 + payload.size() + i] = char(pc >> (8 * i));
  return r;
}

std::vector<std::string> read_tfrecords(const std::string& path, uint64_t* valid_bytes) {
  const std::string f = read_file(path);
  std::vector<std::string> out;
  size_t pos = 0;
  while (f.size() - pos >= 12) {
    const uint64_t len = load_u64le(f.data() + pos);
    if (masked_crc32c(f.data() + pos, 8) != load_u32le(f.data() + pos + 8)) break;
    if (len > f.size() - pos - 16) break;  // cut short
    const char* payload = f.data() + pos + 12;
    if (masked_crc32c(payload, len) != load_u32le(payload + len)) break;
    out.emplace_back(payload, len);
    pos += 16 + len;
  }
  if (valid_bytes) *valid_bytes = pos;
  return out;
}

uint64_t repair_event_file(const std::string& path) {
  uint64_t valid = 0;
  read_tfrecords(path, &valid);
  const uint64_t size = std::filesystem::file_size(path);
  if (valid == size) return 0;
  std::filesystem::resize_file(path, valid);
  return size - valid;
}

TbHistogram make_histogram(std::span<const double> values, int buckets) {
  TbHistogram h;
  if (values.empty()) return h;
  h.min = *std::min_element(values.begin(), values.end());
  h.max = *std::max_element(values.begin(), values.end());
  h.num = double(values.size());
  for (double v : values) h.sum += v, h.sum_squares += v * v;
  if (h.max == h.min || buckets <= 1) {
    h.bucket_limit = {h.max};
    h.bucket = {h.num};
    return h;
  }
  // bucket i holds (limit[i-1], limit[i]]; the first one also holds min
  const double w = (h.max - h.min) / buckets;
  h.bucket.assign(size_t(buckets), 0.0);
  for (int i = 1; i <= buckets; i++) h.bucket_limit.push_back(i == buckets ? h.max : h.min + w * i);
  for (double v : values) {
    int b = int(std::ceil((v - h.min) / w)) - 1;
    b = std::clamp(b, 0, buckets - 1);
    while (b > 0 && v <= h.bucket_limit[size_t(b) - 1]) b--;  // rounding at an edge
    while (b < buckets - 1 && v > h.bucket_limit[size_t(b)]) b++;
    h.bucket[size_t(b)] += 1;
  }
  return h;
}

// ---- protobuf wire format, just what Event needs: varint (0), 64-bit (1), length-delimited
// (2), 32-bit (5). Field numbers from tensorflow/core/util/event.proto and
// tensorflow/core/framework/summary.proto.
namespace {
void varint(std::string& o, uint64_t v) {
  while (v >= 0x80) o += char(uint8_t(v) | 0x80), v >>= 7;
  o += char(uint8_t(v));
}
void key(std::string& o, int field, int wire) { varint(o, uint64_t(field) << 3 | uint64_t(wire)); }
void f64(std::string& o, int field, double v) {
  key(o, field, 1);
  uint64_t b;
  std::memcpy(&b, &v, 8);
  for (int i = 0; i < 8; i++) o += char(b >> (8 * i));
}
void f32(std::string& o, int field, float v) {
  key(o, field, 5);
  uint32_t b;
  std::memcpy(&b, &v, 4);
  for (int i = 0; i < 4; i++) o += char(b >> (8 * i));
}
void bytes(std::string& o, int field, std::string_view s) {
  key(o, field, 2);
  varint(o, s.size());
  o += s;
}
void packed_doubles(std::string& o, int field, const std::vector<double>& v) {
  std::string b;
  for (double x : v) {
    uint64_t u;
    std::memcpy(&u, &x, 8);
    for (int i = 0; i < 8; i++) b += char(u >> (8 * i));
  }
  bytes(o, field, b);
}
std::string event_head(double wall_time, int64_t step) {
  std::string e;
  f64(e, 1, wall_time);                    // Event.wall_time
  key(e, 2, 0), varint(e, uint64_t(step));  // Event.step
  return e;
}
}  // namespace

std::string encode_event_version(double wall_time) {
  std::string e = event_head(wall_time, 0);
  bytes(e, 3, "brain.Event:2");  // Event.file_version
  return e;
}

std::string encode_event_summary(double wall_time, int64_t step, const TbSummary& s) {
  std::string sum;
  for (const auto& [tag, v] : s.scalars) {
    std::string val;
    bytes(val, 1, tag);  // Summary.Value.tag
    f32(val, 2, v);      // Summary.Value.simple_value
    bytes(sum, 1, val);  // Summary.value
  }
  for (const auto& [tag, h] : s.histograms) {
    std::string hp;
    f64(hp, 1, h.min), f64(hp, 2, h.max), f64(hp, 3, h.num), f64(hp, 4, h.sum);
    f64(hp, 5, h.sum_squares);
    packed_doubles(hp, 6, h.bucket_limit), packed_doubles(hp, 7, h.bucket);
    std::string val;
    bytes(val, 1, tag);
    bytes(val, 5, hp);  // Summary.Value.histo
    bytes(sum, 1, val);
  }
  std::string e = event_head(wall_time, step);
  bytes(e, 5, sum);  // Event.summary
  return e;
}

std::string encode_event_session_start(double wall_time, int64_t step) {
  std::string log;
  key(log, 1, 0), varint(log, 1);  // SessionLog.status = START
  std::string e = event_head(wall_time, step);
  bytes(e, 6, log);  // Event.session_log
  return e;
}

// ---- the writer
namespace {
double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}
}  // namespace

EventWriter::EventWriter(const std::string& dir) {
  std::filesystem::create_directories(dir);
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (e.is_regular_file() && name.rfind("events.out.tfevents.", 0) == 0) {
      if (const uint64_t cut = repair_event_file(e.path().string()))
        std::fprintf(stderr, "tensorboard: cut a partial record (%llu bytes) off %s\n",
                     (unsigned long long)cut, e.path().c_str());
    }
  }
  char host[256] = "localhost";
  gethostname(host, sizeof host - 1);
  const auto secs = (long long)unix_now();
  // the pid tells apart two writers started in the same second (a resume right after a kill)
  path_ = dir + "/events.out.tfevents." + std::to_string(secs) + "." + host + "." +
          std::to_string(getpid());
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  DSV3_CHECK(fd_ >= 0, "cannot create ", path_, ": ", std::strerror(errno));
  push(tfrecord(encode_event_version(unix_now())));
  thread_ = std::thread([this] { loop(); });
}

EventWriter::~EventWriter() {
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  if (thread_.joinable()) thread_.join();
  if (fd_ >= 0) ::close(fd_);
}

void EventWriter::push(std::string record) {
  {
    std::lock_guard<std::mutex> l(mu_);
    DSV3_CHECK(error_.empty(), error_);
    queue_ += record;
    queued_++;
  }
  cv_.notify_one();
}

void EventWriter::summary(int64_t step, const TbSummary& s) {
  if (s.empty()) return;
  push(tfrecord(encode_event_summary(unix_now(), step, s)));
}

void EventWriter::session_start(int64_t step) {
  push(tfrecord(encode_event_session_start(unix_now(), step)));
}

void EventWriter::flush() {
  std::unique_lock<std::mutex> l(mu_);
  const uint64_t target = queued_;
  done_cv_.wait(l, [&] { return written_ >= target || !error_.empty(); });
  DSV3_CHECK(error_.empty(), error_);
}

void EventWriter::loop() {
  std::unique_lock<std::mutex> l(mu_);
  for (;;) {
    cv_.wait(l, [&] { return stop_ || !queue_.empty(); });
    if (queue_.empty() && stop_) return;
    std::string batch;
    batch.swap(queue_);
    const uint64_t upto = queued_;
    l.unlock();
    // whole records, one write where the kernel allows; short writes continue
    std::string err;
    for (size_t off = 0; off < batch.size();) {
      const ssize_t n = ::write(fd_, batch.data() + off, batch.size() - off);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) {
        err = "tensorboard: cannot write " + path_ + ": " + std::strerror(errno);
        break;
      }
      off += size_t(n);
    }
    l.lock();
    if (!err.empty() && error_.empty()) error_ = err;
    written_ = upto;
    done_cv_.notify_all();
  }
}

}  // namespace dsv3
