// TensorBoard event files (O1): the format TensorBoard reads, written without TensorFlow.
//
// A file is a sequence of TFRecords, each
//   u64 length | u32 masked_crc32c(length bytes) | payload | u32 masked_crc32c(payload)
// (little-endian; mask(c) = ((c >> 15) | (c << 17)) + 0xa282ead8), whose payload is a serialized
// tensorflow.Event protobuf. The first record carries file_version "brain.Event:2"; every later
// one a Summary of scalars (simple_value) and histograms (HistogramProto), or a SessionLog START
// that makes TensorBoard drop what a killed run wrote past the checkpoint a resume starts from.
// The protobuf messages are encoded by hand (docs/decisions.md, issue 13).
//
// Writing never stalls the caller: records are encoded and queued, and a writer thread appends
// them, whole records per write. A kill can still cut the last write short; the next writer in
// the same directory truncates every events file to its last whole record first, so each record
// is whole or absent.
#pragma once
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <vector>

namespace dsv3 {

uint32_t crc32c(const void* data, size_t n, uint32_t crc = 0);  // Castagnoli, reflected
uint32_t masked_crc32c(const void* data, size_t n);

// One TFRecord (framing above) around payload.
std::string tfrecord(std::string_view payload);

// The payloads of the whole records of a file, checked (both CRCs); stops at the first partial
// or corrupt record. valid_bytes: where the whole records end.
std::vector<std::string> read_tfrecords(const std::string& path, uint64_t* valid_bytes = nullptr);

struct TbHistogram {
  double min = 0, max = 0, num = 0, sum = 0, sum_squares = 0;
  std::vector<double> bucket_limit, bucket;  // right edges; counts
};
// `buckets` equal-width buckets from min to max (one when all values are equal).
TbHistogram make_histogram(std::span<const double> values, int buckets = 30);

// One Event's summary: scalars and histograms at one step.
struct TbSummary {
  std::vector<std::pair<std::string, float>> scalars;
  std::vector<std::pair<std::string, TbHistogram>> histograms;
  bool empty() const { return scalars.empty() && histograms.empty(); }
};

// Serialized tensorflow.Event messages.
std::string encode_event_version(double wall_time);
std::string encode_event_summary(double wall_time, int64_t step, const TbSummary& s);
std::string encode_event_session_start(double wall_time, int64_t step);

class EventWriter {
 public:
  // Opens dir/events.out.tfevents.<seconds>.<host>.<pid> after repairing the events files
  // already in dir (a truncated last record is cut off), and queues the file_version record.
  explicit EventWriter(const std::string& dir);
  ~EventWriter();  // writes what is queued, then closes
  EventWriter(const EventWriter&) = delete;
  EventWriter& operator=(const EventWriter&) = delete;

  void summary(int64_t step, const TbSummary& s);
  // A resumed run starts at `step`: TensorBoard discards events at >= step written before.
  void session_start(int64_t step);
  void flush();  // returns once everything queued so far is written
  const std::string& path() const { return path_; }

 private:
  void push(std::string record);
  void loop();

  std::string path_;
  int fd_ = -1;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  std::string queue_;     // whole records not written yet
  uint64_t queued_ = 0, written_ = 0;  // records
  bool stop_ = false;
  std::string error_;     // the writer thread's failure, reported by the next call
  std::thread thread_;
};

// Truncates `path` to its last whole record; returns the bytes cut.
uint64_t repair_event_file(const std::string& path);

}  // namespace dsv3
