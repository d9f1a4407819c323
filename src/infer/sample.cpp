#include "infer/sample.h"

#include <algorithm>

#include "core/check.h"
#include "model/model.h"

namespace dsv3 {

std::vector<int32_t> generate(const ModelWeights& w, const std::vector<int32_t>& prompt,
                              const SampleConfig& s, int context,
                              const std::function<bool(int32_t)>& on_token,
                              SchedulerStats* stats) {
  DSV3_CHECK(!prompt.empty(), "the prompt is empty");
  DSV3_CHECK(context >= 1, "context must be >= 1");
  const ModelConfig& c = w.config();
  std::vector<int32_t> out;
  if (s.max_tokens <= 0) return out;
  const int ctx = std::min(context, c.max_seq);
  DSV3_CHECK(int(prompt.size()) <= ctx, "the prompt has ", prompt.size(),
             " tokens, more than the context of ", ctx);
  DecodeConfig dc;
  dc.max_context = ctx;
  dc.max_seqs = 1;
  dc.max_rows = std::min(ctx, 512);
  dc.mtp = s.speculative;
  // the cache for this one sequence (plus a page for a draft)
  const int layers = c.layers + (s.speculative ? 1 : 0);
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, w.dtype(), layers) *
                      size_t((ctx + 2 * dc.page_tokens - 1) / dc.page_tokens * dc.page_tokens);
  DecodeEngine engine(w, dc);
  SchedulerConfig sc;
  sc.max_running = 1;
  sc.speculative = s.speculative;
  Scheduler sched(engine, sc);
  auto r = std::make_unique<GenRequest>();
  r->prompt = prompt;
  r->sampling = s;
  r->max_tokens = s.max_tokens;
  r->stop_ids = s.stop_ids;
  r->on_token = [&](int32_t id) {
    out.push_back(id);
    return on_token ? on_token(id) : true;
  };
  const std::string why = sched.check(*r);
  DSV3_CHECK(why.empty(), why);
  sched.add(std::move(r));
  while (sched.step()) {
  }
  if (stats) *stats = sched.stats();
  return out;
}

std::vector<int32_t> generate_recompute(const ModelWeights& w, const std::vector<int32_t>& prompt,
                                        const SampleConfig& s, int context,
                                        const std::function<bool(int32_t)>& on_token) {
  DSV3_CHECK(!prompt.empty(), "the prompt is empty");
  DSV3_CHECK(context >= 1, "context must be >= 1");
  const ModelConfig& c = w.config();
  const int V = c.vocab;
  for (int32_t id : prompt) DSV3_CHECK(id >= 0 && id < V, "prompt token ", id, " outside vocab ", V);
  const int window = std::min(c.max_seq, context);
  WorkspaceConfig wc;
  wc.max = {1, window};
  wc.backward = false;
  Workspace ws(c, w.dtype(), w.device(), wc);
  Sampler sampler(s, V);
  sampler.observe(prompt);
  std::vector<int32_t> seq = prompt, out, row;
  std::vector<float> logits;
  ForwardOptions opt;
  opt.mtp = false;
  for (int i = 0; i < s.max_tokens; i++) {
    const int T = std::min<int>(int(seq.size()), window);
    row.assign(seq.end() - T, seq.end());
    row.push_back(-1);  // no target at the end
    logits.resize(size_t(T) * V);
    opt.logits = logits.data();
    forward(w, ws, TrainingLossConfig{}, {Dims{1, T}, row.data()}, opt);
    const int32_t id = sampler.sample(logits.data() + size_t(T - 1) * V);
    if (std::find(s.stop_ids.begin(), s.stop_ids.end(), id) != s.stop_ids.end()) break;
    sampler.observe({&id, 1});
    seq.push_back(id);
    out.push_back(id);
    if (on_token && !on_token(id)) break;
  }
  return out;
}

}  // namespace dsv3
