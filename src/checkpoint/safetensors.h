// safetensors (https://github.com/huggingface/safetensors): u64 little-endian header length N,
// N bytes of JSON {"name": {"dtype", "shape", "data_offsets": [begin, end]}, ...,
// "__metadata__": {string: string}}, then the data section; offsets are relative to its start.
// The reader validates the whole header when it opens a file, so a tensor read afterwards
// cannot run outside the file; F32, BF16 and F16 tensors are read as fp32.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/io.h"

namespace dsv3 {

struct SafetensorsEntry {
  std::string name;
  std::string dtype;             // as in the file: "F32", "BF16", "F16", "I64", ...
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;   // byte range in the data section
  uint64_t numel = 0;
};

std::string shape_str(const std::vector<int64_t>& shape);  // "[2, 3]"

class SafetensorsReader {
 public:
  // Opens and validates `path`; throws an Error naming the file and the problem.
  explicit SafetensorsReader(const std::string& path);

  const std::string& path() const { return file_.path(); }
  const std::vector<SafetensorsEntry>& tensors() const { return entries_; }  // sorted by name
  const SafetensorsEntry* find(const std::string& name) const;
  const std::map<std::string, std::string>& metadata() const { return metadata_; }

  // Reads tensor `name` converted to fp32 into dst (numel floats). Throws if the tensor is
  // missing, its shape differs from `expected_shape`, or its dtype is not F32/BF16/F16.
  void read_f32(const std::string& name, const std::vector<int64_t>& expected_shape,
                float* dst) const;
  // The same without a shape check (dst holds find(name)->numel floats).
  void read_f32(const SafetensorsEntry& e, float* dst) const;

 private:
  InFile file_;
  uint64_t data_start_ = 0;
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

struct SafetensorsTensor {
  std::string name;
  std::vector<int64_t> shape;
  const float* data = nullptr;  // numel(shape) floats
};

// Writes the tensors as F32 or BF16 (rounded to nearest even), keys sorted, data in key order,
// the header padded with spaces to a multiple of 8 bytes. Atomic (write_file_atomic).
void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       DType dtype, const std::map<std::string, std::string>& metadata = {});

}  // namespace dsv3
