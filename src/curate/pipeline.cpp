#include "curate/pipeline.h"

#include <omp.h>
#include <signal.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <limits>
#include <set>

#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "curate/classifier.h"
#include "curate/kmeans.h"
#include "curate/manifest.h"
#include "curate/summary.h"
#include "curate/text.h"
#include "curate/tfidf.h"
#include "dist/comm.h"

namespace dsv3::curate {

namespace {

namespace fs = std::filesystem;
using ojson = nlohmann::ordered_json;

constexpr size_t kBatchDocs = 1024;          // documents read before a parallel batch runs
constexpr size_t kBatchBytes = 32u << 20;    // ... or this many bytes, whichever comes first

struct Dirs {
  std::string out, data, rejects, work;
  explicit Dirs(const std::string& o)
      : out(o), data(o + "/data"), rejects(o + "/rejects"), work(o + "/work") {}
  std::string keys(size_t p) const { return work + "/" + part_name(p) + ".keys"; }
  std::string spool(size_t p) const { return work + "/" + part_name(p) + ".spool.jsonl.zst"; }
  std::string work_rejects(size_t p, Compression c) const {
    return work + "/" + part_name(p) + ".rejects.jsonl" + compression_suffix(c);
  }
  std::string data_file(size_t p, Compression c) const {
    return data + "/" + part_name(p) + ".jsonl" + compression_suffix(c);
  }
  std::string rejects_file(size_t p, Compression c) const {
    return rejects + "/" + part_name(p) + ".jsonl" + compression_suffix(c);
  }
};

// Everything the per-document stages need, built once per run.
struct Context {
  const CurateConfig& cfg;
  Dirs dirs;
  std::vector<Stage> stages, local;
  bool exact = false, minhash = false, tfidf = false, diversity = false, df = false;
  std::unique_ptr<PiiScrubber> pii;
  std::unique_ptr<ClassifierModel> classifier;
  int classifier_label = -1;
  PerplexityModel perplexity;
  std::unique_ptr<MinHasher> minhasher;
  nlohmann::json fingerprint;
  size_t keep = 5;
  explicit Context(const CurateConfig& c) : cfg(c), dirs(c.output) {}
};

// What processing one document produced, kept until the batch is written in order.
struct DocOut {
  bool kept = false;
  std::string line;  // JSONL: the spool (kept) or the rejects
  std::string id;
  uint64_t text_bytes = 0;
  Hash128 exact;
  std::vector<uint16_t> sig;
  std::string bad;    // first bad-input problem, for strict mode
  std::string error;  // an exception thrown while processing
};

struct ThreadAcc {
  RunStats stats;
  std::vector<uint32_t> df;  // per-bucket document counts (when collected)
  SparseVec tf;
};

// CPU time of the calling thread: stage costs are core-seconds, and on a shared machine wall
// time would also count the time other processes held the core.
double thread_cpu_seconds() {
  timespec ts{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return double(ts.tv_sec) + 1e-9 * double(ts.tv_nsec);
}

double process_cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return double(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * double(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

// Per-stage accounting around one call.
struct StageTimer {
  StageStats& s;
  double t0;
  StageTimer(StageStats& st, size_t bytes) : s(st), t0(thread_cpu_seconds()) {
    s.docs_in++;
    s.bytes_in += int64_t(bytes);
  }
  void done(bool kept, size_t bytes_out) {
    s.seconds += thread_cpu_seconds() - t0;
    if (kept) {
      s.docs_out++;
      s.bytes_out += int64_t(bytes_out);
    }
  }
};

std::string fmt_double(const char* f, double x) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, x);
  return buf;
}

void process_doc(const Context& ctx, RawRecord& raw, InputFormat format, const std::string& path,
                 size_t part, uint64_t index, DocOut& o, ThreadAcc& acc) {
  const CurateConfig& cfg = ctx.cfg;
  o = DocOut{};
  Document doc;
  doc.part = uint32_t(part);
  doc.index = index;
  const uint64_t order = doc_order(uint32_t(part), index);
  StageStats& rs = acc.stats.stages["read"];
  StageTimer read_t(rs, raw.bytes);
  std::string detail;
  const uint32_t problems = parse_record(raw, format, cfg.reader, path, doc, detail);
  o.id = doc.id;
  if (problems) {
    bool first = true;
    for (unsigned k = 1; k < unsigned(BadInput::Count_); k++)
      if (problems & bad_input_bit(BadInput(k))) {
        acc.stats.add_bad({order, path, raw.line, bad_input_name(BadInput(k)), first ? detail : ""});
        if (first) o.bad = std::string(bad_input_name(BadInput(k))) + (detail.empty() ? "" : " (" + detail + ")");
        first = false;
      }
  }
  const uint32_t repairable =
      bad_input_bit(BadInput::InvalidUtf8) | bad_input_bit(BadInput::NulBytes);
  if (problems & ~repairable) {
    BadInput kind = BadInput::None;
    for (unsigned k = 1; k < unsigned(BadInput::Count_) && kind == BadInput::None; k++)
      if ((problems & ~repairable) & bad_input_bit(BadInput(k))) kind = BadInput(k);
    rs.rules[bad_input_name(kind)].add(order, doc.id, ctx.keep);
    o.line = rejected_record(doc, path, "read", bad_input_name(kind), detail,
                             format == InputFormat::Jsonl ? std::string_view(raw.data)
                                                          : std::string_view());
    read_t.done(false, 0);
    return;
  }
  read_t.done(true, doc.text.size());

  for (Stage st : ctx.local) {
    StageStats& ss = acc.stats.stages[stage_name(st)];
    StageTimer t(ss, doc.text.size());
    const char* rule = nullptr;
    std::string why;
    switch (st) {
      case Stage::Normalize:
        normalize_text(doc.text, cfg.normalize);
        if (doc.text.empty()) rule = "empty";
        break;
      case Stage::GopherQuality:
        rule = gopher_quality(doc.text, cfg.gopher);
        break;
      case Stage::GopherRepetition:
        rule = gopher_repetition(doc.text, cfg.repetition);
        break;
      case Stage::C4:
        rule = c4_filter(doc.text, cfg.c4, &doc.c4_lines_removed);
        if (!rule && doc.text.empty()) rule = "empty";
        break;
      case Stage::FineWeb:
        rule = fineweb_filter(doc.text, cfg.fineweb);
        break;
      case Stage::Classifier: {
        thread_local std::vector<float> p;
        classifier_predict(*ctx.classifier, doc.text, p);
        doc.classifier = p[size_t(ctx.classifier_label)];
        if (doc.classifier < cfg.classifier_threshold) {
          rule = "below_threshold";
          why = "P(" + cfg.classifier_label + ") = " + fmt_double("%.4f", doc.classifier) +
                " < " + fmt_double("%g", cfg.classifier_threshold);
        }
        break;
      }
      case Stage::Perplexity: {
        doc.perplexity = ctx.perplexity.score(doc.text);
        const double ppl = doc.perplexity;
        if (!std::isnan(ppl) && cfg.perplexity.max > 0 && ppl > cfg.perplexity.max) {
          rule = "above_max";
          why = "perplexity " + fmt_double("%.2f", ppl) + " > " + fmt_double("%g", cfg.perplexity.max);
        } else if (!std::isnan(ppl) && cfg.perplexity.min > 0 && ppl < cfg.perplexity.min) {
          rule = "below_min";
          why = "perplexity " + fmt_double("%.2f", ppl) + " < " + fmt_double("%g", cfg.perplexity.min);
        }
        break;
      }
      case Stage::Pii: {
        ctx.pii->scrub(doc.text, doc.pii);
        for (size_t k = 0; k < kPiiTypes; k++) acc.stats.pii[k] += doc.pii[k];
        break;
      }
      default:
        break;
    }
    t.done(rule == nullptr, doc.text.size());
    if (rule) {
      ss.rules[rule].add(order, doc.id, ctx.keep);
      o.line = rejected_record(doc, path, stage_name(st), rule, why);
      return;
    }
  }

  // Kept: the keys the global stages need, then the record itself.
  if (ctx.exact) {
    StageTimer t(acc.stats.stages["exact_hash"], doc.text.size());
    o.exact = exact_hash(doc.text);
    t.done(true, doc.text.size());
  }
  if (ctx.minhash) {
    StageTimer t(acc.stats.stages["minhash_signature"], doc.text.size());
    o.sig.resize(size_t(cfg.minhash.num_perm));
    ctx.minhasher->signature(doc.text, o.sig.data());
    t.done(true, doc.text.size());
  }
  if (ctx.df) {
    StageTimer t(acc.stats.stages["tfidf_terms"], doc.text.size());
    term_counts(doc.text, cfg.tfidf_log2_features, acc.tf);
    for (const auto& e : acc.tf) acc.df[e.first]++;
    t.done(true, doc.text.size());
  }
  StageTimer t(acc.stats.stages["serialize"], doc.text.size());
  o.line = curated_record(doc, path);
  o.text_bytes = doc.text.size();
  o.kept = true;
  t.done(true, o.line.size());
}

// Reads one input file of a part in batches; documents run through the stages in parallel and
// are written in input order.
void process_file(const Context& ctx, const InputFile& in, size_t part, uint64_t& next_index,
                  std::vector<ThreadAcc>& acc, KeysWriter& keys, StreamWriter& spool,
                  StreamWriter& rejects, RunStats& totals) {
  const CurateConfig& cfg = ctx.cfg;
  std::unique_ptr<RecordReader> reader;
  std::string read_error;
  try {
    reader = std::make_unique<RecordReader>(in.path, cfg.reader);
  } catch (const Error& e) {
    read_error = e.what();
  }
  std::vector<RawRecord> raws(kBatchDocs);
  std::vector<DocOut> outs(kBatchDocs);
  bool eof = !reader;
  while (!eof) {
    size_t n = 0, bytes = 0;
    try {
      while (n < kBatchDocs && bytes < kBatchBytes) {
        if (!reader->next(raws[n])) {
          eof = true;
          break;
        }
        bytes += raws[n].data.size();
        n++;
      }
    } catch (const Error& e) {
      read_error = e.what();
      eof = true;
    }
    if (n == 0) break;
    const InputFormat format = reader->format();
#pragma omp parallel for schedule(dynamic, 4)
    for (size_t i = 0; i < n; i++) {
      ThreadAcc& a = acc[size_t(omp_get_thread_num())];
      try {
        process_doc(ctx, raws[i], format, in.path, part, next_index + i, outs[i], a);
      } catch (const std::exception& e) {
        outs[i].error = e.what();
      }
    }
    for (size_t i = 0; i < n; i++) {
      DocOut& o = outs[i];
      DSV3_CHECK(o.error.empty(), in.path, ":", raws[i].line, ": ", o.error);
      DSV3_CHECK(!cfg.strict || o.bad.empty(), in.path, ":", raws[i].line, ": ", o.bad,
                 " (bad input is fatal with --strict; drop it to count and skip instead)");
      totals.docs_read++;
      totals.bytes_read += int64_t(raws[i].bytes);
      if (o.kept) {
        spool.write(o.line);
        keys.add(next_index + i, o.text_bytes, o.exact, o.sig.data(), o.id);
      } else {
        rejects.write(o.line);
        totals.docs_rejected++;
      }
    }
    next_index += n;
  }
  if (!read_error.empty()) {
    const uint64_t line = reader ? reader->lines_read() + 1 : 0;
    DSV3_CHECK(!cfg.strict, read_error, " (line ", line, "; bad input is fatal with --strict)");
    DSV3_CHECK(cfg.skip_unreadable, read_error, " (at line ", line, "; ", next_index,
               " records of this part read before it): the input cannot be read. Repair or "
               "remove it, or pass --skip_unreadable to count unreadable inputs and go on");
    const uint64_t order = doc_order(uint32_t(part), next_index);
    acc[0].stats.add_bad({order, in.path, line, "read_error", read_error});
    acc[0].stats.stages["read"].rules["read_error"].add(order, in.path + ":" + std::to_string(line),
                                                        ctx.keep);
  }
}

RunStats process_part(const Context& ctx, const Part& part) {
  const CurateConfig& cfg = ctx.cfg;
  const size_t T = size_t(std::max(1, omp_get_max_threads()));
  std::vector<ThreadAcc> acc(T);
  if (ctx.df)
    for (auto& a : acc) a.df.assign(size_t(1) << cfg.tfidf_log2_features, 0);
  RunStats totals;
  uint64_t next_index = 0;
  const uint32_t flags = (ctx.exact ? uint32_t(kKeyExact) : 0u) |
                         (ctx.minhash ? uint32_t(kKeyMinhash) : 0u) |
                         (ctx.df ? uint32_t(kKeyDf) : 0u);
  // Nested atomic writes: rejects, then the spool, then the keys file are renamed into place,
  // so a keys file on disk always has its spool and rejects complete beside it.
  write_file_atomic(ctx.dirs.keys(part.index), [&](std::FILE* kf) {
    KeysWriter keys(kf, ctx.minhash ? cfg.minhash.num_perm : 0, flags);
    write_file_atomic(ctx.dirs.spool(part.index), [&](std::FILE* sf) {
      StreamWriter spool(sf, Compression::Zstd, 1);  // work file: fastest level
      write_file_atomic(ctx.dirs.work_rejects(part.index, cfg.compression), [&](std::FILE* rf) {
        StreamWriter rejects(rf, cfg.compression, cfg.compression_level);
        for (const InputFile& in : part.files)
          process_file(ctx, in, part.index, next_index, acc, keys, spool, rejects, totals);
        rejects.finish();
      });
      spool.finish();
    });
    for (auto& a : acc) totals.merge(a.stats, ctx.keep);
    std::vector<std::pair<uint32_t, uint32_t>> df;
    if (ctx.df) {
      for (size_t b = 0; b < acc[0].df.size(); b++) {
        uint64_t s = 0;
        for (auto& a : acc) s += a.df[b];
        if (s) df.emplace_back(uint32_t(b), uint32_t(s));
      }
    }
    keys.finish(df, {{"fingerprint", ctx.fingerprint},
                     {"files", part_files_json(part)},
                     {"part", part.index},
                     {"stats", to_json(totals)}});
  });
  return totals;
}

// Whether an earlier run finished this part with the same settings and inputs.
bool part_is_done(const Context& ctx, const Part& part) {
  const Dirs& d = ctx.dirs;
  std::error_code ec;
  if (!fs::exists(d.keys(part.index), ec) || !fs::exists(d.spool(part.index), ec) ||
      !fs::exists(d.work_rejects(part.index, ctx.cfg.compression), ec))
    return false;
  try {
    const nlohmann::json t = read_keys_trailer(d.keys(part.index));
    return t.at("fingerprint") == ctx.fingerprint && t.at("files") == part_files_json(part) &&
           t.at("part") == part.index;
  } catch (const std::exception&) {
    return false;  // unreadable: redo it
  }
}

// Every rank contributes its error (or ""); all throw the first one, so no rank is left
// waiting in a collective while another has failed.
void agree(const std::string& mine) {
  const auto all = dist::world().all_gather_bytes(mine);
  for (size_t r = 0; r < all.size(); r++)
    if (!all[r].empty()) {
      if (all.size() > 1) fail("rank ", r, ": ", all[r]);
      fail(all[r]);
    }
}

template <typename F>
void collective(F&& f) {
  std::string err;
  try {
    f();
  } catch (const std::exception& e) {
    err = e.what();
    if (err.empty()) err = "unknown error";
  }
  agree(err);
}

// Removes temp files of atomic writes whose process is gone (a killed run leaves them).
void remove_stale_temps(const std::vector<std::string>& dirs) {
  for (const auto& dir : dirs) {
    std::error_code ec;
    if (!fs::is_directory(dir, ec)) continue;
    for (const auto& e : fs::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      const size_t at = name.rfind(".tmp.");
      if (at == std::string::npos) continue;
      const long pid = std::strtol(name.c_str() + at + 5, nullptr, 10);
      if (pid > 0 && ::kill(pid_t(pid), 0) == 0) continue;  // still being written
      fs::remove(e.path(), ec);
    }
  }
}

// The documents every rank knows about after phase B, in global order.
enum DropReason : uint8_t { kKeep = 0, kExactDup, kNearDup, kLowTfidf, kNotSelected };

struct Global {
  size_t n = 0;
  std::vector<size_t> part_begin;  // first document of each part (size parts + 1)
  std::vector<uint32_t> part;
  std::vector<uint64_t> index, text_bytes;
  std::vector<std::string> id;
  std::vector<Hash128> exact;
  std::vector<uint16_t> sigs;
  std::vector<uint8_t> drop;
  std::vector<uint32_t> dup_of;
  std::vector<float> tfidf;   // NaN where not computed (only the owner's documents)
  std::vector<uint64_t> df;   // summed document frequencies
};

std::vector<std::string> split_csv(const std::string& s) {
  std::vector<std::string> out;
  size_t pos = 0;
  while (pos <= s.size()) {
    size_t c = s.find(',', pos);
    if (c == std::string::npos) c = s.size();
    if (c > pos) out.push_back(s.substr(pos, c - pos));
    pos = c + 1;
  }
  return out;
}

// Phase B: every rank gets every part's keys.
Global gather_keys(const Context& ctx, const std::vector<Part>& parts, const std::vector<int>& owner) {
  const int me = dist::world().rank();
  std::string mine;
  auto put64 = [&](uint64_t v) { mine.append(reinterpret_cast<const char*>(&v), 8); };
  for (size_t p = 0; p < parts.size(); p++) {
    if (owner[p] != me) continue;
    PartKeys k = read_keys(ctx.dirs.keys(p));
    const std::string t = k.trailer.dump();
    put64(p);
    put64(uint64_t(k.num_perm));
    put64(k.flags);
    put64(t.size());
    mine += t;
    put64(k.body.size());
    mine += k.body;
  }
  const auto all = dist::world().all_gather_bytes(mine);
  std::vector<PartKeys> keys(parts.size());
  std::vector<bool> have(parts.size(), false);
  for (const auto& buf : all) {
    size_t pos = 0;
    auto get64 = [&]() {
      DSV3_CHECK(pos + 8 <= buf.size(), "curate: truncated keys message");
      const uint64_t v = load_u64le(buf.data() + pos);
      pos += 8;
      return v;
    };
    while (pos < buf.size()) {
      const size_t p = size_t(get64());
      DSV3_CHECK(p < parts.size() && !have[p], "curate: unexpected keys for part ", p);
      PartKeys& k = keys[p];
      k.num_perm = int(get64());
      k.flags = uint32_t(get64());
      const size_t tl = size_t(get64());
      k.trailer = nlohmann::json::parse(buf.substr(pos, tl));
      pos += tl;
      const size_t bl = size_t(get64());
      k.body = buf.substr(pos, bl);
      pos += bl;
      parse_keys_body(k, part_name(p));
      have[p] = true;
    }
  }
  Global g;
  const size_t K = ctx.minhash ? size_t(ctx.cfg.minhash.num_perm) : 0;
  if (ctx.df) g.df.assign(size_t(1) << ctx.cfg.tfidf_log2_features, 0);
  g.part_begin.push_back(0);
  for (size_t p = 0; p < parts.size(); p++) {
    DSV3_CHECK(have[p], "curate: no rank sent the keys of ", part_name(p));
    for (const KeyRecord& r : keys[p].records) {
      g.part.push_back(uint32_t(p));
      g.index.push_back(r.index);
      g.text_bytes.push_back(r.text_bytes);
      g.id.push_back(r.id);
      g.exact.push_back(r.exact);
      if (K) {
        const size_t at = g.sigs.size();
        g.sigs.resize(at + K);
        std::memcpy(&g.sigs[at], r.sig, K * 2);
      }
    }
    if (ctx.df)
      for (const auto& [b, c] : keys[p].df) g.df[b] += c;
    g.part_begin.push_back(g.part.size());
  }
  g.n = g.part.size();
  g.drop.assign(g.n, kKeep);
  g.dup_of.assign(g.n, 0);
  g.tfidf.assign(g.n, NAN);
  return g;
}

// Phase B: exact and near-duplicate clusters; identical on every rank.
void global_dedup(const Context& ctx, Global& g, RunStats& global, nlohmann::json& info) {
  const size_t keep = ctx.keep;
  if (ctx.exact) {
    const double t0 = now_seconds();
    StageStats& s = global.stages["exact_dedup"];
    const std::vector<uint32_t> first = exact_clusters(g.exact);
    int64_t dups = 0;
    for (size_t i = 0; i < g.n; i++) {
      s.docs_in++;
      s.bytes_in += int64_t(g.text_bytes[i]);
      if (first[i] != i) {
        g.drop[i] = kExactDup;
        g.dup_of[i] = first[i];
        s.rules["duplicate"].add(doc_order(g.part[i], g.index[i]), g.id[i], keep);
        dups++;
      } else {
        s.docs_out++;
        s.bytes_out += int64_t(g.text_bytes[i]);
      }
    }
    s.seconds = now_seconds() - t0;
    info["exact_duplicates"] = dups;
  }
  if (ctx.minhash) {
    const double t0 = now_seconds();
    StageStats& s = global.stages["minhash_dedup"];
    const size_t K = size_t(ctx.cfg.minhash.num_perm);
    std::vector<uint32_t> alive;
    for (size_t i = 0; i < g.n; i++)
      if (g.drop[i] == kKeep) alive.push_back(uint32_t(i));
    std::vector<uint16_t> sub(alive.size() * K);
    for (size_t a = 0; a < alive.size(); a++)
      std::memcpy(&sub[a * K], &g.sigs[size_t(alive[a]) * K], K * 2);
    NearDupStats nd;
    const std::vector<uint32_t> root = minhash_clusters(sub, alive.size(), ctx.cfg.minhash, &nd);
    int64_t dups = 0;
    std::set<uint32_t> clusters;
    for (size_t a = 0; a < alive.size(); a++) {
      const size_t i = alive[a];
      s.docs_in++;
      s.bytes_in += int64_t(g.text_bytes[i]);
      if (root[a] != a) {
        g.drop[i] = kNearDup;
        g.dup_of[i] = alive[root[a]];
        clusters.insert(root[a]);
        s.rules["near_duplicate"].add(doc_order(g.part[i], g.index[i]), g.id[i], keep);
        dups++;
      } else {
        s.docs_out++;
        s.bytes_out += int64_t(g.text_bytes[i]);
      }
    }
    s.seconds = now_seconds() - t0;
    const auto& m = ctx.cfg.minhash;
    info["near_duplicates"] = dups;
    info["near_duplicate_clusters"] = clusters.size();
    info["candidate_pairs_checked"] = nd.candidate_pairs;
    info["lsh"] = {{"num_perm", m.num_perm}, {"bands", m.bands}, {"rows", m.rows},
                   {"threshold", m.threshold}, {"ngram", m.ngram},
                   {"p_candidate_j0.5", lsh_candidate_probability(0.5, m.bands, m.rows)},
                   {"p_candidate_j0.8", lsh_candidate_probability(0.8, m.bands, m.rows)}};
  }
}

// Reads the records of a JSONL stream in batches of (global index, line).
template <typename F>
void for_each_spool_batch(const std::string& path, F&& f) {
  ReaderConfig rc;
  rc.format = InputFormat::Jsonl;
  rc.max_doc_bytes = std::numeric_limits<int64_t>::max();
  RecordReader reader(path, rc);
  std::vector<std::string> lines;
  RawRecord r;
  bool more = true;
  while (more) {
    lines.clear();
    size_t bytes = 0;
    while (lines.size() < kBatchDocs && bytes < kBatchBytes) {
      if (!reader.next(r)) {
        more = false;
        break;
      }
      bytes += r.data.size();
      lines.push_back(std::move(r.data));
    }
    if (!lines.empty()) f(lines);
  }
}

// Phase C: TF-IDF scores of the owned parts' surviving documents, the tfidf filter, then
// (diversity) k-means selection over everyone's candidates.
void relevance_and_diversity(const Context& ctx, const std::vector<Part>& parts,
                             const std::vector<int>& owner, Global& g, RunStats& summed,
                             RunStats& global, nlohmann::json& info) {
  const CurateConfig& cfg = ctx.cfg;
  const int me = dist::world().rank();
  const int L = cfg.tfidf_log2_features, D = cfg.diversity_dim;
  const Idf idf = make_idf(g.df, g.n);
  std::vector<float> centroid;
  if (ctx.tfidf) {
    // The target sample goes through the same reader and normalisation as the corpus.
    std::vector<std::string> texts;
    for (const auto& f : expand_inputs(split_csv(cfg.tfidf_target))) {
      RecordReader rr(f, cfg.reader);
      RawRecord raw;
      while (rr.next(raw)) {
        Document doc;
        std::string detail;
        const uint32_t bad = parse_record(raw, rr.format(), cfg.reader, f, doc, detail);
        if (bad & ~(bad_input_bit(BadInput::InvalidUtf8) | bad_input_bit(BadInput::NulBytes)))
          continue;
        if (std::find(ctx.local.begin(), ctx.local.end(), Stage::Normalize) != ctx.local.end())
          normalize_text(doc.text, cfg.normalize);
        texts.push_back(std::move(doc.text));
      }
    }
    DSV3_CHECK(!texts.empty(), "tfidf_target ", cfg.tfidf_target, " has no documents");
    centroid = tfidf_centroid(texts, L, idf);
    info["tfidf_target_docs"] = texts.size();
  }
  // Owned parts: scores and, for diversity candidates, the hashed vectors.
  std::string vec_msg;  // (u64 global index, D floats) per candidate
  StageStats& ts = summed.stages["tfidf"];
  collective([&] {
    for (size_t p = 0; p < parts.size(); p++) {
      if (owner[p] != me) continue;
      size_t k = g.part_begin[p];
      for_each_spool_batch(ctx.dirs.spool(p), [&](std::vector<std::string>& lines) {
        const size_t n = lines.size(), base = k;
        DSV3_CHECK(base + n <= g.part_begin[p + 1], part_name(p), ": spool has more records than its keys");
        std::vector<std::vector<float>> vecs(n);
        std::vector<double> secs(n, 0);
#pragma omp parallel for schedule(dynamic, 8)
        for (size_t i = 0; i < n; i++) {
          const size_t gi = base + i;
          if (g.drop[gi] != kKeep) continue;
          const double t0 = thread_cpu_seconds();
          const auto j = nlohmann::json::parse(lines[i]);
          const std::string& text = j.at("text").get_ref<const std::string&>();
          thread_local SparseVec v;
          tfidf_vector(text, L, idf, v);
          if (ctx.tfidf) {
            g.tfidf[gi] = float(cosine(v, centroid));
            if (cfg.tfidf_min_score > 0 && g.tfidf[gi] < cfg.tfidf_min_score) g.drop[gi] = kLowTfidf;
          }
          if (ctx.diversity && g.drop[gi] == kKeep) {
            vecs[i].resize(size_t(D));
            project(v, D, vecs[i].data());
          }
          secs[i] = thread_cpu_seconds() - t0;
        }
        for (size_t i = 0; i < n; i++) {
          const size_t gi = base + i;
          if (ctx.tfidf && (g.drop[gi] == kKeep || g.drop[gi] == kLowTfidf)) {
            ts.docs_in++;
            ts.bytes_in += int64_t(g.text_bytes[gi]);
            ts.seconds += secs[i];
            if (g.drop[gi] == kLowTfidf)
              ts.rules["below_min_score"].add(doc_order(g.part[gi], g.index[gi]), g.id[gi], ctx.keep);
            else {
              ts.docs_out++;
              ts.bytes_out += int64_t(g.text_bytes[gi]);
            }
          }
          if (!vecs[i].empty()) {
            const uint64_t gi64 = gi;
            vec_msg.append(reinterpret_cast<const char*>(&gi64), 8);
            vec_msg.append(reinterpret_cast<const char*>(vecs[i].data()), size_t(D) * 4);
          }
        }
        k += n;
      });
      DSV3_CHECK(k == g.part_begin[p + 1], part_name(p), ": spool has ", k - g.part_begin[p],
                 " records, keys ", g.part_begin[p + 1] - g.part_begin[p]);
    }
  });
  if (!ctx.diversity) return;
  // Every rank gathers all candidates in global order and computes the same selection.
  const double t0 = now_seconds();
  const auto all = dist::world().all_gather_bytes(vec_msg);
  std::vector<std::pair<uint64_t, const char*>> cand;
  for (const auto& buf : all)
    for (size_t pos = 0; pos + 8 <= buf.size(); pos += 8 + size_t(D) * 4)
      cand.emplace_back(load_u64le(buf.data() + pos), buf.data() + pos + 8);
  std::sort(cand.begin(), cand.end());
  std::vector<float> x(cand.size() * size_t(D));
  for (size_t i = 0; i < cand.size(); i++)
    std::memcpy(&x[i * size_t(D)], cand[i].second, size_t(D) * 4);
  KMeansConfig kc;
  kc.k = cfg.diversity_clusters > 0
             ? cfg.diversity_clusters
             : std::max(2, int(std::lround(std::sqrt(double(cfg.select_docs)))));
  kc.iterations = cfg.diversity_iterations;
  kc.seed = uint64_t(cfg.seed);
  const KMeansResult km = kmeans(x.data(), cand.size(), D, kc);
  const std::vector<uint32_t> chosen = select_diverse(km, size_t(cfg.select_docs));
  std::vector<bool> selected(cand.size(), false);
  for (uint32_t c : chosen) selected[c] = true;
  StageStats& s = global.stages["diversity"];
  for (size_t i = 0; i < cand.size(); i++) {
    const size_t gi = size_t(cand[i].first);
    s.docs_in++;
    s.bytes_in += int64_t(g.text_bytes[gi]);
    if (selected[i]) {
      s.docs_out++;
      s.bytes_out += int64_t(g.text_bytes[gi]);
    } else {
      g.drop[gi] = kNotSelected;
      g.dup_of[gi] = km.assign[i];  // the cluster, for the reject detail
      s.rules["not_selected"].add(doc_order(g.part[gi], g.index[gi]), g.id[gi], ctx.keep);
    }
  }
  s.seconds = now_seconds() - t0;
  std::vector<size_t> sizes(size_t(km.k), 0);
  for (uint32_t a : km.assign) sizes[a]++;
  info["diversity"] = {{"candidates", cand.size()}, {"clusters", km.k},
                       {"selected", chosen.size()}, {"cluster_sizes", sizes}};
}

// Phase D: the output files of one part.
void write_part(const Context& ctx, const Part& part, const Global& g, RunStats& summed) {
  const CurateConfig& cfg = ctx.cfg;
  const size_t p = part.index;
  StageStats& ws = summed.stages["write"];
  const double t0 = thread_cpu_seconds();
  size_t k = g.part_begin[p];
  write_file_atomic(ctx.dirs.data_file(p, cfg.compression), [&](std::FILE* df) {
    StreamWriter out(df, cfg.compression, cfg.compression_level);
    write_file_atomic(ctx.dirs.rejects_file(p, cfg.compression), [&](std::FILE* rf) {
      // Phase A's rejects are already compressed: copy the bytes, then append a new frame.
      {
        const std::string prev_path = ctx.dirs.work_rejects(p, cfg.compression);
        std::FILE* prev = std::fopen(prev_path.c_str(), "rb");
        DSV3_CHECK(prev, "cannot open ", prev_path);
        std::vector<char> buf(1 << 20);
        size_t got;
        while ((got = std::fread(buf.data(), 1, buf.size(), prev)) > 0) write_bytes(rf, buf.data(), got);
        const bool err = std::ferror(prev);
        std::fclose(prev);
        DSV3_CHECK(!err, "cannot read ", prev_path);
      }
      StreamWriter rej(rf, cfg.compression, cfg.compression_level);
      for_each_spool_batch(ctx.dirs.spool(p), [&](std::vector<std::string>& lines) {
        for (std::string& line : lines) {
          DSV3_CHECK(k < g.part_begin[p + 1], part_name(p), ": spool has more records than its keys");
          const size_t gi = k++;
          ws.docs_in++;
          ws.bytes_in += int64_t(g.text_bytes[gi]);
          if (g.drop[gi] != kKeep) {
            ojson j = ojson::parse(line);
            std::string stage, rule, detail;
            switch (g.drop[gi]) {
              case kExactDup:
                stage = "exact_dedup", rule = "duplicate", detail = "duplicate of " + g.id[g.dup_of[gi]];
                break;
              case kNearDup: {
                stage = "minhash_dedup", rule = "near_duplicate";
                const size_t K = size_t(cfg.minhash.num_perm);
                const double jac = estimate_jaccard(&g.sigs[gi * K], &g.sigs[size_t(g.dup_of[gi]) * K], int(K));
                detail = "near-duplicate of " + g.id[g.dup_of[gi]] + " (estimated Jaccard " +
                         fmt_double("%.3f", jac) + ")";
                break;
              }
              case kLowTfidf:
                stage = "tfidf", rule = "below_min_score";
                detail = "cosine " + fmt_double("%.4f", g.tfidf[gi]) + " < " + fmt_double("%g", cfg.tfidf_min_score);
                j["curate"]["tfidf"] = g.tfidf[gi];
                break;
              default:
                stage = "diversity", rule = "not_selected";
                detail = "cluster " + std::to_string(g.dup_of[gi]) + " had enough nearer documents";
                break;
            }
            j["curate"]["stage"] = stage;
            j["curate"]["rule"] = rule;
            j["curate"]["detail"] = detail;
            rej.write(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
            summed.docs_rejected++;
            continue;
          }
          ws.docs_out++;
          ws.bytes_out += int64_t(g.text_bytes[gi]);
          summed.docs_written++;
          summed.bytes_written += int64_t(g.text_bytes[gi]);
          if (!std::isnan(g.tfidf[gi])) {
            ojson j = ojson::parse(line);
            j["curate"]["tfidf"] = g.tfidf[gi];
            out.write(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n");
          } else {
            line += '\n';
            out.write(line);
          }
        }
      });
      rej.finish();
    });
    out.finish();
  });
  DSV3_CHECK(k == g.part_begin[p + 1], part_name(p), ": spool has ", k - g.part_begin[p],
             " records, keys ", g.part_begin[p + 1] - g.part_begin[p]);
  ws.seconds += thread_cpu_seconds() - t0;
}

std::vector<std::string> report_stage_order(const Context& ctx) {
  std::vector<std::string> order = {"read"};
  for (Stage s : ctx.local) order.push_back(stage_name(s));
  for (const char* s : {"exact_hash", "minhash_signature", "tfidf_terms", "serialize"})
    order.push_back(s);
  for (Stage s : ctx.stages)
    if (!stage_is_local(s)) order.push_back(stage_name(s));
  order.push_back("write");
  return order;
}

}  // namespace

std::vector<nlohmann::json> read_jsonl(const std::string& path) {
  std::vector<nlohmann::json> out;
  for_each_spool_batch(path, [&](std::vector<std::string>& lines) {
    for (const auto& l : lines) out.push_back(nlohmann::json::parse(l));
  });
  return out;
}

CurateOutcome run_curate(const CurateConfig& cfg_in, const PerplexityLoader& load_perplexity) {
  const double t_start = now_seconds(), cpu_start = process_cpu_seconds();
  CurateConfig cfg = cfg_in;
  cfg.minhash.seed = uint64_t(cfg.seed);
  validate(cfg);
  if (cfg.threads > 0) omp_set_num_threads(cfg.threads);
  const int me = dist::world().rank(), ranks = dist::world().size();

  Context ctx(cfg);
  ctx.stages = resolve_stages(cfg);
  for (Stage s : ctx.stages) {
    if (stage_is_local(s)) ctx.local.push_back(s);
    ctx.exact |= s == Stage::ExactDedup;
    ctx.minhash |= s == Stage::MinhashDedup;
    ctx.tfidf |= s == Stage::Tfidf;
    ctx.diversity |= s == Stage::Diversity;
  }
  ctx.df = ctx.tfidf || ctx.diversity;
  ctx.keep = size_t(cfg.examples_per_rule);
  ctx.fingerprint = part_fingerprint(cfg);
  for (Stage s : ctx.local) {
    if (s == Stage::Pii) ctx.pii = std::make_unique<PiiScrubber>(cfg.pii);
    if (s == Stage::Classifier) {
      ctx.classifier = std::make_unique<ClassifierModel>(load_classifier(cfg.classifier_model));
      ctx.classifier_label = ctx.classifier->label_index(cfg.classifier_label);
      std::string labels;
      for (const auto& l : ctx.classifier->labels) labels += (labels.empty() ? "" : ", ") + l;
      DSV3_CHECK(ctx.classifier_label >= 0, "classifier_label '", cfg.classifier_label,
                 "' is not a label of ", cfg.classifier_model, " (labels: ", labels, ")");
    }
    if (s == Stage::Perplexity) {
      DSV3_CHECK(load_perplexity, "the perplexity stage needs a model loader (internal error)");
      ctx.perplexity = load_perplexity(cfg.perplexity);
    }
  }
  if (ctx.minhash) ctx.minhasher = std::make_unique<MinHasher>(cfg.minhash);

  // Inputs: rank 0 lists and stats them, everyone gets the same list.
  std::string listing;
  if (me == 0) {
    std::string err;
    try {
      nlohmann::json j = nlohmann::json::array();
      for (const auto& f : stat_inputs(expand_inputs(split_csv(cfg.input))))
        j.push_back({{"path", f.path}, {"size", f.size}, {"mtime_ns", f.mtime_ns}});
      listing = j.dump();
    } catch (const std::exception& e) {
      listing = std::string("!") + e.what();
    }
  }
  dist::world().broadcast_bytes(listing, 0);
  DSV3_CHECK(listing.empty() || listing[0] != '!', listing.substr(1));
  std::vector<InputFile> inputs;
  for (const auto& f : nlohmann::json::parse(listing))
    inputs.push_back({f.at("path"), f.at("size"), f.at("mtime_ns")});
  const std::vector<Part> parts = plan_parts(inputs, uint64_t(cfg.part_mb) << 20);
  const std::vector<int> owner = assign_parts(parts, ranks);

  if (me == 0) {
    for (const auto& d : {ctx.dirs.out, ctx.dirs.data, ctx.dirs.rejects, ctx.dirs.work})
      fs::create_directories(d);
    remove_stale_temps({ctx.dirs.out, ctx.dirs.data, ctx.dirs.rejects, ctx.dirs.work});
  }
  dist::world().barrier();

  // Phase A
  RunStats summed;  // per rank, summed over ranks at the end
  int64_t resumed = 0, processed = 0;
  const char* die_env = std::getenv("DSV3_CURATE_KILL_AFTER_PARTS");  // resume tests only
  const long die_after = die_env ? std::strtol(die_env, nullptr, 10) : -1;
  const double ta = now_seconds();
  collective([&] {
    for (const Part& part : parts) {
      if (owner[part.index] != me) continue;
      if (cfg.resume && part_is_done(ctx, part)) {
        summed.merge(run_stats_from_json(read_keys_trailer(ctx.dirs.keys(part.index)).at("stats")),
                     ctx.keep);
        resumed++;
        continue;
      }
      const double t0 = now_seconds();
      const RunStats s = process_part(ctx, part);
      summed.merge(s, ctx.keep);
      processed++;
      std::fprintf(stderr, "curate: %s (%zu file%s, %.1f MB): %lld read, %lld kept, %.1fs\n",
                   part_name(part.index).c_str(), part.files.size(),
                   part.files.size() == 1 ? "" : "s", double(part.bytes) / 1e6,
                   (long long)s.docs_read, (long long)(s.docs_read - s.docs_rejected),
                   now_seconds() - t0);
      if (die_after >= 0 && processed >= die_after) ::raise(SIGKILL);
    }
  });
  const double phase_a = now_seconds() - ta;

  // Phase B
  const double tb = now_seconds();
  RunStats global;  // identical on every rank
  nlohmann::json info = nlohmann::json::object();
  Global g;
  collective([&] { g = gather_keys(ctx, parts, owner); });
  global_dedup(ctx, g, global, info);
  const double phase_b = now_seconds() - tb;

  // Phase C
  const double tc = now_seconds();
  if (ctx.tfidf || ctx.diversity) relevance_and_diversity(ctx, parts, owner, g, summed, global, info);
  const double phase_c = now_seconds() - tc;

  // Phase D
  const double td = now_seconds();
  collective([&] {
    for (const Part& part : parts)
      if (owner[part.index] == me) write_part(ctx, part, g, summed);
  });
  const double phase_d = now_seconds() - td;

  // Summary: per-rank counts summed, global ones once.
  nlohmann::json mine = {{"stats", to_json(summed)}, {"resumed", resumed}, {"processed", processed}};
  const auto all = dist::world().all_gather_bytes(mine.dump());
  RunStats total = global;
  int64_t resumed_all = 0;
  for (const auto& s : all) {
    const auto j = nlohmann::json::parse(s);
    total.merge(run_stats_from_json(j.at("stats")), ctx.keep);
    resumed_all += j.at("resumed").get<int64_t>();
  }
  const double wall = now_seconds() - t_start;
  std::string cpu_msg = std::to_string(process_cpu_seconds() - cpu_start);
  double cpu_all = 0;
  for (const auto& c : dist::world().all_gather_bytes(cpu_msg)) cpu_all += std::strtod(c.c_str(), nullptr);
  const int threads = std::max(1, omp_get_max_threads());
  std::map<std::string, double> phases = {{"A read+filter+keys", phase_a},
                                          {"B global dedup", phase_b},
                                          {"C relevance+diversity", phase_c},
                                          {"D write", phase_d},
                                          {"total", wall}};
  nlohmann::json stage_list = nlohmann::json::array();
  for (Stage s : ctx.stages) stage_list.push_back(stage_name(s));
  nlohmann::json parts_json = nlohmann::json::array();
  for (const Part& p : parts)
    parts_json.push_back({{"part", part_name(p.index)},
                          {"data", ctx.dirs.data_file(p.index, cfg.compression)},
                          {"rejects", ctx.dirs.rejects_file(p.index, cfg.compression)},
                          {"files", part_files_json(p)}});
  const double cores = double(threads) * ranks;
  nlohmann::json throughput = {
      {"wall_seconds", wall},
      {"ranks", ranks},
      {"threads_per_rank", threads},
      {"mb_per_s", wall > 0 ? double(total.bytes_read) / 1e6 / wall : 0},
      {"mb_per_s_per_core", wall > 0 ? double(total.bytes_read) / 1e6 / wall / cores : 0},
      {"docs_per_s_per_core", wall > 0 ? double(total.docs_read) / wall / cores : 0},
      // CPU time of every rank: the per-core rate that does not depend on other load
      {"cpu_seconds", cpu_all},
      {"mb_per_cpu_second", cpu_all > 0 ? double(total.bytes_read) / 1e6 / cpu_all : 0},
      {"docs_per_cpu_second", cpu_all > 0 ? double(total.docs_read) / cpu_all : 0}};
  CurateOutcome out;
  out.summary = {{"version", 1},
                 {"stages", stage_list},
                 {"config", fields_to_json(curate_fields(), &cfg)},
                 {"parts", parts_json},
                 {"resumed_parts", resumed_all},
                 {"stats", to_json(total)},
                 {"dedup", info},
                 {"phases", phases},
                 {"throughput", throughput}};
  out.report = format_report(total, report_stage_order(ctx), phases,
                             {{"dedup", info}, {"throughput", throughput}, {"resumed_parts", resumed_all}});
  if (me == 0) {
    const std::string s = out.summary.dump(2) + "\n";
    write_file_atomic(ctx.dirs.out + "/summary.json",
                      [&](std::FILE* f) { write_bytes(f, s.data(), s.size()); });
    write_file_atomic(ctx.dirs.out + "/report.md",
                      [&](std::FILE* f) { write_bytes(f, out.report.data(), out.report.size()); });
  }
  dist::world().barrier();
  if (!cfg.keep_work) {
    for (const Part& part : parts) {
      if (owner[part.index] != me) continue;
      std::error_code ec;
      fs::remove(ctx.dirs.keys(part.index), ec);
      fs::remove(ctx.dirs.spool(part.index), ec);
      fs::remove(ctx.dirs.work_rejects(part.index, cfg.compression), ec);
    }
    dist::world().barrier();
    if (me == 0) {
      std::error_code ec;
      fs::remove(ctx.dirs.work, ec);  // only if empty
    }
  }
  return out;
}

}  // namespace dsv3::curate
