#include "data/token_file.h"

#include "core/check.h"
#include "core/io.h"
#include "data/reader.h"

namespace dsv3 {

namespace {

int64_t check_header(const InFile& f) {
  const std::string& path = f.path();
  const uint64_t size = f.size();
  auto looks = [&] {
    std::string k = sniff_file_kind(path);
    return k.empty() ? std::string() : " (it looks like " + k + ")";
  };
  DSV3_CHECK(size >= kTokenFileHeaderBytes, path, ": too short for an llm.c token file header (",
             size, " bytes, the header alone is ", kTokenFileHeaderBytes, ")", looks());
  unsigned char h[12];
  f.read_at(0, h, sizeof h);
  const int32_t magic = int32_t(load_u32le(h)), version = int32_t(load_u32le(h + 4));
  const int32_t count = int32_t(load_u32le(h + 8));
  DSV3_CHECK(magic == kTokenFileMagic, path, ": not an llm.c token file (magic ", magic,
             ", expected ", kTokenFileMagic, ")", looks());
  DSV3_CHECK(version == kTokenFileVersion, path, ": unsupported token file version ", version,
             " (this build reads version ", kTokenFileVersion,
             ": uint16 ids; version 2 holds uint32 ids)");
  DSV3_CHECK(count >= 0, path, ": negative token count ", count, " in the header");
  const uint64_t expected = kTokenFileHeaderBytes + 2 * uint64_t(count);
  DSV3_CHECK(size >= expected, path, ": truncated: the header says ", count, " tokens (",
             expected, " bytes) but the file has ", size, " bytes");
  DSV3_CHECK(size == expected, path, ": the header says ", count, " tokens (", expected,
             " bytes) but the file has ", size, " bytes (", size - expected,
             " unexpected trailing bytes)");
  return count;
}

}  // namespace

int64_t read_token_file_header(const std::string& path) { return check_header(InFile(path)); }

std::vector<int32_t> read_token_file(const std::string& path) {
  InFile f(path);
  const int64_t count = check_header(f);
  std::vector<uint16_t> raw(static_cast<size_t>(count));
  f.read_at(kTokenFileHeaderBytes, raw.data(), raw.size() * 2);
  return std::vector<int32_t>(raw.begin(), raw.end());
}

std::vector<std::string> expand_token_files(const std::string& spec, const std::string& what) {
  std::vector<std::string> items;
  for (size_t pos = 0; pos <= spec.size();) {
    size_t c = spec.find(',', pos);
    if (c == std::string::npos) c = spec.size();
    if (c > pos) items.push_back(spec.substr(pos, c - pos));
    pos = c + 1;
  }
  DSV3_CHECK(!items.empty(), what, ": names no token files");
  try {
    return expand_inputs(items);
  } catch (const Error& e) {
    fail(what, ": ", e.what());
  }
}

void write_token_file(const std::string& path, const std::vector<int32_t>& ids) {
  DSV3_CHECK(ids.size() <= 0x7fffffffu, "cannot write ", path, ": ", ids.size(),
             " tokens exceed the format's int32 count");
  std::vector<uint16_t> raw(ids.size());
  for (size_t i = 0; i < ids.size(); i++) {
    DSV3_CHECK(ids[i] >= 0 && ids[i] < 65536, "cannot write ", path, ": token ", i, " is ", ids[i],
               ", outside the uint16 range [0, 65536) of llm.c token files");
    raw[i] = uint16_t(ids[i]);
  }
  write_file_atomic(path, [&](std::FILE* f) {
    write_u32le(f, uint32_t(kTokenFileMagic));
    write_u32le(f, uint32_t(kTokenFileVersion));
    write_u32le(f, uint32_t(ids.size()));
    write_zeros(f, kTokenFileHeaderBytes - 12);
    write_bytes(f, raw.data(), raw.size() * 2);
  });
}

}  // namespace dsv3
