#include "train/train_data.h"

#include <filesystem>

#include "core/check.h"
#include "data/builtin_corpus.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/token_file.h"
#include "tokenizer/formats.h"
#include "tokenizer/text_codec.h"

namespace fs = std::filesystem;

namespace dsv3 {

namespace {

constexpr size_t kBuiltinTrainBytes = 4 << 20, kBuiltinValBytes = 256 << 10;

std::vector<int32_t> load_tokens(const std::string& path, int vocab, const char* what) {
  std::vector<int32_t> t = read_token_file(path);
  for (size_t i = 0; i < t.size(); i++)
    DSV3_CHECK(t[i] < vocab, what, " ", path, ": token ", t[i], " at index ", i,
               " is outside the model's vocabulary (", vocab, ")");
  return t;
}

std::vector<std::string> shard_paths(const std::string& dir, const nlohmann::json& list) {
  std::vector<std::string> out;
  for (const auto& f : list) out.push_back((fs::path(dir) / f.get<std::string>()).string());
  return out;
}

}  // namespace

int vocab_for_prepared_data(const std::string& data_dir) {
  const nlohmann::json m = read_manifest(data_dir);
  return (m.at("vocab").get<int>() + 63) / 64 * 64;
}

TrainData::~TrainData() = default;

const std::vector<FieldSpec>& data_fields() {
  using D = DataConfig;
  static const std::vector<FieldSpec> f = {
      field("data", &D::data, "prepared data directory (dsv3 prepare): shards + tokenizer"),
      field("train_data", &D::train_data,
            "llm.c token files: a file, glob, directory or a,b,c (neither: built-in corpus)"),
      field("val_data", &D::val_data, "llm.c token files for validation"),
      field("shuffle", &D::shuffle,
            "train_data / built-in corpus: random windows, new order each epoch (false: in order)"),
      field("mix", &D::mix, "domain weights name:w,... (default: token shares)"),
      field("mix_end", &D::mix_end, "domain weights at the end (linear schedule from --mix)"),
      field("mix_adaptive", &D::mix_adaptive,
            "raise a domain's weight by this factor when its val loss keeps rising (1 = off)", at_least(1)),
      field("mix_window", &D::mix_window, "evaluations of rising loss before a raise (K)", in_range(1, 1 << 20)),
      field("fim_rate", &D::fim_rate, "fill-in-the-middle share of documents (prepared data)", in_range(0, 1)),
      choice("fim_order", &D::fim_order, "psm|spm", "FIM layout", fim_order_name, parse_fim_order),
      field("window_overlap", &D::window_overlap,
            "tokens shared by windows of documents longer than seq_len", in_range(0, 1 << 24)),
      field("seq_warmup_steps", &D::seq_warmup_steps,
            "sequence-length warmup: steps to grow the context to seq_len (0 = off)", at_least(0)),
      field("seq_warmup_start", &D::seq_warmup_start, "context length at step 0 of the warmup", in_range(2, 1 << 24)),
  };
  return f;
}

int DataConfig::seq_split(long long step, int seq_len) const {
  if (step >= seq_warmup_steps) return 1;
  const double target =
      seq_warmup_start + double(seq_len - seq_warmup_start) * double(step) / double(seq_warmup_steps);
  int k = 1;
  while (seq_len % (2 * k) == 0 && double(seq_len / (2 * k)) >= target) k *= 2;
  return k;
}

void validate(const DataConfig& t, int seq_len) {
  DSV3_CHECK(t.seq_warmup_steps >= 0, "seq_warmup_steps must be >= 0");
  if (t.seq_warmup_steps > 0)
    DSV3_CHECK(t.seq_warmup_start >= 2 && t.seq_warmup_start <= seq_len,
               "seq_warmup_start must be in [2, seq_len] (", seq_len, "), got ", t.seq_warmup_start);
  DSV3_CHECK(t.mix_adaptive >= 1.0, "mix_adaptive must be >= 1 (1 = off)");
  DSV3_CHECK(t.mix_window >= 1, "mix_window must be >= 1");
  DSV3_CHECK(t.fim_rate >= 0 && t.fim_rate <= 1, "fim_rate must be in [0, 1]");
  DSV3_CHECK(t.window_overlap >= 0 && t.window_overlap < seq_len,
             "window_overlap must be in [0, seq_len)");
  DSV3_CHECK(t.data.empty() || t.train_data.empty(),
             "give --data (a prepared directory) or --train_data (an llm.c file), not both");
  DSV3_CHECK(t.val_data.empty() || !t.train_data.empty(), "--val_data needs --train_data");
}

TrainData::TrainData(const DataConfig& tc, Dims d, uint64_t seed, const ModelConfig& c) {
  DSV3_CHECK(tc.data.empty() || tc.shuffle,
             "--shuffle is for --train_data and the built-in corpus; prepared data (--data) has "
             "its own loader, which shuffles documents: drop --shuffle false");
  if (!tc.data.empty()) {
    std::string dir;
    const nlohmann::json m = read_manifest(tc.data, &dir);
    const int vocab = m.at("vocab").get<int>();
    DSV3_CHECK(vocab <= c.vocab, "the data's tokenizer has ", vocab, " ids but the model's vocab ",
               "is ", c.vocab, " (set --vocab ", (vocab + 63) / 64 * 64, " or more)");
    tokenizer_ = (fs::path(dir) / m.at("tokenizer").get<std::string>()).string();
    const Tokenizer tok = load_tokenizer_any(tokenizer_);
    std::vector<DomainSpec> domains;
    std::vector<std::string> names;
    for (const auto& dj : m["domains"]) {
      names.push_back(dj.at("name").get<std::string>());
      domains.push_back({names.back(), shard_paths(dir, dj.at("train"))});
    }
    LoaderConfig lc;
    lc.batch = d.B;
    lc.seq_len = d.T;
    lc.seed = seed;
    lc.fim_order = tc.fim_order;
    lc.window_overlap = tc.window_overlap;
    lc.eos = tok.roles.eos;
    lc.fim_prefix = tok.roles.fim_prefix;
    lc.fim_middle = tok.roles.fim_middle;
    lc.fim_suffix = tok.roles.fim_suffix;
    lc.fim_rate = tc.fim_rate;
    // One global order on every rank: the trainer reads the whole global batch and takes its
    // rows, so the data a step sees does not depend on the layout (docs/parallel.md).
    lc.rank = 0;
    lc.world = 1;
    if (tc.fim_rate > 0 && (lc.fim_prefix < 0 || lc.fim_middle < 0 || lc.fim_suffix < 0)) {
      std::fprintf(stderr, "note: the tokenizer has no FIM markers, so fill-in-the-middle is off\n");
      lc.fim_rate = 0;
    }
    MixtureConfig mc;
    if (!tc.mix.empty()) mc.start_weights = parse_domain_weights(tc.mix, names, "--mix");
    if (!tc.mix_end.empty()) mc.end_weights = parse_domain_weights(tc.mix_end, names, "--mix_end");
    DSV3_CHECK(tc.mix_end.empty() || !tc.mix.empty(), "--mix_end needs --mix (the start weights)");
    mc.adaptive_factor = tc.mix_adaptive;
    mc.adaptive_window = tc.mix_window;
    loader_ = std::make_unique<Loader>(std::move(domains), lc, mc);
    for (const auto& dj : m["domains"]) {
      ValSet v;
      v.domain = dj.at("name").get<std::string>();
      uint64_t docs = 0;
      for (const auto& path : shard_paths(dir, dj.at("val"))) {
        const Shard s = Shard::open(path);
        for (uint64_t i = 0; i < s.n_docs(); i++) {
          const std::vector<int32_t> doc = s.doc(i);
          v.tokens.insert(v.tokens.end(), doc.begin(), doc.end());
          v.tokens.push_back(lc.eos);
        }
        docs += s.n_docs();
      }
      const double bytes = dj.at("text_bytes").at("val").get<double>();
      if (!v.tokens.empty()) v.bytes_per_token = bytes / double(v.tokens.size());
      if (v.tokens.size() > size_t(d.T)) val_.push_back(std::move(v));
      else if (docs > 0)
        std::fprintf(stderr, "note: domain %s has too little validation data for seq_len %d\n",
                     dj["name"].get<std::string>().c_str(), d.T);
    }
    desc_ = "prepared data " + dir + " (" + std::to_string(names.size()) + " domains, weights " +
            format_domain_weights(names, loader_->weights()) + ")";
    return;
  }
  TokenStreamConfig sc;
  sc.batch = d.B;
  sc.seq_len = d.T;
  sc.shuffle = tc.shuffle;
  sc.seed = seed;
  const char* order = tc.shuffle ? "shuffled windows" : "sequential";
  if (tc.train_data.empty()) {
    DSV3_CHECK(c.vocab >= 256, "the built-in corpus is byte-level: vocab must be >= 256");
    std::vector<int32_t> train =
        bytes_to_ids(builtin_corpus_text(seed, kBuiltinTrainBytes));
    val_.push_back({"builtin",
                    bytes_to_ids(builtin_corpus_text(seed + 1000003, kBuiltinValBytes)),
                    1.0});
    desc_ = "built-in corpus (" + std::to_string(train.size()) + " byte tokens, " + order + ")";
    std::vector<std::vector<int32_t>> parts;
    parts.push_back(std::move(train));
    stream_ = std::make_unique<TokenStream>(std::move(parts), sc,
                                            std::vector<std::string>{"built-in corpus"});
  } else {
    const std::vector<std::string> files = expand_token_files(tc.train_data, "--train_data");
    stream_ = std::make_unique<TokenStream>(TokenStream::open_files(files, sc));
    stream_->check_ids_below(c.vocab, "train_data");
    desc_ = (files.size() == 1 ? files[0]
                               : std::to_string(files.size()) + " files " + tc.train_data) +
            " (" + std::to_string(stream_->tokens()) + " tokens, " + order + ")";
  }
  if (!tc.val_data.empty()) {  // every file in order, concatenated: validation is not shuffled
    ValSet v{"val", {}, 0.0};
    for (const std::string& f : expand_token_files(tc.val_data, "--val_data")) {
      const std::vector<int32_t> t = load_tokens(f, c.vocab, "val_data");
      v.tokens.insert(v.tokens.end(), t.begin(), t.end());
    }
    val_.clear();
    val_.push_back(std::move(v));
  }
}

const int32_t* TrainData::next() { return loader_ ? loader_->next() : stream_->next(); }

void TrainData::set_step(int64_t step, int64_t total) {
  if (loader_) loader_->set_step(step, total);
}

nlohmann::json TrainData::state() const {
  if (loader_) return {{"loader", loader_->state()}};
  return stream_->state();
}

void TrainData::restore(const nlohmann::json& s) {
  if (loader_) {
    DSV3_CHECK(s.contains("loader"), "checkpoint was not trained on prepared data (--data)");
    loader_->restore(s.at("loader"));
    return;
  }
  DSV3_CHECK(!s.contains("loader"), "checkpoint was trained on prepared data: pass its --data");
  const bool shuffled = stream_->shuffled();
  const uint64_t seed = stream_->seed();
  stream_->restore(s);  // the checkpoint's order and seed win: the run continues as it started
  if (stream_->shuffled() != shuffled)
    std::fprintf(stderr, "note: the checkpoint read its data %s%s; the resumed run continues so "
                 "(--shuffle applies to new runs)\n",
                 stream_->shuffled() ? "in shuffled order" : "in sequential order",
                 s.contains("order") ? "" : " (written before --shuffle existed)");
  else if (stream_->shuffled() && stream_->seed() != seed)
    std::fprintf(stderr, "note: the data order continues with the checkpoint's seed\n");
}

nlohmann::json TrainData::observe_validation(const std::vector<double>& losses) {
  if (!loader_) return nullptr;
  if (losses.size() == loader_->domains().size()) loader_->observe_validation(losses);
  return loader_->log_record();
}

}  // namespace dsv3
