// dsv3 token shards (D10): the tokenized corpus on disk, one file per (domain, split, part).
//
//   offset 0   "DSV3SHRD"                 magic, 8 bytes
//          8   u32 format version         1
//         12   u32 header crc32           CRC-32 of the JSON header bytes
//         16   u64 header length H
//         24   H bytes of JSON header:
//                {"domain": "web", "split": "train", "token_bytes": 2 | 4, "vocab_size": V,
//                 "n_docs": D, "n_tokens": N, "n_text_bytes": UTF-8 bytes of the source texts,
//                 "eos": id or -1, "tokenizer": "free-form description", "crc32": payload CRC}
//              zero padding to a multiple of 8 bytes: the payload starts there (P)
//   P          (D + 1) u64 document offsets, in tokens: document i is ids[off[i], off[i+1]);
//              off[0] = 0, off[D] = N, strictly increasing (no empty documents)
//   P+8(D+1)   N ids, token_bytes each (uint16 or uint32)
// All integers little-endian; the file ends exactly after the last id. The payload CRC covers
// everything from P to the end (offset table and ids). Documents hold no EOS: the loader adds it.
//
// `Shard` also opens llm.c / modded-nanogpt token files (magic 20240520, see token_file.h) as a
// domain-less shard whose documents are the runs between EOS ids (empty runs dropped), or one
// document when no EOS id is given. Format details and examples: docs/data.md.
#pragma once
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace dsv3 {

constexpr uint32_t kShardVersion = 1;

// What a shard says about itself (its JSON header).
struct ShardInfo {
  std::string domain;        // "" for llm.c files
  std::string split;         // "train", "val", ... ("train" for llm.c files)
  int token_bytes = 0;       // 2 or 4; writer: 0 = 2 when vocab_size <= 65536, else 4
  int64_t vocab_size = 0;    // every id is < vocab_size (llm.c files: the largest id + 1)
  int32_t eos = -1;          // the tokenizer's EOS id, -1 when unknown
  std::string tokenizer;     // free-form description of the tokenizer that made the ids
  uint64_t n_docs = 0, n_tokens = 0;
  uint64_t n_text_bytes = 0;  // UTF-8 bytes of the source texts (bits per byte); 0 = unknown
  uint32_t crc32 = 0;         // of the payload
};

// Builds one shard in memory; finish() writes it atomically (nothing appears at `path` before).
class ShardWriter {
 public:
  // Validates `info` (vocab_size >= 1, token_bytes 0/2/4 and wide enough, eos < vocab_size);
  // the count fields and crc32 of `info` are ignored.
  ShardWriter(std::string path, ShardInfo info);
  // ids: one document without EOS, non-empty, each id in [0, vocab_size). text_bytes: UTF-8
  // bytes of the text it came from. Throws an Error naming the document, position and id.
  void add_document(std::span<const int32_t> ids, uint64_t text_bytes);
  // Writes the file (atomic) and returns its header. add_document/finish afterwards throw.
  ShardInfo finish();

  uint64_t n_docs() const { return offsets_.size() - 1; }
  uint64_t n_tokens() const { return offsets_.back(); }
  uint64_t payload_bytes() const;  // what the file will hold after the header: for rolling shards

 private:
  std::string path_;
  ShardInfo info_;
  std::vector<uint64_t> offsets_{0};
  std::vector<unsigned char> ids_;  // little-endian, token_bytes each
  bool done_ = false;
};

struct ShardOpenOptions {
  // llm.c files: the EOS id that separates documents; -1 = the whole file is one document.
  int32_t llmc_eos = -1;
  // Read the whole payload at open to check its CRC (and every id < vocab_size). Off, a corrupt
  // payload goes unnoticed: only for trusted files too large to read twice.
  bool verify = true;
};

// A read-only shard, memory-mapped. Movable, not copyable; safe to read from many threads.
class Shard {
 public:
  // Validates magic, version, header CRC and fields, exact file size, padding, offset table
  // (starts at 0, strictly increasing, ends at n_tokens) and the payload CRC. Every problem is
  // an Error naming the file; a file of another kind says what it looks like.
  static Shard open(const std::string& path, const ShardOpenOptions& opt = {});

  Shard(Shard&& o) noexcept;
  Shard& operator=(Shard&& o) noexcept;
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;
  ~Shard();

  const std::string& path() const { return path_; }
  const ShardInfo& info() const { return info_; }
  const std::string& domain() const { return info_.domain; }
  const std::string& split() const { return info_.split; }
  bool is_llmc() const { return llmc_; }
  uint64_t n_docs() const { return info_.n_docs; }
  uint64_t n_tokens() const { return info_.n_tokens; }
  uint64_t n_text_bytes() const { return info_.n_text_bytes; }
  int token_bytes() const { return info_.token_bytes; }
  int64_t vocab_size() const { return info_.vocab_size; }

  // Document i occupies tokens [doc_begin(i), doc_begin(i) + doc_size(i)) of the shard.
  uint64_t doc_begin(uint64_t i) const;
  uint64_t doc_size(uint64_t i) const;
  std::vector<int32_t> doc(uint64_t i) const;
  // Copies n ids starting at shard token position `begin` (bounds-checked) into out.
  void read_tokens(uint64_t begin, uint64_t n, int32_t* out) const;

 private:
  Shard() = default;
  void release();

  std::string path_;
  ShardInfo info_;
  bool llmc_ = false;
  const unsigned char* map_ = nullptr;  // the whole file (mmap)
  size_t map_size_ = 0;
  const unsigned char* ids_ = nullptr;  // into map_
  // n_docs + 1 offsets; for llm.c files split at EOS, (begin, end) pairs: 2 * n_docs entries.
  std::vector<uint64_t> offsets_;
};

}  // namespace dsv3
