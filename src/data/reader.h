// Input readers (D1), shared by `dsv3 curate` and `dsv3 prepare`: which files, how to
// decompress them, and how a file becomes records. Everything streams: a file is read through a
// fixed buffer, so memory does not grow with its size, and a record longer than max_doc_bytes
// is skipped without being held.
//
// Bad input never throws here unless the caller asks (strict mode is the pipeline's business):
// each problem becomes a BadInput kind attached to the record, with its file and line.
//
// Layering: this is the data layer; it includes nothing from src/curate (curation stages build
// their curate::Document from a Record, see parse_record below).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3 {

// Expands --input items in the order given: a file; a directory (its regular files,
// recursively, sorted, hidden entries skipped); or a glob with * ? [...] per path segment and
// ** for any number of directories ("/usr/lib/python3*/**/*.py"). A path listed twice is kept
// once. Throws an Error naming an item that matches nothing.
std::vector<std::string> expand_inputs(const std::vector<std::string>& items);
// glob matching of one path against one pattern (the rules above); exposed for tests.
bool glob_match(const std::string& pattern, const std::string& path);

enum class InputFormat : uint8_t { Auto, Jsonl, Text };
const char* input_format_name(InputFormat f);
InputFormat parse_input_format(const std::string& s);
// .jsonl/.json/.ndjson (before an optional .gz/.zst) are JSONL; anything else is text.
InputFormat format_of(const std::string& path);

// How a text file is cut into documents.
enum class TextUnit : uint8_t { File, Paragraph, Line };
const char* text_unit_name(TextUnit u);
TextUnit parse_text_unit(const std::string& s);

struct ReaderConfig {
  InputFormat format = InputFormat::Auto;
  std::string text_key = "text";  // JSONL field with the text
  std::string id_key = "id";      // JSONL field with the id (optional)
  TextUnit text_unit = TextUnit::File;
  int64_t max_doc_bytes = 64ll << 20;  // longer records are counted as too_large and skipped
};

// A decompressing byte stream; the codec is chosen by the file's first bytes (gzip 1f 8b,
// zstd 28 b5 2f fd), not its name. A truncated or corrupt stream throws an Error naming the
// file.
class ByteSource {
 public:
  explicit ByteSource(const std::string& path);
  ~ByteSource();
  ByteSource(const ByteSource&) = delete;
  ByteSource& operator=(const ByteSource&) = delete;
  size_t read(char* dst, size_t n);  // 0 at the end
  const char* codec() const;         // "plain" | "gzip" | "zstd"

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Problems with input records, counted and reported with file and line (never a crash).
enum class BadInput : uint8_t {
  None, BrokenJson, NotAnObject, MissingText, TextNotString, InvalidUtf8, NulBytes, Empty,
  TooLarge, ReadError, Count_
};
const char* bad_input_name(BadInput b);
// Whether a document with this problem can still be curated (invalid UTF-8 is repaired, NUL
// bytes are removed); otherwise it is rejected with the problem as the reason.
bool bad_input_is_repairable(BadInput b);

// One unit read from a file, before JSON parsing (which runs in parallel in the pipeline).
struct RawRecord {
  std::string data;        // a JSON line or a piece of text
  uint64_t line = 0;       // 1-based line where it starts
  uint64_t bytes = 0;      // its size in the (decompressed) input, even when skipped
  bool too_large = false;  // longer than max_doc_bytes: `data` is empty
};

class RecordReader {
 public:
  RecordReader(const std::string& path, const ReaderConfig& cfg);
  ~RecordReader();
  // Next record; false at the end of the file. Throws an Error on a read failure.
  bool next(RawRecord& r);
  InputFormat format() const { return format_; }
  const std::string& path() const { return path_; }
  uint64_t lines_read() const { return line_; }

 private:
  bool next_line(std::string& out, bool& too_large, uint64_t& bytes);  // false at EOF
  std::string path_;
  ReaderConfig cfg_;
  InputFormat format_;
  std::unique_ptr<ByteSource> src_;
  std::vector<char> buf_;
  size_t pos_ = 0, end_ = 0;
  bool eof_ = false;
  uint64_t line_ = 0;      // lines consumed so far
  bool file_done_ = false; // TextUnit::File: the one record was returned
};

// A record's text and where it came from, as parse_record makes it.
struct Record {
  std::string text;
  std::string id;         // the record's id field, or "<input path>:<line>"
  nlohmann::json meta;    // the input record without its text and id (JSONL), else null
  uint64_t line = 0;      // 1-based line where the record starts in its file
  uint64_t bytes_in = 0;  // bytes of the record as read
};

// Turns a raw record into a Record: parses JSON and takes the text and id fields, repairs
// invalid UTF-8 and removes NUL bytes. Returns the problems found as a mask of
// bad_input_bit(kind) (0 if clean); the record is usable iff no unrepairable problem is set.
// `detail` says more about the first problem (the JSON parser's message, ...).
inline uint32_t bad_input_bit(BadInput b) { return 1u << unsigned(b); }
uint32_t parse_record(RawRecord& raw, InputFormat format, const ReaderConfig& cfg,
                      const std::string& path, Record& rec, std::string& detail);

// The same for a richer document type (curate::Document): fills its text, id, meta, line and
// bytes_in and leaves its other fields alone.
template <typename Doc>
uint32_t parse_record(RawRecord& raw, InputFormat format, const ReaderConfig& cfg,
                      const std::string& path, Doc& doc, std::string& detail) {
  Record r;
  const uint32_t problems = parse_record(raw, format, cfg, path, r, detail);
  doc.text = std::move(r.text);
  doc.id = std::move(r.id);
  doc.meta = std::move(r.meta);
  doc.line = r.line;
  doc.bytes_in = r.bytes_in;
  return problems;
}

}  // namespace dsv3
