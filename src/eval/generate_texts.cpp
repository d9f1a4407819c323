#include "eval/generate_texts.h"

#include <algorithm>
#include <memory>

#include "core/check.h"
#include "infer/decode.h"
#include "infer/sample.h"
#include "infer/scheduler.h"

namespace dsv3::eval {

namespace {

// The prompt's ids, its start dropped so that max_tokens more fit the context.
std::vector<int32_t> fit_prompt(const TextCodec& codec, const std::string& prompt, int ctx,
                                int max_tokens) {
  std::vector<int32_t> ids = codec.encode(prompt);
  DSV3_CHECK(!ids.empty(), "a generation prompt is empty");
  const size_t room = size_t(std::max(1, ctx - max_tokens));
  if (ids.size() > room) ids.erase(ids.begin(), ids.end() - std::ptrdiff_t(room));
  return ids;
}

}  // namespace

std::vector<GeneratedText> generate_texts(const ModelWeights& w, const TextCodec& codec,
                                          const std::vector<std::string>& prompts,
                                          const TextGenConfig& cfg,
                                          const std::function<void(size_t)>& done) {
  DSV3_CHECK(cfg.max_tokens >= 1 && cfg.batch >= 1, "max_tokens and batch must be >= 1");
  const ModelConfig& c = w.config();
  const int ctx = c.max_seq;
  DSV3_CHECK(ctx >= 2, "the model's context (", ctx, ") is too short to generate");
  const int max_tokens = std::min(cfg.max_tokens, ctx - 1);
  std::vector<GeneratedText> out(prompts.size());
  std::vector<std::vector<int32_t>> ids(prompts.size());
  std::vector<int32_t> stop_ids;
  if (codec.eos_id() >= 0) stop_ids.push_back(codec.eos_id());
  // per prompt: note the id; stop once the decoded text holds the stop string
  auto on_token = [&](size_t i, int32_t id) {
    ids[i].push_back(id);
    if (cfg.stop.empty()) return true;
    const std::string text = codec.decode(ids[i]);
    if (text.find(cfg.stop) == std::string::npos) return true;
    out[i].stopped = true;
    return false;
  };
  auto finish = [&](size_t i) {
    out[i].tokens = int64_t(ids[i].size());
    out[i].text = codec.decode(ids[i]);
    if (!cfg.stop.empty()) out[i].text = out[i].text.substr(0, out[i].text.find(cfg.stop));
    if (done) done(i);
  };
  if (c.attention != AttentionKind::Dense) {  // the cached engine is dense-only
    for (size_t i = 0; i < prompts.size(); i++) {
      SampleConfig s;
      static_cast<SamplingParams&>(s) = cfg.sampling;
      s.seed = cfg.sampling.seed + i;
      s.max_tokens = max_tokens;
      s.stop_ids = stop_ids;
      const auto p = fit_prompt(codec, prompts[i], ctx, max_tokens);
      const auto gen = generate_recompute(w, p, s, ctx, [&](int32_t id) { return on_token(i, id); });
      out[i].stopped = out[i].stopped || int(gen.size()) < max_tokens;
      finish(i);
    }
    return out;
  }
  const int batch = std::min<int>(cfg.batch, std::max<size_t>(1, prompts.size()));
  std::vector<std::vector<int32_t>> fitted(prompts.size());
  size_t longest = 0;
  for (size_t i = 0; i < prompts.size(); i++) {
    fitted[i] = fit_prompt(codec, prompts[i], ctx, max_tokens);
    longest = std::max(longest, fitted[i].size());
  }
  // the cache holds `batch` sequences of the longest prompt + answer, not of the whole context
  const int need = std::min(ctx, int(longest) + max_tokens + 1);
  DecodeConfig dc;
  dc.max_context = ctx;
  dc.max_seqs = batch;
  dc.max_rows = std::max(batch, std::min(ctx, 512));
  const size_t per_seq = size_t((need + 2 * dc.page_tokens - 1) / dc.page_tokens * dc.page_tokens);
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, w.dtype(), c.layers) * per_seq * size_t(batch);
  DecodeEngine engine(w, dc);
  SchedulerConfig sc;
  sc.max_running = batch;
  Scheduler sched(engine, sc);
  for (size_t i = 0; i < prompts.size(); i++) {
    auto r = std::make_unique<GenRequest>();
    r->prompt = std::move(fitted[i]);
    r->sampling = cfg.sampling;
    r->sampling.seed = cfg.sampling.seed + i;
    r->max_tokens = max_tokens;
    r->stop_ids = stop_ids;
    r->on_token = [&, i](int32_t id) { return on_token(i, id); };
    r->on_done = [&, i](FinishReason why) {
      out[i].stopped = out[i].stopped || why == FinishReason::Stop;
      finish(i);
    };
    const std::string why = sched.check(*r);
    DSV3_CHECK(why.empty(), "prompt ", i, ": ", why);
    sched.add(std::move(r));
  }
  while (sched.step()) {
  }
  DSV3_CHECK(sched.idle(), "generation ended with ", sched.waiting(), " prompts waiting (internal error)");
  return out;
}

}  // namespace dsv3::eval
