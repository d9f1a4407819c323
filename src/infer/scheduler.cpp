#include "infer/scheduler.h"

#include <algorithm>

#include "core/check.h"

namespace dsv3 {

const char* finish_reason_name(FinishReason r) {
  switch (r) {
    case FinishReason::Stop: return "stop";
    case FinishReason::Length: return "length";
    case FinishReason::Cancelled: return "cancelled";
  }
  return "?";
}

// Cache invariant between steps: a running sequence's cache holds tokens[0 .. length); while
// prefilling length < prompt_len; while decoding tokens has exactly one more (the pending token,
// fed in the next step), and with speculative decoding the MTP layer holds positions
// 0 .. mtp_length = length (each position's next token is known).
struct Scheduler::Seq {
  std::unique_ptr<GenRequest> req;
  SeqCache cache;
  std::vector<int32_t> tokens;  // prompt, then generated
  int prompt_len = 0;
  int generated = 0;
  int32_t draft = -1;           // MTP's guess at the token after the pending one
  Sampler sampler;
  bool done = false;
  FinishReason why = FinishReason::Stop;
  std::vector<int32_t> input;   // this step's tokens
  int logit_row = 0;            // this step's first logit row
  int row0 = 0;                 // this step's first row
  int pos0 = 0;                 // cache length before this step
  Seq(std::unique_ptr<GenRequest> r, int vocab)
      : req(std::move(r)), sampler(req->sampling, vocab) {}
};

Scheduler::Scheduler(DecodeEngine& engine, const SchedulerConfig& cfg) : engine_(engine), cfg_(cfg) {
  const DecodeConfig& d = engine.settings();
  DSV3_CHECK(cfg.max_running >= 1 && cfg.max_running <= d.max_seqs && cfg.max_running <= d.max_rows,
             "max running sequences ", cfg.max_running, " must be in [1, min(max_seqs ",
             d.max_seqs, ", max_rows ", d.max_rows, ")]");
  DSV3_CHECK(!cfg.speculative || engine.has_mtp(), "speculative decoding needs the engine's MTP "
             "cache (internal error)");
}

Scheduler::~Scheduler() { cancel_all(); }

int Scheduler::reservation(const GenRequest& r) const {
  const int p = int(r.prompt.size());
  const int most = p + std::max(r.max_tokens, 1) - 1 + (cfg_.speculative ? 1 : 0);
  return std::max(p, std::min(most, engine_.max_context()));
}

std::string Scheduler::check(const GenRequest& r) const {
  const ModelConfig& c = engine_.config();
  if (r.prompt.empty()) return "the prompt is empty";
  for (int32_t id : r.prompt)
    if (id < 0 || id >= c.vocab)
      return "prompt token id " + std::to_string(id) + " is outside the vocabulary (" +
             std::to_string(c.vocab) + ")";
  if (int(r.prompt.size()) > engine_.max_context())
    return "the prompt has " + std::to_string(r.prompt.size()) +
           " tokens, more than the model's context of " + std::to_string(engine_.max_context());
  if (r.max_tokens < 1) return "max_tokens must be >= 1, not " + std::to_string(r.max_tokens);
  try {
    validate(r.sampling);
  } catch (const Error& e) {
    return e.what();
  }
  const KvCache& kv = const_cast<DecodeEngine&>(engine_).cache();
  const int need = kv.pages_for_tokens(reservation(r));
  if (need > kv.pages())
    return "the request needs " + std::to_string(reservation(r)) + " tokens of KV cache; the "
           "whole cache holds " + std::to_string(size_t(kv.pages()) * kv.page_tokens()) +
           " (lower max_tokens or raise --kv_cache_mb)";
  return "";
}

void Scheduler::add(std::unique_ptr<GenRequest> r) {
  const std::string why = check(*r);
  DSV3_CHECK(why.empty(), why);
  waiting_.push_back(std::move(r));
}

void Scheduler::finish(Seq& s, FinishReason why) {
  if (s.done) return;
  s.done = true;
  s.why = why;
}

bool Scheduler::emit(Seq& s, int32_t id) {
  const GenRequest& r = *s.req;
  if (std::find(r.stop_ids.begin(), r.stop_ids.end(), id) != r.stop_ids.end()) {
    finish(s, FinishReason::Stop);
    return false;
  }
  s.tokens.push_back(id);
  s.generated++;
  stats_.generated_tokens++;
  s.sampler.observe({&id, 1});
  if (r.on_token && !r.on_token(id)) finish(s, FinishReason::Stop);
  else if (s.generated >= r.max_tokens) finish(s, FinishReason::Length);
  else if (int(s.tokens.size()) > engine_.max_context()) finish(s, FinishReason::Length);
  return !s.done;
}

void Scheduler::cancel_all() {
  for (auto& s : running_) {
    engine_.cache().release(s->cache);
    if (s->req->on_done) s->req->on_done(FinishReason::Cancelled);
  }
  running_.clear();
  for (auto& r : waiting_)
    if (r->on_done) r->on_done(FinishReason::Cancelled);
  waiting_.clear();
}

bool Scheduler::step() {
  KvCache& kv = engine_.cache();
  const int V = engine_.config().vocab;
  // cancelled requests leave first, so their pages serve the admissions below
  for (auto it = waiting_.begin(); it != waiting_.end();) {
    if ((*it)->cancelled && (*it)->cancelled()) {
      if ((*it)->on_done) (*it)->on_done(FinishReason::Cancelled);
      it = waiting_.erase(it);
    } else {
      ++it;
    }
  }
  for (auto& s : running_)
    if (s->req->cancelled && s->req->cancelled()) finish(*s, FinishReason::Cancelled);
  auto retire = [&] {
    for (auto& s : running_)
      if (s->done) {
        kv.release(s->cache);
        if (s->req->on_done) s->req->on_done(s->why);
      }
    std::erase_if(running_, [](const std::unique_ptr<Seq>& s) { return s->done; });
  };
  retire();
  // admission in arrival order: the head waits until its whole reservation fits
  while (!waiting_.empty() && int(running_.size()) < cfg_.max_running) {
    SeqCache c;
    if (!kv.reserve(c, reservation(*waiting_.front()))) break;
    auto s = std::make_unique<Seq>(std::move(waiting_.front()), V);
    waiting_.pop_front();
    s->cache = std::move(c);
    s->tokens = s->req->prompt;
    s->prompt_len = int(s->tokens.size());
    s->sampler.observe(s->tokens);
    if (s->req->on_start) s->req->on_start();
    running_.push_back(std::move(s));
  }
  if (running_.empty()) return false;

  // this step's rows: decoding sequences first (one token, or two with a draft), then prompt
  // chunks in the room left
  const int max_rows = engine_.settings().max_rows;
  int rows = 0, logit_rows = 0;
  std::vector<SeqStep> steps;
  std::vector<Seq*> in_step;
  auto add = [&](Seq& s, int logits) {
    s.logit_row = logit_rows;
    s.pos0 = s.cache.length;
    steps.push_back({&s.cache, s.input, logits});
    in_step.push_back(&s);
    rows += int(s.input.size());
    logit_rows += logits;
  };
  for (auto& sp : running_) {
    Seq& s = *sp;
    if (s.cache.length < s.prompt_len) continue;
    s.input.assign(1, s.tokens.back());
    if (s.draft >= 0 && rows + 2 <= max_rows) s.input.push_back(s.draft);
    else s.draft = -1;
    if (rows + int(s.input.size()) > max_rows) continue;
    add(s, int(s.input.size()));
  }
  for (auto& sp : running_) {
    Seq& s = *sp;
    if (s.cache.length >= s.prompt_len) continue;
    const int n = std::min(s.prompt_len - s.cache.length, max_rows - rows);
    if (n <= 0) continue;
    s.input.assign(s.tokens.begin() + s.cache.length, s.tokens.begin() + s.cache.length + n);
    stats_.prompt_tokens += n;
    add(s, s.cache.length + n == s.prompt_len ? 1 : 0);
  }
  logits_.resize(size_t(logit_rows) * V);
  engine_.step(steps, logits_.data());
  stats_.steps++;
  for (size_t i = 0; i < in_step.size(); i++) in_step[i]->row0 = steps[i].row0;

  for (Seq* sp : in_step) {
    Seq& s = *sp;
    if (s.cache.length < s.prompt_len) continue;  // mid-prompt: no logits
    const float* row = logits_.data() + size_t(s.logit_row) * V;
    if (s.draft < 0 || s.input.size() < 2) {
      emit(s, s.sampler.sample(row));
    } else {
      bool accepted = false;
      const int32_t t1 = s.sampler.verify(row, s.draft, &accepted);
      stats_.drafts++;
      if (accepted) {
        stats_.accepted++;
        if (emit(s, t1)) emit(s, s.sampler.sample(row + V));
      } else {
        s.cache.length--;  // the draft's row is overwritten by the next step
        emit(s, t1);
      }
    }
    s.draft = -1;
  }

  if (cfg_.speculative) {  // the MTP module over every position whose next token is now known
    std::vector<MtpStep> mtp;
    std::vector<Seq*> in_mtp;
    std::vector<std::vector<int32_t>> hrows, next;
    hrows.reserve(in_step.size());
    next.reserve(in_step.size());
    for (Seq* sp : in_step) {
      Seq& s = *sp;
      if (s.done) continue;
      const int end = std::min(s.cache.length, int(s.tokens.size()) - 1);
      std::vector<int32_t> h, nx;
      for (int j = s.cache.mtp_length; j < end; j++) {
        DSV3_CHECK(j >= s.pos0, "MTP position ", j, " is not in this step (internal error)");
        h.push_back(s.row0 + (j - s.pos0));
        nx.push_back(s.tokens[size_t(j) + 1]);
      }
      if (h.empty()) continue;
      hrows.push_back(std::move(h));
      next.push_back(std::move(nx));
      mtp.push_back({&s.cache, hrows.back(), next.back()});
      in_mtp.push_back(&s);
    }
    if (!mtp.empty()) {
      mtp_logits_.resize(mtp.size() * size_t(V));
      engine_.mtp_step(mtp, mtp_logits_.data());
      for (size_t i = 0; i < in_mtp.size(); i++) {
        Seq& s = *in_mtp[i];
        // a draft only while decoding, with room for two more tokens in context and budget
        const bool room = s.cache.length >= s.prompt_len &&
                          int(s.tokens.size()) + 1 <= engine_.max_context() &&
                          s.generated + 2 <= s.req->max_tokens;
        if (!room) continue;
        const float* l = mtp_logits_.data() + i * size_t(V);
        s.draft = int32_t(std::max_element(l, l + V) - l);
      }
    }
  }
  retire();
  return true;
}

}  // namespace dsv3
