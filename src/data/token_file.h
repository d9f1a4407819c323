// llm.c token files (the format of llm.c's dev/data scripts, e.g. fineweb_train_000001.bin):
// a header of 256 little-endian int32 -- [0] magic 20240520, [1] version 1, [2] token count,
// the rest zero -- then `count` uint16 token ids.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace dsv3 {

constexpr int32_t kTokenFileMagic = 20240520;
constexpr int32_t kTokenFileVersion = 1;
constexpr uint64_t kTokenFileHeaderBytes = 256 * 4;

// Validates the header against the file size and returns the token count; the ids start at
// byte kTokenFileHeaderBytes. For loaders that read windows of a large file themselves.
int64_t read_token_file_header(const std::string& path);

// All ids of the file. Errors (dsv3::Error naming the file): missing, too short for a header,
// wrong magic (with what the file looks like), unsupported version, size not matching the count.
std::vector<int32_t> read_token_file(const std::string& path);

// The files named by a --train_data / --val_data value: a comma-separated list of items, each a
// file, a glob (sorted matches: 'data/fineweb_train_*.bin') or a directory (its files, sorted),
// in the order given; a file named twice is kept once. Errors start with `what` (the flag) and
// name an item that matches nothing. The files themselves are not opened here.
std::vector<std::string> expand_token_files(const std::string& spec, const std::string& what);

// Writes ids (each in [0, 65536)) atomically.
void write_token_file(const std::string& path, const std::vector<int32_t>& ids);

}  // namespace dsv3
