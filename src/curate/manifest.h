// How a curation run is cut into parts, and what a finished part leaves on disk (issue item 8:
// scale-out and resume).
//
// Parts. Inputs, in --input order, are packed into parts of about part_bytes (a larger file is a
// part of its own). A part is the unit of work of one rank and of resume, and produces one
// output file data/part-NNNNN.jsonl.zst. The plan depends only on the input list and sizes, so
// every rank computes the same one, and parts are dealt to ranks largest first to the least
// loaded (LPT scheduling).
//
// Keys file (OUT/work/part-NNNNN.keys): written last and atomically, so its presence means the
// part's spool (kept documents) and rejects are complete. Layout, little-endian:
//   "DSV3CURK" u32 version u32 num_perm u32 flags(1 exact, 2 minhash, 4 df)
//   records, one per kept document:
//     u64 index, u64 text_bytes, [16 bytes exact hash], [num_perm x u16 signature],
//     u32 id length, id bytes
//   df section: u32 entries, entries x (u32 bucket, u32 documents)
//   trailer JSON: {"fingerprint", "files", "part", "kept", "records_bytes", "stats"}
//   u64 trailer length, u32 trailer CRC-32, u32 body CRC-32 (records + df), "DSV3KEND"
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "curate/dedup.h"

namespace dsv3::curate {

struct InputFile {
  std::string path;
  uint64_t size = 0;
  int64_t mtime_ns = 0;
};
std::vector<InputFile> stat_inputs(const std::vector<std::string>& paths);

struct Part {
  size_t index = 0;
  std::vector<InputFile> files;
  uint64_t bytes = 0;
};
std::vector<Part> plan_parts(const std::vector<InputFile>& inputs, uint64_t part_bytes);
// owner rank of each part
std::vector<int> assign_parts(const std::vector<Part>& parts, int ranks);
std::string part_name(size_t index);  // "part-00042"
nlohmann::json part_files_json(const Part& p);

enum KeyFlags : uint32_t { kKeyExact = 1, kKeyMinhash = 2, kKeyDf = 4 };

// Streams a keys file into `f` (inside write_file_atomic).
class KeysWriter {
 public:
  KeysWriter(std::FILE* f, int num_perm, uint32_t flags);
  void add(uint64_t index, uint64_t text_bytes, const Hash128& h, const uint16_t* sig,
           const std::string& id);
  void finish(const std::vector<std::pair<uint32_t, uint32_t>>& df, nlohmann::json trailer);

 private:
  void put(const void* p, size_t n);
  std::FILE* f_;
  int num_perm_;
  uint32_t flags_;
  uint32_t crc_ = 0;
  uint64_t records_bytes_ = 0;
  uint64_t kept_ = 0;
};

struct KeyRecord {
  uint64_t index = 0, text_bytes = 0;
  Hash128 exact;
  const char* sig = nullptr;  // num_perm u16 in PartKeys::body (unaligned: memcpy)
  std::string id;
};

struct PartKeys {
  nlohmann::json trailer;
  int num_perm = 0;
  uint32_t flags = 0;
  std::string body;  // records and df, as on disk
  std::vector<KeyRecord> records;
  std::vector<std::pair<uint32_t, uint32_t>> df;
};

// The trailer only (cheap: the resume check). Throws an Error naming the file if it is not a
// complete keys file.
nlohmann::json read_keys_trailer(const std::string& path);
// Everything, checksums verified.
PartKeys read_keys(const std::string& path);
// Parses records and df out of a body (e.g. one received from another rank).
void parse_keys_body(PartKeys& k, const std::string& where);

}  // namespace dsv3::curate
