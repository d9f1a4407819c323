#include "data/loader.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <exception>
#include <mutex>
#include <optional>
#include <set>
#include <thread>

#include "core/check.h"
#include "core/rng.h"
#include "data/shard.h"

namespace dsv3 {

namespace {

using json = nlohmann::json;

// splitmix64's finaliser: seeds for independent streams are hashes of what identifies them.
uint64_t mix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}
uint64_t seed_of(std::initializer_list<uint64_t> parts) {
  uint64_t h = 0x243f6a8885a308d3ull;
  for (uint64_t p : parts) h = mix64(h ^ p);
  return h;
}
uint64_t fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}
// Uniform in [0, 1) with 53 bits.
double u01(Rng& r) { return double(r.next_u64() >> 11) * (1.0 / 9007199254740992.0); }

// What distinguishes the Rngs derived from one seed.
enum Tag : uint64_t { kShuffleTag = 1, kFimTag = 2, kMixTag = 3 };

std::string hex64(uint64_t v) {
  char b[17];
  std::snprintf(b, sizeof b, "%016llx", static_cast<unsigned long long>(v));
  return b;
}
bool parse_hex64(const json& j, uint64_t* v) {
  if (!j.is_string() || j.get<std::string>().size() != 16) return false;
  const std::string s = j.get<std::string>();
  for (char ch : s)
    if (!std::isxdigit(static_cast<unsigned char>(ch))) return false;
  *v = std::strtoull(s.c_str(), nullptr, 16);
  return true;
}

// A stream position: everything that decides the domain's next rows.
struct StreamPos {
  uint64_t epoch = 0, cursor = 0;  // next document: the cursor-th of this rank in the epoch
  uint64_t window = 0;             // windows of that document already emitted (long documents)
  std::vector<int32_t> carry;      // packing buffer
};

// One piece of a laid-out document: a literal token (token >= 0) or `len` ids of the shard
// starting at shard position `begin`.
struct Piece {
  int32_t token;
  uint64_t begin, len;
};

// ---------------------------------------------------------------- one domain's rows

class DomainStream {
 public:
  DomainStream(const std::string& name, std::vector<Shard> shards, const LoaderConfig& c)
      : c_(c), shards_(std::move(shards)), name_hash_(fnv1a(name)) {
    for (const auto& s : shards_) first_doc_.push_back(n_docs_), n_docs_ += s.n_docs();
    rank_docs_ = n_docs_ / uint64_t(c.world) + (uint64_t(c.rank) < n_docs_ % uint64_t(c.world));
  }

  uint64_t n_docs() const { return n_docs_; }
  uint64_t rank_docs() const { return rank_docs_; }
  const std::vector<Shard>& shards() const { return shards_; }
  const StreamPos& pos() const { return pos_; }

  // Checks that p is a position this stream can be at, then moves there.
  void set_pos(StreamPos p, const std::string& where) {
    const uint64_t R = uint64_t(c_.seq_len) + 1;
    DSV3_CHECK(p.cursor < rank_docs_, where, ": document cursor ", p.cursor, " is past the ",
               rank_docs_, " documents this rank reads per epoch");
    DSV3_CHECK(p.carry.size() <= R, where, ": packing buffer of ", p.carry.size(),
               " tokens is longer than a row (", R, ")");
    for (int32_t t : p.carry) DSV3_CHECK(t >= 0, where, ": packing buffer holds the id ", t);
    if (p.window > 0) {
      const uint64_t n = layout(p.epoch, p.cursor);
      const uint64_t count = n > R ? window_starts(n, int(R), c_.window_overlap).size() : 0;
      DSV3_CHECK(p.window < count, where, ": window ", p.window, " of a document with ", count,
                 " windows: the data differs from the run that saved the state");
    }
    pos_ = std::move(p);
  }

  // Writes the domain's next row of T+1 tokens into out.
  void next_row(int32_t* out) {
    const uint64_t R = uint64_t(c_.seq_len) + 1, T = uint64_t(c_.seq_len);
    for (;;) {
      auto& carry = pos_.carry;
      if (carry.size() >= R) {
        std::copy(carry.begin(), carry.begin() + R, out);
        carry.erase(carry.begin(), carry.begin() + T);
        return;
      }
      const uint64_t n = layout(pos_.epoch, pos_.cursor);
      if (n > R) {
        const std::vector<uint64_t> starts = window_starts(n, int(R), c_.window_overlap);
        copy_slice(starts[pos_.window], R, out);
        if (++pos_.window == starts.size()) pos_.window = 0, advance();
        return;
      }
      const size_t at = carry.size();
      carry.resize(at + n);
      copy_slice(0, n, carry.data() + at);
      advance();
    }
  }

 private:
  void advance() {
    if (++pos_.cursor == rank_docs_) pos_.cursor = 0, pos_.epoch++;
  }

  // The global document index of this rank's cursor-th document in `epoch`.
  uint64_t doc_index(uint64_t epoch, uint64_t cursor) {
    const uint64_t p = uint64_t(c_.rank) + cursor * uint64_t(c_.world);
    if (!c_.shuffle) return p;
    if (perm_epoch_ != epoch || perm_.size() != n_docs_) {
      perm_.resize(n_docs_);
      for (uint64_t i = 0; i < n_docs_; i++) perm_[i] = uint32_t(i);
      Rng r(seed_of({c_.seed, name_hash_, epoch, kShuffleTag}));
      for (uint64_t i = n_docs_ - 1; i > 0; i--) std::swap(perm_[i], perm_[r.below(i + 1)]);
      perm_epoch_ = epoch;
    }
    return perm_[p];
  }

  // Lays out this rank's cursor-th document of `epoch` (FIM, EOS) into lay_; returns its length.
  uint64_t layout(uint64_t epoch, uint64_t cursor) {
    if (lay_valid_ && lay_epoch_ == epoch && lay_cursor_ == cursor) return lay_size_;
    const uint64_t g = doc_index(epoch, cursor);
    const size_t si = size_t(std::upper_bound(first_doc_.begin(), first_doc_.end(), g) -
                             first_doc_.begin()) - 1;
    lay_shard_ = si;
    const Shard& s = shards_[si];
    const uint64_t begin = s.doc_begin(g - first_doc_[si]), L = s.doc_size(g - first_doc_[si]);
    lay_.clear();
    auto src = [&](uint64_t from, uint64_t len) {
      if (len > 0) lay_.push_back({-1, begin + from, len});
    };
    // The FIM draw depends only on (seed, domain, epoch, document): not on rank or world.
    Rng r(seed_of({c_.seed, name_hash_, epoch, g, kFimTag}));
    if (u01(r) < c_.fim_rate) {
      uint64_t a = r.below(L + 1), b = r.below(L + 1);
      if (a > b) std::swap(a, b);
      if (c_.fim_order == FimOrder::PSM) {
        lay_.push_back({c_.fim_prefix, 0, 1}), src(0, a);
        lay_.push_back({c_.fim_suffix, 0, 1}), src(b, L - b);
      } else {
        lay_.push_back({c_.fim_suffix, 0, 1}), src(b, L - b);
        lay_.push_back({c_.fim_prefix, 0, 1}), src(0, a);
      }
      lay_.push_back({c_.fim_middle, 0, 1}), src(a, b - a);
    } else {
      src(0, L);
    }
    lay_.push_back({c_.eos, 0, 1});
    lay_size_ = 0;
    for (const auto& p : lay_) lay_size_ += p.len;
    lay_epoch_ = epoch, lay_cursor_ = cursor, lay_valid_ = true;
    return lay_size_;
  }

  // Tokens [from, from + n) of the current layout.
  void copy_slice(uint64_t from, uint64_t n, int32_t* out) const {
    for (const auto& p : lay_) {
      if (n == 0) break;
      if (from >= p.len) {
        from -= p.len;
        continue;
      }
      const uint64_t k = std::min(n, p.len - from);
      if (p.token >= 0)
        *out = p.token;
      else
        shards_[lay_shard_].read_tokens(p.begin + from, k, out);
      out += k, n -= k, from = 0;
    }
  }

  const LoaderConfig& c_;
  std::vector<Shard> shards_;
  std::vector<uint64_t> first_doc_;  // global index of each shard's first document
  uint64_t n_docs_ = 0, rank_docs_ = 0, name_hash_ = 0;
  StreamPos pos_;
  std::vector<uint32_t> perm_;
  uint64_t perm_epoch_ = 0;
  std::vector<Piece> lay_;
  bool lay_valid_ = false;
  uint64_t lay_epoch_ = 0, lay_cursor_ = 0, lay_size_ = 0;
  size_t lay_shard_ = 0;
};

void validate(const LoaderConfig& c) {
  DSV3_CHECK(c.batch >= 1, "loader: batch ", c.batch, " must be at least 1");
  DSV3_CHECK(c.seq_len >= 1, "loader: seq_len ", c.seq_len, " must be at least 1");
  DSV3_CHECK(c.window_overlap >= 0 && c.window_overlap <= c.seq_len, "loader: window overlap ",
             c.window_overlap, " must be in [0, seq_len = ", c.seq_len, "]");
  DSV3_CHECK(c.eos >= 0, "loader: the EOS id is required (documents are separated by it); got ",
             c.eos);
  DSV3_CHECK(std::isfinite(c.fim_rate) && c.fim_rate >= 0 && c.fim_rate <= 1, "loader: FIM rate ",
             c.fim_rate, " must be in [0, 1]");
  if (c.fim_rate > 0) {
    DSV3_CHECK(c.fim_prefix >= 0 && c.fim_middle >= 0 && c.fim_suffix >= 0,
               "loader: FIM rate ", c.fim_rate, " needs the fim_prefix, fim_middle and "
               "fim_suffix ids (got ", c.fim_prefix, ", ", c.fim_middle, ", ", c.fim_suffix,
               "): use a tokenizer with FIM special tokens or set the FIM rate to 0");
    const std::set<int32_t> ids = {c.eos, c.fim_prefix, c.fim_middle, c.fim_suffix};
    DSV3_CHECK(ids.size() == 4, "loader: eos (", c.eos, "), fim_prefix (", c.fim_prefix,
               "), fim_middle (", c.fim_middle, ") and fim_suffix (", c.fim_suffix,
               ") must be four different ids");
  }
  DSV3_CHECK(c.world >= 1 && c.rank >= 0 && c.rank < c.world, "loader: rank ", c.rank,
             " is not in [0, world = ", c.world, ")");
}

// The settings that fix the data order; restore() insists they match.
json order_settings(const LoaderConfig& c) {
  return {{"seed", hex64(c.seed)},         {"seq_len", c.seq_len},
          {"fim_rate", c.fim_rate},        {"fim_order", fim_order_name(c.fim_order)},
          {"window_overlap", c.window_overlap}, {"eos", c.eos},
          {"fim_prefix", c.fim_prefix},    {"fim_middle", c.fim_middle},
          {"fim_suffix", c.fim_suffix},    {"rank", c.rank},
          {"world", c.world},              {"shuffle", c.shuffle}};
}

}  // namespace

// ---------------------------------------------------------------- free functions

const char* fim_order_name(FimOrder o) { return o == FimOrder::PSM ? "psm" : "spm"; }

FimOrder parse_fim_order(const std::string& s) {
  std::string l = s;
  for (auto& ch : l) ch = char(std::tolower(static_cast<unsigned char>(ch)));
  if (l == "psm") return FimOrder::PSM;
  if (l == "spm") return FimOrder::SPM;
  fail("unknown FIM order '", s, "' (expected psm or spm)");
}

std::vector<uint64_t> window_starts(uint64_t n, int row, int overlap) {
  DSV3_CHECK(row >= 1 && overlap >= 0 && overlap < row, "window_starts: overlap ", overlap,
             " must be in [0, row ", row, ")");
  const uint64_t R = uint64_t(row), stride = R - uint64_t(overlap);
  if (n <= R) return {0};
  std::vector<uint64_t> s;
  for (uint64_t p = 0; p + R < n; p += stride) s.push_back(p);
  s.push_back(n - R);
  return s;
}

std::vector<int32_t> fim_layout(std::span<const int32_t> doc, size_t a, size_t b,
                                const LoaderConfig& c) {
  DSV3_CHECK(a <= b && b <= doc.size(), "fim_layout: split points ", a, ", ", b,
             " must satisfy 0 <= a <= b <= ", doc.size());
  std::vector<int32_t> out;
  auto put = [&](size_t from, size_t to) { out.insert(out.end(), doc.begin() + from, doc.begin() + to); };
  if (c.fim_order == FimOrder::PSM) {
    out.push_back(c.fim_prefix), put(0, a);
    out.push_back(c.fim_suffix), put(b, doc.size());
  } else {
    out.push_back(c.fim_suffix), put(b, doc.size());
    out.push_back(c.fim_prefix), put(0, a);
  }
  out.push_back(c.fim_middle), put(a, b);
  return out;
}

// ---------------------------------------------------------------- loader

struct Loader::Impl {
  struct Row {
    std::vector<int32_t> tokens;
    StreamPos pos;  // the stream's position after this row
  };

  LoaderConfig c;
  std::vector<DomainInfo> info;
  std::vector<std::unique_ptr<DomainStream>> streams;
  std::unique_ptr<Mixture> mix;
  std::vector<double> weights;  // mix->weights(), cached
  Rng mix_rng;
  std::vector<StreamPos> consumed;  // per domain: after the last row handed out
  std::vector<uint64_t> rows;
  uint64_t batches = 0;
  std::vector<int32_t> batch;

  // Prefetch: the thread keeps each domain's queue filled to caps[d] rows. Only the thread
  // touches `streams` while it runs; everything below is guarded by mu.
  std::mutex mu;
  std::condition_variable cv_fill, cv_take;
  std::vector<std::deque<Row>> queues;
  std::vector<size_t> caps;
  int wanted = -1;  // the domain next() is waiting for
  bool stop = false;
  std::exception_ptr error;
  std::thread thread;

  size_t R() const { return size_t(c.seq_len) + 1; }

  void update_weights() {
    weights = mix->weights();
    std::lock_guard<std::mutex> lk(mu);
    caps.resize(weights.size());
    // About 1.5 batches of each domain's expected rows, at least 2.
    for (size_t d = 0; d < weights.size(); d++)
      caps[d] = 2 + size_t(std::ceil(1.5 * c.batch * weights[d]));
    cv_fill.notify_all();
  }

  void fill_loop() {
    size_t rr = 0;
    std::unique_lock<std::mutex> lk(mu);
    for (;;) {
      int d = -1;
      cv_fill.wait(lk, [&] {
        if (stop) return true;
        if (wanted >= 0 && queues[size_t(wanted)].size() < caps[size_t(wanted)]) {
          d = wanted;
          return true;
        }
        for (size_t k = 0; k < queues.size(); k++) {
          const size_t i = (rr + k) % queues.size();
          if (queues[i].size() < caps[i]) {
            d = int(i), rr = i + 1;
            return true;
          }
        }
        return false;
      });
      if (stop) return;
      lk.unlock();
      Row row;
      try {
        row.tokens.resize(R());
        streams[size_t(d)]->next_row(row.tokens.data());
        row.pos = streams[size_t(d)]->pos();
      } catch (...) {
        lk.lock();
        error = std::current_exception();
        cv_take.notify_all();
        return;
      }
      lk.lock();
      queues[size_t(d)].push_back(std::move(row));
      cv_take.notify_all();
    }
  }

  void start() {
    if (!c.prefetch) return;
    stop = false, error = nullptr, wanted = -1;
    for (auto& q : queues) q.clear();
    thread = std::thread([this] { fill_loop(); });
  }

  void halt() {
    if (!thread.joinable()) return;
    {
      std::lock_guard<std::mutex> lk(mu);
      stop = true;
    }
    cv_fill.notify_all();
    thread.join();
  }

  // The next row of domain d into out.
  void take(size_t d, int32_t* out) {
    if (!c.prefetch) {
      streams[d]->next_row(out);
      consumed[d] = streams[d]->pos();
      return;
    }
    std::unique_lock<std::mutex> lk(mu);
    if (queues[d].empty()) {
      wanted = int(d);
      cv_fill.notify_all();
      cv_take.wait(lk, [&] { return !queues[d].empty() || error; });
      wanted = -1;
      if (queues[d].empty()) std::rethrow_exception(error);
    }
    Row row = std::move(queues[d].front());
    queues[d].pop_front();
    cv_fill.notify_all();
    lk.unlock();
    std::copy(row.tokens.begin(), row.tokens.end(), out);
    consumed[d] = std::move(row.pos);
  }

  size_t pick_domain() {
    const double u = u01(mix_rng);
    double cum = 0;
    size_t last = 0;
    for (size_t d = 0; d < weights.size(); d++) {
      if (weights[d] <= 0) continue;
      cum += weights[d], last = d;
      if (u < cum) return d;
    }
    return last;  // u within rounding of 1
  }
};

Loader::Loader(std::vector<DomainSpec> domains, LoaderConfig c, MixtureConfig mc)
    : p_(std::make_unique<Impl>()) {
  Impl& p = *p_;
  validate(c);
  p.c = c;
  DSV3_CHECK(!domains.empty(), "loader: no data domains");
  std::set<std::string> names;
  std::vector<std::string> name_list;
  std::vector<std::pair<size_t, std::string>> files;  // (domain, path)
  for (size_t d = 0; d < domains.size(); d++) {
    const DomainSpec& dom = domains[d];
    DSV3_CHECK(!dom.name.empty(), "loader: a domain has an empty name");
    DSV3_CHECK(dom.name.find_first_of(":,") == std::string::npos, "loader: domain name '",
               dom.name, "' contains ':' or ','");
    DSV3_CHECK(names.insert(dom.name).second, "loader: domain '", dom.name, "' is listed twice");
    DSV3_CHECK(!dom.shards.empty(), "loader: domain '", dom.name, "' has no shard files");
    name_list.push_back(dom.name);
    for (const auto& path : dom.shards) files.emplace_back(d, path);
  }

  // Opening verifies every payload CRC, i.e. reads all the data once: in parallel over files.
  // Errors are reported for the first bad file in the given order.
  std::vector<std::optional<Shard>> opened(files.size());
  std::vector<std::exception_ptr> errors(files.size());
  ShardOpenOptions opt;
  opt.llmc_eos = c.eos;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < files.size(); i++) {
    try {
      opened[i].emplace(Shard::open(files[i].second, opt));
    } catch (...) {
      errors[i] = std::current_exception();
    }
  }
  for (const auto& e : errors)
    if (e) std::rethrow_exception(e);

  size_t next_file = 0;
  for (const DomainSpec& dom : domains) {
    DomainInfo di;
    di.name = dom.name, di.shards = dom.shards;
    std::vector<Shard> shards;
    for (const auto& path : dom.shards) {
      Shard s = std::move(*opened[next_file++]);
      const ShardInfo& si = s.info();
      DSV3_CHECK(si.eos < 0 || si.eos == c.eos, path, ": the shard was written with EOS id ",
                 si.eos, " but the loader uses ", c.eos, " (a different tokenizer?)");
      if (!s.is_llmc()) {
        DSV3_CHECK(c.eos < si.vocab_size, path, ": the EOS id ", c.eos,
                   " is outside the shard's vocabulary of ", si.vocab_size);
        if (c.fim_rate > 0)
          DSV3_CHECK(std::max({c.fim_prefix, c.fim_middle, c.fim_suffix}) < si.vocab_size, path,
                     ": a FIM id (", c.fim_prefix, ", ", c.fim_middle, ", ", c.fim_suffix,
                     ") is outside the shard's vocabulary of ", si.vocab_size);
      }
      di.docs += s.n_docs();
      for (uint64_t i = 0; i < s.n_docs(); i++) di.tokens += s.doc_size(i) + 1;
      di.text_bytes += si.n_text_bytes;
      shards.push_back(std::move(s));
    }
    DSV3_CHECK(di.docs > 0, "loader: domain '", dom.name, "' has no documents");
    DSV3_CHECK(di.docs < (uint64_t(1) << 32), "loader: domain '", dom.name, "' has ", di.docs,
               " documents; at most 2^32 - 1 are supported (split the domain)");
    DSV3_CHECK(di.docs >= uint64_t(c.world), "loader: domain '", dom.name, "' has ", di.docs,
               " documents, fewer than the ", c.world, " ranks: every rank needs at least one");
    p.streams.push_back(std::make_unique<DomainStream>(dom.name, std::move(shards), p.c));
    di.rank_docs = p.streams.back()->rank_docs();
    p.info.push_back(std::move(di));
  }
  if (mc.start_weights.empty())
    for (const auto& di : p.info) mc.start_weights.push_back(double(di.tokens));
  p.mix = std::make_unique<Mixture>(name_list, mc);
  p.mix_rng = Rng(seed_of({c.seed, uint64_t(c.rank), kMixTag}));
  const size_t D = p.info.size();
  p.consumed.assign(D, StreamPos{});
  p.rows.assign(D, 0);
  p.queues.resize(D);
  p.batch.resize(size_t(c.batch) * p.R());
  p.update_weights();
  p.start();
}

Loader::~Loader() { p_->halt(); }

const int32_t* Loader::next() {
  Impl& p = *p_;
  for (int b = 0; b < p.c.batch; b++) {
    const size_t d = p.pick_domain();
    p.take(d, p.batch.data() + size_t(b) * p.R());
    p.rows[d]++;
  }
  p.batches++;
  return p.batch.data();
}

void Loader::set_step(int64_t step, int64_t total_steps) {
  p_->mix->set_step(step, total_steps);
  p_->update_weights();
}

std::vector<size_t> Loader::observe_validation(const std::vector<double>& loss) {
  std::vector<size_t> raised = p_->mix->observe_validation(loss);
  p_->update_weights();
  return raised;
}

std::vector<double> Loader::weights() const { return p_->weights; }
const Mixture& Loader::mixture() const { return *p_->mix; }
const LoaderConfig& Loader::config() const { return p_->c; }
const std::vector<DomainInfo>& Loader::domains() const { return p_->info; }
const std::vector<uint64_t>& Loader::rows_per_domain() const { return p_->rows; }
uint64_t Loader::batches() const { return p_->batches; }

json Loader::state() const {
  const Impl& p = *p_;
  json doms = json::array();
  for (size_t d = 0; d < p.info.size(); d++) {
    const StreamPos& s = p.consumed[d];
    doms.push_back({{"name", p.info[d].name}, {"docs", p.info[d].docs},
                    {"tokens", p.info[d].tokens}, {"epoch", s.epoch}, {"cursor", s.cursor},
                    {"window", s.window}, {"carry", s.carry}, {"rows", p.rows[d]}});
  }
  json rng = json::array();
  for (uint64_t w : p.mix_rng.s) rng.push_back(hex64(w));
  return {{"format", "dsv3 loader state"}, {"version", 1},
          {"settings", order_settings(p.c)}, {"domains", doms},
          {"mix_rng", rng},                  {"mixture", p.mix->state()},
          {"batches", p.batches}};
}

void Loader::restore(const json& j) {
  Impl& p = *p_;
  const char* where = "loader state";
  DSV3_CHECK(j.is_object() && j.contains("format") && j["format"] == "dsv3 loader state", where,
             ": not a dsv3 loader state (no \"format\": \"dsv3 loader state\")");
  DSV3_CHECK(j.contains("version") && j["version"] == 1, where, ": unsupported version ",
             j.contains("version") ? j["version"].dump() : "(none)");
  for (const char* k : {"settings", "domains", "mix_rng", "mixture", "batches"})
    DSV3_CHECK(j.contains(k), where, " has no '", k, "'");

  // The settings that fix the data order must be this run's.
  const json mine = order_settings(p.c);
  const json& theirs = j["settings"];
  DSV3_CHECK(theirs.is_object(), where, ": 'settings' is not an object");
  for (auto it = mine.begin(); it != mine.end(); ++it) {
    const json got = theirs.contains(it.key()) ? theirs[it.key()] : json();
    DSV3_CHECK(got == it.value(), where, " was saved with ", it.key(), " = ", got.dump(),
               ", this run has ", it.value().dump(),
               ": the data position cannot be resumed exactly");
  }

  const json& doms = j["domains"];
  const size_t D = p.info.size();
  DSV3_CHECK(doms.is_array() && doms.size() == D, where, " has ",
             doms.is_array() ? doms.size() : 0, " domains, this run has ", D);
  std::vector<StreamPos> pos(D);
  std::vector<uint64_t> rows(D);
  for (size_t d = 0; d < D; d++) {
    const json& e = doms[d];
    const std::string dw = std::string(where) + ": domain '" + p.info[d].name + "'";
    const bool named = e.is_object() && e.contains("name") && e["name"].is_string();
    DSV3_CHECK(named && e["name"] == p.info[d].name, where, ": domain ", d, " is ",
               named ? e["name"].get<std::string>() : "?", ", this run has '",
               p.info[d].name, "'");
    try {
      DSV3_CHECK(e.at("docs").get<uint64_t>() == p.info[d].docs &&
                     e.at("tokens").get<uint64_t>() == p.info[d].tokens,
                 dw, " was saved over ", e.at("docs").get<uint64_t>(), " documents and ",
                 e.at("tokens").get<uint64_t>(), " tokens, its shards now hold ", p.info[d].docs,
                 " and ", p.info[d].tokens, ": the data changed");
      pos[d].epoch = e.at("epoch").get<uint64_t>();
      pos[d].cursor = e.at("cursor").get<uint64_t>();
      pos[d].window = e.at("window").get<uint64_t>();
      pos[d].carry = e.at("carry").get<std::vector<int32_t>>();
      rows[d] = e.at("rows").get<uint64_t>();
    } catch (const json::exception& ex) {
      fail(dw, " is malformed: ", ex.what());
    }
  }
  Rng rng;
  DSV3_CHECK(j["mix_rng"].is_array() && j["mix_rng"].size() == 4, where,
             ": 'mix_rng' must be 4 hex words");
  for (size_t i = 0; i < 4; i++)
    DSV3_CHECK(parse_hex64(j["mix_rng"][i], &rng.s[i]), where, ": 'mix_rng' must be 4 hex words");
  DSV3_CHECK(j["batches"].is_number_unsigned(), where, ": 'batches' is not a count");

  // Stop the prefetch thread (it owns the streams while it runs), move, restart.
  p.halt();
  try {
    Mixture mix = *p.mix;
    mix.restore(j["mixture"]);
    for (size_t d = 0; d < D; d++)
      p.streams[d]->set_pos(pos[d], std::string(where) + ": domain '" + p.info[d].name + "'");
    *p.mix = std::move(mix);
  } catch (...) {
    for (size_t d = 0; d < D; d++)  // back to where the consumer is
      p.streams[d]->set_pos(p.consumed[d], "loader");
    p.start();
    throw;
  }
  p.consumed = std::move(pos);
  p.rows = std::move(rows);
  p.batches = j["batches"].get<uint64_t>();
  p.mix_rng = rng;
  p.update_weights();
  p.start();
}

json Loader::log_record() const {
  json r = p_->mix->log_record();
  json rows = json::object(), epochs = json::object();
  for (size_t d = 0; d < p_->info.size(); d++) {
    rows[p_->info[d].name] = p_->rows[d];
    epochs[p_->info[d].name] = p_->consumed[d].epoch;
  }
  r["rows"] = rows, r["epochs"] = epochs;
  return r;
}

}  // namespace dsv3
