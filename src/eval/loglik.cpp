#include "eval/loglik.h"

#include <algorithm>
#include <map>
#include <numeric>
#include <span>

#include "core/check.h"
#include "infer/decode.h"
#include "model/head.h"
#include "model/model.h"

namespace dsv3::eval {

LoglikScorer::LoglikScorer(const ModelWeights& w, const LoglikConfig& cfg) : w_(w), cfg_(cfg) {
  DSV3_CHECK(cfg.batch_tokens >= 1, "batch_tokens must be >= 1");
  DSV3_CHECK(cfg.page_tokens >= 1, "page_tokens must be >= 1");
}

LoglikScorer::~LoglikScorer() = default;

bool LoglikScorer::shares_context() const {
  return cfg_.share_context && w_.device() == Device::CPU &&
         w_.config().attention == AttentionKind::Dense;
}

std::vector<double> LoglikScorer::score(const std::vector<LoglikRequest>& reqs,
                                        const std::function<void(size_t, size_t)>& progress) {
  const ModelConfig& c = w_.config();
  const size_t n = reqs.size();
  std::vector<double> out(n, 0.0);
  std::vector<size_t> rows, shared;
  for (size_t i = 0; i < n; i++) {
    const auto& r = reqs[i];
    DSV3_CHECK(!r.context.empty() && !r.continuation.empty(),
               "a log-likelihood request needs a context and a continuation (internal error)");
    DSV3_CHECK(int64_t(r.continuation.size()) <= c.max_seq, "a continuation of ",
               r.continuation.size(), " tokens does not fit the model's context (", c.max_seq, ")");
    // a request cut from the left has a context of its own: the rows path
    const bool fits = int64_t(r.context.size() + r.continuation.size()) <= int64_t(c.max_seq) + 1;
    (shares_context() && fits ? shared : rows).push_back(i);
  }
  size_t finished = 0;
  const Progress done = [&](size_t k) {
    finished += k;
    if (progress) progress(finished, n);
  };
  if (!shared.empty()) score_shared(reqs, shared, out, done);
  if (!rows.empty()) score_rows(reqs, rows, out, done);
  return out;
}

void LoglikScorer::score_rows(const std::vector<LoglikRequest>& reqs,
                              const std::vector<size_t>& which, std::vector<double>& out,
                              const Progress& done) {
  const ModelConfig& c = w_.config();
  const size_t n = which.size();
  // Each row: the last max_seq + 1 tokens of context + continuation. `len` = positions scored
  // by the forward (the row's tokens - 1); the continuation's are the last ones.
  std::vector<int> len(n), keep_ctx(n);
  for (size_t i = 0; i < n; i++) {
    const auto& r = reqs[which[i]];
    const int64_t total = int64_t(r.context.size() + r.continuation.size());
    const int64_t cut = std::max<int64_t>(0, total - (c.max_seq + 1));
    keep_ctx[i] = int(int64_t(r.context.size()) - cut);
    len[i] = int(total - cut - 1);
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t(0));
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return len[a] > len[b]; });
  const int T_max = len[order[0]];
  const int rows_max = std::max(1, cfg_.batch_tokens / T_max);
  WorkspaceConfig wc;
  wc.max = {rows_max, T_max};
  wc.backward = false;
  Workspace ws(c, w_.dtype(), w_.device(), wc);
  const int64_t N_max = int64_t(rows_max) * T_max;
  ForwardOptions opt;
  opt.mtp = false;
  std::vector<int32_t> batch;
  std::vector<float> lp;
  const TrainingLossConfig loss;
  for (size_t at = 0; at < n;) {
    const int T = len[order[at]];
    const int B = int(std::min<int64_t>(int64_t(n - at), std::max<int64_t>(1, N_max / T)));
    batch.assign(size_t(B) * (T + 1), 0);  // pad id 0: after each row's end, never attended to
    for (int b = 0; b < B; b++) {
      const auto& r = reqs[which[order[at + b]]];
      int32_t* row = batch.data() + size_t(b) * (T + 1);
      const int k = keep_ctx[order[at + b]];
      std::copy(r.context.end() - k, r.context.end(), row);
      std::copy(r.continuation.begin(), r.continuation.end(), row + k);
    }
    lp.assign(size_t(B) * T, 0.0f);
    opt.token_logprobs = lp.data();
    forward(w_, ws, loss, {Dims{B, T}, batch.data()}, opt);
    for (int b = 0; b < B; b++) {
      const size_t i = order[at + b];
      const int m = int(reqs[which[i]].continuation.size());
      // the continuation's tokens are targets of positions len - m ... len - 1
      double s = 0;
      for (int t = len[i] - m; t < len[i]; t++) s += double(lp[size_t(b) * T + t]);
      out[which[i]] = s;
    }
    forwards_++;
    tokens_ += int64_t(B) * T;
    at += size_t(B);
    done(size_t(B));
  }
}

namespace {

// A distinct context: its tokens but the last run once (the parent sequence); each request of
// it is a child forked from the parent that runs [context's last token | continuation but its
// last token] and predicts the continuation's tokens.
struct Group {
  std::span<const int32_t> prefix;
  std::vector<size_t> reqs;  // indices into `which`
  SeqCache cache;
  int fed = 0;           // prefix tokens in the cache
  int child_pages = 0;   // pages its children will reserve
  int children_left = 0;
  bool admitted = false, forked = false;
};

struct Child {
  size_t req;  // index into `which`
  Group* group;
  std::vector<int32_t> tokens, targets;
  SeqCache cache;
  int fed = 0;
  double sum = 0;
};

}  // namespace

void LoglikScorer::score_shared(const std::vector<LoglikRequest>& reqs,
                                const std::vector<size_t>& which, std::vector<double>& out,
                                const Progress& done) {
  const ModelConfig& c = w_.config();
  const int page = cfg_.page_tokens, R = cfg_.batch_tokens;
  // groups by exact context tokens, in the order of their first request
  std::map<std::vector<int32_t>, size_t> index;
  std::vector<Group> groups;
  int longest = 1;
  for (size_t k = 0; k < which.size(); k++) {
    const auto& r = reqs[which[k]];
    const auto [it, fresh] = index.try_emplace(r.context, groups.size());
    if (fresh) {
      groups.emplace_back();
      groups.back().prefix = std::span<const int32_t>(r.context).first(r.context.size() - 1);
    }
    groups[it->second].reqs.push_back(k);
    longest = std::max(longest, int(r.context.size() + r.continuation.size()) - 1);
  }
  // Cache: the largest group at once, and room for about two steps of new tokens in flight
  // with a partial page per sequence of 16 tokens or more.
  auto pages_for = [&](int tokens) { return (tokens + page - 1) / page; };
  int largest = 0;
  for (Group& g : groups) {
    const int p = int(g.prefix.size());
    for (size_t k : g.reqs)
      g.child_pages += pages_for(p + int(reqs[which[k]].continuation.size())) - p / page;
    largest = std::max(largest, pages_for(p) + g.child_pages);
  }
  DecodeConfig dc;
  dc.max_rows = R;
  dc.max_seqs = std::min(R, 4096);
  dc.page_tokens = page;
  dc.max_context = longest;
  dc.max_logit_rows = std::min(R, kHeadChunk);
  // (admission keeps within the budget, so any size >= largest works; more only adds overlap)
  const int pages = largest + pages_for(2 * R) + R / 16;
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, w_.dtype(), c.layers) * size_t(page) * pages;
  DecodeEngine eng(w_, dc);
  KvCache& kv = eng.cache();

  std::vector<Child> children;  // in flight; a deque would do, the vector is re-packed per step
  std::vector<Group*> prefilling;
  size_t next_group = 0;
  int promised = 0;  // pages admitted groups' children will reserve
  int unforked = 0;  // admitted groups whose children are not forked yet
  std::vector<SeqStep> in;
  std::vector<int32_t> targets;
  std::vector<float> lp;
  struct Piece {
    Child* child;  // null: a parent's prefill
    int n;
  };
  std::vector<Piece> pieces;
  while (next_group < groups.size() || unforked > 0 || !children.empty()) {
    // 1. fork the children of every prefilled group (their pages were promised at admission)
    for (Group& g : groups) {
      if (!g.admitted || g.forked || g.fed < int(g.prefix.size())) continue;
      for (size_t k : g.reqs) {
        const auto& r = reqs[which[k]];
        Child ch{k, &g, {}, {}, {}, 0, 0.0};
        ch.tokens.push_back(r.context.back());
        ch.tokens.insert(ch.tokens.end(), r.continuation.begin(), r.continuation.end() - 1);
        ch.targets = r.continuation;
        const int total = int(g.prefix.size() + ch.tokens.size());
        const int own = pages_for(total) - int(g.prefix.size()) / page;
        DSV3_CHECK(kv.fork(g.cache, ch.cache, total), "kv cache fork beyond its promise (internal error)");
        promised -= own;
        children.push_back(std::move(ch));
      }
      g.children_left = int(g.reqs.size());
      g.forked = true;
      unforked--;
    }
    // 2. a step of up to R new tokens: children first (they free the cache), then prefills
    in.clear();
    targets.clear();
    pieces.clear();
    int rows = 0;
    for (Child& ch : children) {
      if (rows == R || int(in.size()) == dc.max_seqs) break;
      const int n = std::min(int(ch.tokens.size()) - ch.fed, R - rows);
      in.push_back({&ch.cache, std::span<const int32_t>(ch.tokens).subspan(size_t(ch.fed), size_t(n)), n});
      targets.insert(targets.end(), ch.targets.begin() + ch.fed, ch.targets.begin() + ch.fed + n);
      pieces.push_back({&ch, n});
      rows += n;
    }
    int admitted_now = 0;
    for (size_t gi = 0; rows < R && int(in.size()) < dc.max_seqs;) {
      if (gi == prefilling.size()) {  // admit the next group when the cache can take it whole
        if (next_group == groups.size()) break;
        Group& g = groups[next_group];
        const int p = int(g.prefix.size());
        if (pages_for(p) + g.child_pages > kv.pages_unreserved() - promised) break;
        DSV3_CHECK(kv.reserve(g.cache, p), "kv cache reservation (internal error)");
        promised += g.child_pages;
        g.admitted = true;
        next_group++;
        unforked++;
        admitted_now++;
        if (p == 0) continue;  // a one-token context: nothing to prefill, fork it next
        prefilling.push_back(&g);
      }
      Group& g = *prefilling[gi++];
      const int n = std::min(int(g.prefix.size()) - g.fed, R - rows);
      in.push_back({&g.cache, g.prefix.subspan(size_t(g.fed), size_t(n)), 0});
      pieces.push_back({nullptr, n});
      g.fed += n;
      rows += n;
    }
    if (in.empty()) {  // only one-token contexts were admitted: they fork on the next round
      DSV3_CHECK(admitted_now > 0, "kv cache too small for one context and its continuations "
                 "(internal error)");
      continue;
    }
    lp.resize(targets.size());
    eng.step_logprobs(in, targets, lp.data());
    forwards_++;
    tokens_ += rows;
    // 3. collect: finished children go, and with the last of a group its context
    size_t at = 0;
    size_t finished = 0;
    for (const Piece& p : pieces) {
      if (!p.child) continue;
      for (int i = 0; i < p.n; i++) p.child->sum += double(lp[at + size_t(i)]);
      at += size_t(p.n);
      p.child->fed += p.n;
    }
    std::vector<Child> still;
    still.reserve(children.size());
    for (Child& ch : children) {
      if (ch.fed < int(ch.tokens.size())) {
        still.push_back(std::move(ch));
        continue;
      }
      out[which[ch.req]] = ch.sum;
      kv.release(ch.cache);
      finished++;
      if (--ch.group->children_left == 0) kv.release(ch.group->cache);
    }
    children = std::move(still);
    std::erase_if(prefilling, [](const Group* g) { return g->fed == int(g->prefix.size()); });
    done(finished);
  }
}

}  // namespace dsv3::eval
