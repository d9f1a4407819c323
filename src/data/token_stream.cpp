#include "data/token_stream.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "core/check.h"
#include "core/rng.h"
#include "data/token_file.h"

namespace dsv3 {

namespace {

uint64_t mix64(uint64_t z) {  // splitmix64's finalizer
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
// The Rng seed of epoch e's permutation; the tag keeps it apart from other uses of the run seed.
uint64_t permutation_seed(uint64_t seed, uint64_t epoch) {
  constexpr uint64_t kTag = 0x746f6b656e737472ull;  // "tokenstr"
  return mix64(mix64(seed ^ kTag) ^ epoch);
}

std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}

uint64_t parse_hex64(const nlohmann::json& j, const char* key) {
  const std::string s = j.is_string() ? j.get<std::string>() : std::string();
  bool ok = s.size() == 16;
  for (char ch : s) ok = ok && std::isxdigit(static_cast<unsigned char>(ch));
  DSV3_CHECK(ok, "data state: \"", key, "\" must be 16 hex digits, got ", j.dump());
  return std::strtoull(s.c_str(), nullptr, 16);
}

uint64_t get_u64(const nlohmann::json& s, const char* key) {
  DSV3_CHECK(s.contains(key) && s.at(key).is_number_integer() && s.at(key).get<int64_t>() >= 0,
             "data state: \"", key,
             "\" must be a non-negative integer, got ",
             s.contains(key) ? s.at(key).dump() : std::string("nothing"));
  return s.at(key).get<uint64_t>();
}

}  // namespace

TokenStream::TokenStream(std::vector<std::vector<int32_t>> parts, const TokenStreamConfig& c,
                         std::vector<std::string> names)
    : TokenStream(
          [&] {
            std::vector<Part> ps(parts.size());
            for (size_t i = 0; i < parts.size(); i++) {
              ps[i].name = i < names.size() ? names[i] : "part " + std::to_string(i);
              ps[i].n = parts[i].size();
              ps[i].ids = std::move(parts[i]);
            }
            return ps;
          }(),
          c) {}

TokenStream TokenStream::open_files(const std::vector<std::string>& paths,
                                    const TokenStreamConfig& c) {
  std::vector<Part> ps(paths.size());
  for (size_t i = 0; i < paths.size(); i++) {
    const int64_t count = read_token_file_header(paths[i]);  // llm.c's own messages first
    DSV3_CHECK(count > 0, paths[i], ": the llm.c token file holds no tokens");
    ps[i].name = paths[i];
    ps[i].file.emplace(Shard::open(paths[i]));
    ps[i].n = ps[i].file->n_tokens();
  }
  return TokenStream(std::move(ps), c);
}

TokenStream::TokenStream(std::vector<Part> parts, const TokenStreamConfig& c)
    : parts_(std::move(parts)), B_(c.batch), T_(c.seq_len), shuffle_(c.shuffle), seed_(c.seed) {
  DSV3_CHECK(B_ >= 1 && T_ >= 1, "token stream: batch (", B_, ") and seq_len (", T_,
             ") must be >= 1");
  DSV3_CHECK(!parts_.empty(), "token stream: no token files");
  for (Part& p : parts_) {
    p.first_window = n_windows_;
    n_windows_ += p.n > 0 ? (p.n - 1) / uint64_t(T_) : 0;
  }
  if (!shuffle_) check_sequential_fits();  // the more specific message first
  check_parts();
  batch_.resize(size_t(B_) * size_t(T_ + 1));
}

void TokenStream::check_parts() const {
  const uint64_t R = uint64_t(T_) + 1;
  for (const Part& p : parts_)
    DSV3_CHECK(p.n >= R, p.name, ": only ", p.n, " tokens: one window of seq_len ", T_,
               " needs ", R, " (lower seq_len or leave the file out)");
  DSV3_CHECK(n_windows_ >= uint64_t(B_), "only ", n_windows_, " windows of ", R,
             " tokens in all the data: one batch of ", B_, " rows needs ", B_,
             " (lower batch or seq_len)");
  DSV3_CHECK(n_windows_ <= UINT32_MAX, n_windows_, " windows are more than this stream numbers (",
             UINT32_MAX, "): raise seq_len");
}

void TokenStream::check_sequential_fits() const {
  const uint64_t need = uint64_t(B_) * uint64_t(T_) + 1;
  for (const Part& p : parts_)
    DSV3_CHECK(p.n >= need, p.name, ": only ", p.n, " tokens: one batch of ", B_, " x ", T_,
               " needs ", need, " in sequential order (lower batch or seq_len, or shuffle)");
}

uint64_t TokenStream::tokens() const {
  uint64_t n = 0;
  for (const Part& p : parts_) n += p.n;
  return n;
}

void TokenStream::copy_row(size_t part, uint64_t start, int32_t* out) const {
  const Part& p = parts_[part];
  const size_t R = size_t(T_) + 1;
  if (p.file) p.file->read_tokens(start, R, out);
  else std::memcpy(out, p.ids.data() + start, sizeof(int32_t) * R);
}

uint32_t TokenStream::window_at(uint64_t epoch, uint64_t index) {
  if (perm_epoch_ != epoch || perm_seed_ != seed_ || perm_.size() != n_windows_) {
    perm_.resize(size_t(n_windows_));
    for (uint64_t i = 0; i < n_windows_; i++) perm_[i] = uint32_t(i);
    Rng r(permutation_seed(seed_, epoch));
    for (uint64_t i = n_windows_ - 1; i > 0; i--) std::swap(perm_[i], perm_[r.below(i + 1)]);
    perm_epoch_ = epoch, perm_seed_ = seed_;
  }
  return perm_[index];
}

const int32_t* TokenStream::next() {
  const size_t R = size_t(T_) + 1;
  if (shuffle_) {
    for (int b = 0; b < B_; b++) {
      const uint64_t w = window_at(epoch_, index_);
      // the part holding window w: the last one whose first window is <= w
      const auto it =
          std::upper_bound(parts_.begin(), parts_.end(), w,
                           [](uint64_t x, const Part& p) { return x < p.first_window; });
      const size_t part = size_t(it - parts_.begin()) - 1;
      copy_row(part, (w - parts_[part].first_window) * uint64_t(T_), batch_.data() + b * R);
      if (++index_ == n_windows_) index_ = 0, epoch_++;
    }
    return batch_.data();
  }
  const uint64_t span = uint64_t(B_) * uint64_t(T_);
  auto wrap = [&] {  // the next batch does not fit: next part, or the next epoch
    pos_ = 0;
    if (++part_ == parts_.size()) part_ = 0, epoch_++;
  };
  if (pos_ + span + 1 > parts_[part_].n) wrap();
  for (int b = 0; b < B_; b++)
    copy_row(part_, pos_ + uint64_t(b) * uint64_t(T_), batch_.data() + b * R);
  pos_ += span;
  if (pos_ + span + 1 > parts_[part_].n) wrap();
  return batch_.data();
}

nlohmann::json TokenStream::state() const {
  if (shuffle_)
    return {{"order", "shuffled"}, {"seed", hex64(seed_)}, {"seq_len", T_},
            {"windows", n_windows_}, {"epoch", epoch_}, {"index", index_}};
  return {{"order", "sequential"}, {"part", part_}, {"position", pos_}, {"epoch", epoch_}};
}

void TokenStream::restore(const nlohmann::json& s) {
  DSV3_CHECK(s.is_object(), "data state must be a JSON object, got ", s.dump());
  // No "order": a state written before shuffling existed, which read sequentially.
  std::string order = "sequential";
  if (s.contains("order")) {
    DSV3_CHECK(s.at("order").is_string(), "data state: \"order\" must be a string, got ",
               s.at("order").dump());
    order = s.at("order").get<std::string>();
  }
  if (order == "shuffled") {
    const uint64_t seed = parse_hex64(s.contains("seed") ? s.at("seed") : nullptr, "seed");
    const uint64_t seq_len = get_u64(s, "seq_len"), windows = get_u64(s, "windows");
    const uint64_t epoch = get_u64(s, "epoch"), index = get_u64(s, "index");
    DSV3_CHECK(seq_len == uint64_t(T_), "the data state is for seq_len ", seq_len,
               ", this run has seq_len ", T_, ": its windows differ (resume with seq_len ",
               seq_len, ")");
    DSV3_CHECK(windows == n_windows_, "the data state counts ", windows, " windows of ", T_ + 1,
               " tokens, the data given has ", n_windows_, ": not the same token files?");
    DSV3_CHECK(index < n_windows_, "data state: index ", index, " is past the ", n_windows_,
               " windows");
    shuffle_ = true, seed_ = seed, epoch_ = epoch, index_ = index;
    part_ = 0, pos_ = 0;
    return;
  }
  DSV3_CHECK(order == "sequential", "data state: unknown order ", order,
             " (expected \"shuffled\" or \"sequential\")");
  const uint64_t part = s.contains("part") ? get_u64(s, "part") : 0;
  const uint64_t pos = get_u64(s, "position"), epoch = get_u64(s, "epoch");
  DSV3_CHECK(part < parts_.size(), "data state: part ", part, " but the data has ",
             parts_.size(), " file(s): not the same token files?");
  const Part& p = parts_[size_t(part)];
  DSV3_CHECK(pos + uint64_t(B_) * uint64_t(T_) + 1 <= p.n, "data position ", pos,
             " is past the end of ", p.name, " (", p.n, " tokens): wrong data file?");
  check_sequential_fits();
  shuffle_ = false, part_ = size_t(part), pos_ = pos, epoch_ = epoch;
  index_ = 0;
}

void TokenStream::check_ids_below(int64_t vocab, const std::string& what) const {
  for (const Part& p : parts_) {
    if (p.file && p.file->vocab_size() <= vocab) continue;  // the largest id, found at open
    std::vector<int32_t> buf;
    const int32_t* ids = p.ids.data();
    if (p.file) {
      buf.resize(size_t(p.n));
      p.file->read_tokens(0, p.n, buf.data());
      ids = buf.data();
    }
    for (uint64_t i = 0; i < p.n; i++)
      DSV3_CHECK(ids[i] >= 0 && ids[i] < vocab, what, " ", p.name, ": token ", ids[i],
                 " at index ", i, " is outside the model's vocabulary (", vocab, ")");
  }
}

}  // namespace dsv3
