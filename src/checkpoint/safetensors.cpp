#include "checkpoint/safetensors.h"

#include <algorithm>
#include <numeric>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/fields.h"

namespace dsv3 {

namespace {

constexpr uint64_t kMaxHeader = 100ull * 1024 * 1024;  // the limit the reference reader uses

// Element sizes of the dtypes the safetensors spec defines; the reader knows them all so it
// can validate any file, and converts F32 / BF16 / F16.
size_t st_dtype_size(const std::string& d) {
  static const std::map<std::string, size_t> sizes = {
      {"BOOL", 1}, {"U8", 1},      {"I8", 1},      {"F8_E5M2", 1}, {"F8_E4M3", 1},
      {"F8_E8M0", 1}, {"I16", 2},  {"U16", 2},     {"F16", 2},     {"BF16", 2},
      {"I32", 4},  {"U32", 4},     {"F32", 4},     {"F64", 8},     {"I64", 8},
      {"U64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

}  // namespace

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); i++) s += (i ? ", " : "") + std::to_string(shape[i]);
  return s + "]";
}

SafetensorsReader::SafetensorsReader(const std::string& path) : file_(path) {
  const uint64_t size = file_.size();
  auto looks = [&] {
    std::string k = sniff_file_kind(path);
    return k.empty() || k == "a safetensors file" ? std::string() : " (it looks like " + k + ")";
  };
  DSV3_CHECK(size >= 8, path, ": not a safetensors file: ", size,
             " bytes is too short for the 8-byte header length", looks());
  unsigned char lenb[8];
  file_.read_at(0, lenb, 8);
  const uint64_t n = load_u64le(lenb);
  DSV3_CHECK(n <= kMaxHeader, path, ": safetensors header length ", n,
             " is not sane (limit 100 MB): corrupt or not a safetensors file", looks());
  DSV3_CHECK(n <= size - 8, path, ": safetensors header length ", n, " exceeds the file (", size,
             " bytes): truncated or not a safetensors file", looks());
  DSV3_CHECK(n >= 2, path, ": safetensors header length ", n, " is too small for a JSON object");
  data_start_ = 8 + n;
  const uint64_t data_size = size - data_start_;

  nlohmann::json j;
  try {
    j = nlohmann::json::parse(file_.read_string(8, size_t(n)));
  } catch (const nlohmann::json::parse_error& e) {
    fail(path, ": safetensors header is not valid JSON (error at byte ", e.byte, " of ", n, ")",
         looks());
  } catch (const nlohmann::json::exception& e) {  // out_of_range: a number like 1e999
    fail(path, ": safetensors header is not valid JSON: ", json_error_text(e), looks());
  }
  DSV3_CHECK(j.is_object(), path, ": safetensors header is JSON but not an object (",
             j.type_name(), ")");

  for (auto it = j.begin(); it != j.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      DSV3_CHECK(v.is_object(), path, ": __metadata__ must be an object of strings, got ",
                 v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        DSV3_CHECK(m.value().is_string(), path, ": __metadata__ value of '", m.key(),
                   "' must be a string, got ", m.value().type_name());
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    const std::string where = path + ": tensor '" + name + "'";
    DSV3_CHECK(v.is_object(), where, ": entry must be an object, got ", v.type_name());
    SafetensorsEntry e;
    e.name = name;
    auto dt = v.find("dtype");
    DSV3_CHECK(dt != v.end() && dt->is_string(), where, ": missing or non-string 'dtype'");
    e.dtype = dt->get<std::string>();
    const size_t esize = st_dtype_size(e.dtype);
    DSV3_CHECK(esize > 0, where, ": unknown dtype '", e.dtype, "'");
    auto sh = v.find("shape");
    DSV3_CHECK(sh != v.end() && sh->is_array(), where, ": missing or non-array 'shape'");
    DSV3_CHECK(sh->size() <= 16, where, ": shape has ", sh->size(), " dimensions (limit 16)");
    e.numel = 1;
    for (const auto& d : *sh) {
      uint64_t x;
      DSV3_CHECK(json_u64(d, &x) && x <= (uint64_t(1) << 48), where,
                 ": shape entries must be integers in [0, 2^48] (got ",
                 d.is_number() ? d.dump() : std::string("a ") + d.type_name(), ")");
      DSV3_CHECK(!__builtin_mul_overflow(e.numel, x, &e.numel), where, ": shape overflows");
      e.shape.push_back(int64_t(x));
    }
    auto off = v.find("data_offsets");
    DSV3_CHECK(off != v.end() && off->is_array() && off->size() == 2, where,
               ": 'data_offsets' must be [begin, end]");
    DSV3_CHECK(json_u64((*off)[0], &e.begin) && json_u64((*off)[1], &e.end) && e.begin <= e.end,
               where, ": 'data_offsets' must be non-negative integers with begin <= end");
    uint64_t bytes;
    DSV3_CHECK(!__builtin_mul_overflow(e.numel, uint64_t(esize), &bytes), where,
               ": shape overflows");
    DSV3_CHECK(e.end - e.begin == bytes, where, ": data_offsets [", e.begin, ", ", e.end,
               "] hold ", e.end - e.begin, " bytes but shape ", shape_str(e.shape), " of ",
               e.dtype, " needs ", bytes);
    DSV3_CHECK(e.end <= data_size, where, ": data_offsets [", e.begin, ", ", e.end,
               "] run past the end of the data section (", data_size,
               " bytes): file truncated?");
    index_[name] = entries_.size();
    entries_.push_back(std::move(e));
  }

  // No two tensors may share bytes (empty tensors own none).
  std::vector<const SafetensorsEntry*> by_offset;
  for (const auto& e : entries_)
    if (e.end > e.begin) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](auto* a, auto* b) { return a->begin < b->begin; });
  for (size_t i = 1; i < by_offset.size(); i++)
    DSV3_CHECK(by_offset[i - 1]->end <= by_offset[i]->begin, path, ": tensors '",
               by_offset[i - 1]->name, "' and '", by_offset[i]->name, "' overlap");
}

const SafetensorsEntry* SafetensorsReader::find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &entries_[it->second];
}

void SafetensorsReader::read_f32(const std::string& name,
                                 const std::vector<int64_t>& expected_shape, float* dst) const {
  const SafetensorsEntry* e = find(name);
  DSV3_CHECK(e, path(), ": has no tensor '", name, "'");
  DSV3_CHECK(e->shape == expected_shape, path(), ": tensor '", name, "' has shape ",
             shape_str(e->shape), ", expected ", shape_str(expected_shape));
  read_f32(*e, dst);
}

void SafetensorsReader::read_f32(const SafetensorsEntry& e, float* dst) const {
  const uint64_t at = data_start_ + e.begin;
  if (e.dtype == "F32") {
    file_.read_at(at, dst, size_t(e.numel) * 4);
    return;
  }
  DSV3_CHECK(e.dtype == "BF16" || e.dtype == "F16", path(), ": tensor '", e.name, "' has dtype ",
             e.dtype, "; only F32, BF16 and F16 tensors can be read");
  const bool bf16 = e.dtype == "BF16";
  constexpr size_t kChunk = size_t(1) << 20;
  std::vector<uint16_t> buf(std::min<uint64_t>(e.numel, kChunk));
  for (uint64_t i = 0; i < e.numel; i += kChunk) {
    const size_t k = size_t(std::min<uint64_t>(kChunk, e.numel - i));
    file_.read_at(at + 2 * i, buf.data(), 2 * k);
    if (bf16) {
      for (size_t j = 0; j < k; j++) dst[i + j] = bf16_to_f32(buf[j]);
    } else {
      for (size_t j = 0; j < k; j++) dst[i + j] = f16_to_f32(buf[j]);
    }
  }
}

void write_safetensors(const std::string& path, const std::vector<SafetensorsTensor>& tensors,
                       DType dtype, const std::map<std::string, std::string>& metadata) {
  std::vector<size_t> order(tensors.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return tensors[a].name < tensors[b].name; });
  const size_t esize = dtype_size(dtype);
  nlohmann::json header = nlohmann::json::object();
  std::vector<uint64_t> numel(tensors.size());
  uint64_t offset = 0;
  for (size_t k = 0; k < order.size(); k++) {
    const SafetensorsTensor& t = tensors[order[k]];
    DSV3_CHECK(k == 0 || tensors[order[k - 1]].name != t.name, "cannot write ", path,
               ": duplicate tensor name '", t.name, "'");
    DSV3_CHECK(t.name != "__metadata__", "cannot write ", path, ": reserved tensor name");
    uint64_t n = 1;
    for (auto d : t.shape) {
      DSV3_CHECK(d >= 0, "cannot write ", path, ": tensor '", t.name, "' has negative shape ",
                 shape_str(t.shape));
      n *= uint64_t(d);
    }
    DSV3_CHECK(n == 0 || t.data, "cannot write ", path, ": tensor '", t.name, "' has no data");
    numel[order[k]] = n;
    header[t.name] = {{"dtype", dtype == DType::F32 ? "F32" : "BF16"},
                      {"shape", t.shape},
                      {"data_offsets", {offset, offset + n * esize}}};
    offset += n * esize;
  }
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail("cannot write ", path, ": tensor names must be UTF-8 (", e.what(), ")");
  }
  text.append((8 - text.size() % 8) % 8, ' ');

  write_file_atomic(path, [&](std::FILE* f) {
    write_u64le(f, text.size());
    write_bytes(f, text.data(), text.size());
    std::vector<uint16_t> buf;
    for (size_t idx : order) {
      const SafetensorsTensor& t = tensors[idx];
      const uint64_t n = numel[idx];
      if (dtype == DType::F32) {
        write_bytes(f, t.data, size_t(n) * 4);
        continue;
      }
      constexpr size_t kChunk = size_t(1) << 20;
      buf.resize(std::min<uint64_t>(n, kChunk));
      for (uint64_t i = 0; i < n; i += kChunk) {
        const size_t k = size_t(std::min<uint64_t>(kChunk, n - i));
        convert(buf.data(), DType::BF16, t.data + i, DType::F32, k);
        write_bytes(f, buf.data(), 2 * k);
      }
    }
  });
}

}  // namespace dsv3
