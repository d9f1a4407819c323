// Continuous batching over the decode engine (I1, I2): requests wait in FIFO order until the KV
// cache can reserve their longest possible length (prompt + max_tokens, within the context),
// then join the running batch; every step() runs one engine step over all running sequences --
// one token (two with a speculative draft) for each decoding sequence and a prompt chunk for
// those still prefilling, within max_rows tokens -- samples, and retires finished sequences,
// whose pages go back to the cache at once. Single-threaded: the server feeds it from its
// engine thread, `dsv3 sample` and the benchmarks call it directly.
#pragma once
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "infer/decode.h"
#include "infer/sampler.h"

namespace dsv3 {

enum class FinishReason : uint8_t {
  Stop,       // a stop token, or on_token asked to stop (a stop string)
  Length,     // max_tokens, or the context is full
  Cancelled,  // cancelled() said so (the client went away)
};
const char* finish_reason_name(FinishReason r);  // "stop", "length", "cancelled"

struct GenRequest {
  std::vector<int32_t> prompt;      // non-empty
  SamplingParams sampling;
  int max_tokens = 16;
  std::vector<int32_t> stop_ids;    // a generated stop id ends the request (it is not emitted)
  // Each new token, in order; returning false ends the request as Stop after it.
  std::function<bool(int32_t)> on_token;
  // When the request joins the running batch (optional).
  std::function<void()> on_start;
  // Exactly once, when the request leaves the scheduler.
  std::function<void(FinishReason)> on_done;
  // Polled every step; true drops the request (on_done(Cancelled)).
  std::function<bool()> cancelled;
};

struct SchedulerConfig {
  int max_running = 64;     // sequences in the running batch (<= the engine's max_seqs)
  bool speculative = false; // MTP drafts (the engine must cache the MTP layer)
};

struct SchedulerStats {
  int64_t steps = 0;
  int64_t prompt_tokens = 0;     // prefilled
  int64_t generated_tokens = 0;  // emitted
  int64_t drafts = 0, accepted = 0;  // speculative decoding
  double acceptance() const { return drafts > 0 ? double(accepted) / double(drafts) : 0.0; }
};

class Scheduler {
 public:
  Scheduler(DecodeEngine& engine, const SchedulerConfig& cfg);
  ~Scheduler();

  // "" when the request can run at all (ids in the vocabulary, prompt + 1 token within the
  // context, its cache reservation within the whole budget); else why not, for a 400 error.
  std::string check(const GenRequest& r) const;
  // Queues r (check() must have passed).
  void add(std::unique_ptr<GenRequest> r);
  // Admits what fits, runs one engine step, samples and retires. False when there was nothing
  // to do (no running and no admissible waiting request).
  bool step();
  // Drops every request (on_done(Cancelled)).
  void cancel_all();

  int waiting() const { return int(waiting_.size()); }
  int running() const { return int(running_.size()); }
  bool idle() const { return waiting_.empty() && running_.empty(); }
  const SchedulerStats& stats() const { return stats_; }
  DecodeEngine& engine() { return engine_; }

 private:
  struct Seq;
  int reservation(const GenRequest& r) const;  // tokens to reserve
  void finish(Seq& s, FinishReason why);
  bool emit(Seq& s, int32_t id);  // false: the sequence is done
  DecodeEngine& engine_;
  SchedulerConfig cfg_;
  std::deque<std::unique_ptr<GenRequest>> waiting_;
  std::vector<std::unique_ptr<Seq>> running_;
  SchedulerStats stats_;
  std::vector<float> logits_, mtp_logits_;
};

}  // namespace dsv3
