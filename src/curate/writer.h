// Output side of `dsv3 curate` (D1, issue item 7): compressed JSONL streams and the records
// written into them.
//
// A curated record is the input record with its text replaced by the curated text and a
// "curate" object holding provenance and scores:
//   {"id": ..., "text": ..., <the input's other fields>,
//    "curate": {"source": "in/a.jsonl", "line": 12, "pii": {"email": 1}, "tfidf": 0.31, ...}}
// A rejected record also says where and why: "curate": {..., "stage": "gopher_quality",
// "rule": "gopher_short_doc", "detail": "..."}.
#pragma once
#include <cstdio>
#include <memory>
#include <string>
#include <string_view>

#include "curate/document.h"

namespace dsv3::curate {

enum class Compression : uint8_t { None, Zstd, Gzip };
const char* compression_name(Compression c);
Compression parse_compression(const std::string& s);
const char* compression_suffix(Compression c);  // "", ".zst", ".gz"

// Streams bytes into `f`, compressing them. Concatenated outputs of two writers are one valid
// stream (zstd frames and gzip members concatenate), which the pipeline uses to append.
class StreamWriter {
 public:
  StreamWriter(std::FILE* f, Compression c, int level);
  ~StreamWriter();
  StreamWriter(const StreamWriter&) = delete;
  StreamWriter& operator=(const StreamWriter&) = delete;
  void write(std::string_view s);
  void finish();  // flushes the last frame; required before the file is closed

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// One JSONL line (with the newline) for a kept document.
std::string curated_record(const Document& doc, const std::string& source);
// One JSONL line for a rejected document. `raw` is used when the record could not be parsed
// (it is cut to 4 KiB).
std::string rejected_record(const Document& doc, const std::string& source,
                            const std::string& stage, const std::string& rule,
                            const std::string& detail, std::string_view raw = {});

}  // namespace dsv3::curate
