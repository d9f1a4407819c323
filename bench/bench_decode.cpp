// Decode and prefill throughput of the inference path (I1) on a saved model, one JSON line out:
//   bench_decode --model M [--precision fp32|bf16] [--batch B] [--prompt P] [--tokens N]
//                [--mode cached|recompute] [--speculative]
// B sequences of P random prompt ids each generate N greedy tokens, after an untimed warm-up
// request (oneDNN creates its GEMM primitives on first use; the peer warms up too). cached: the scheduler over
// the decode engine (what `dsv3 sample` and `dsv3 serve` run); prefill time is until every
// sequence has its first token, decode time the rest. recompute: the training forward over the
// whole (B, T) context per token (the path `dsv3 sample --engine recompute` takes), prefill
// being its first forward. Threads: OMP_NUM_THREADS. bench/bench_infer.py drives it.
#include <omp.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "checkpoint/checkpoint.h"
#include "core/profile.h"
#include "core/rng.h"
#include "core/timer.h"
#include "infer/kv_cache.h"
#include "infer/scheduler.h"
#include "model/model.h"
#include "optim/precision.h"

using namespace dsv3;

int main(int argc, char** argv) {
  std::string model, precision = "fp32", mode = "cached";
  int B = 1, P = 64, N = 200;
  bool speculative = false;
  for (int i = 1; i < argc; i++) {
    const std::string a = argv[i];
    auto next = [&] {
      if (i + 1 >= argc) {
        std::fprintf(stderr, "bench_decode: %s needs a value\n", a.c_str());
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (a == "--model") model = next();
    else if (a == "--precision") precision = next();
    else if (a == "--batch") B = std::stoi(next());
    else if (a == "--prompt") P = std::stoi(next());
    else if (a == "--tokens") N = std::stoi(next());
    else if (a == "--mode") mode = next();
    else if (a == "--speculative") speculative = true;
    else {
      std::fprintf(stderr, "usage: bench_decode --model M [--precision fp32|bf16] [--batch B] "
                           "[--prompt P] [--tokens N] [--mode cached|recompute] [--speculative]\n");
      return 2;
    }
  }
  try {
    DSV3_CHECK(!model.empty(), "--model is required");
    DSV3_CHECK(B >= 1 && P >= 1 && N >= 1, "batch, prompt and tokens must be >= 1");
    LoadedModel lm = load_model_any(model);
    const ModelConfig& c = lm.config;
    DSV3_CHECK(P + N <= c.max_seq, "prompt + tokens exceed the model's max_seq ", c.max_seq);
    ModelWeights w(c, compute_dtype(parse_precision(precision)));
    w.load(lm.params);
    Rng rng(42);
    std::vector<std::vector<int32_t>> prompts(static_cast<size_t>(B), std::vector<int32_t>(static_cast<size_t>(P)));
    for (auto& p : prompts)
      for (auto& x : p) x = int32_t(rng.below(uint64_t(std::min(c.vocab, 256))));
    double t_prefill = 0, t_decode = 0;
    int64_t generated = 0;
    SchedulerStats st;
    if (mode == "cached") {
      DecodeConfig dc;
      dc.max_seqs = B;
      dc.max_rows = std::max(B, std::min(B * P, 512));
      dc.max_context = P + N + 1;
      dc.mtp = speculative;
      const int layers = c.layers + (speculative ? 1 : 0);
      dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, w.dtype(), layers) * size_t(B) *
                          size_t(P + N + 2 * dc.page_tokens);
      DecodeEngine engine(w, dc);
      Scheduler sched(engine, {B, speculative});
      {  // warm-up (oneDNN creates its GEMM primitives on first use), untimed
        auto r = std::make_unique<GenRequest>();
        r->prompt = prompts[0];
        r->sampling.temperature = 0;
        r->max_tokens = 3;
        sched.add(std::move(r));
        while (sched.step()) {
        }
      }
      const SchedulerStats warm = sched.stats();
      int first = 0;
      double t_first = 0;
      const double t0 = now_seconds();
      for (int b = 0; b < B; b++) {
        auto r = std::make_unique<GenRequest>();
        r->prompt = prompts[size_t(b)];
        r->sampling.temperature = 0;
        r->max_tokens = N;
        r->on_token = [&, n = 0](int32_t) mutable {
          if (n++ == 0 && ++first == B) t_first = now_seconds();
          generated++;
          return true;
        };
        sched.add(std::move(r));
      }
      while (sched.step()) {
      }
      const double t1 = now_seconds();
      t_prefill = t_first - t0;
      t_decode = t1 - t_first;
      st = sched.stats();
      st.drafts -= warm.drafts;
      st.accepted -= warm.accepted;
    } else if (mode == "recompute") {
      DSV3_CHECK(!speculative, "--speculative needs --mode cached");
      WorkspaceConfig wc;
      wc.max = {B, P + N};
      wc.backward = false;
      Workspace ws(c, w.dtype(), w.device(), wc);
      std::vector<std::vector<int32_t>> seqs = prompts;
      std::vector<float> logits;
      std::vector<int32_t> rows;
      ForwardOptions opt;
      opt.mtp = false;
      {  // warm-up, untimed
        std::vector<int32_t> row(prompts[0]);
        row.push_back(-1);
        logits.resize(size_t(P) * c.vocab);
        opt.logits = logits.data();
        forward(w, ws, TrainingLossConfig{}, {Dims{1, P}, row.data()}, opt);
      }
      const double t0 = now_seconds();
      for (int i = 0; i < N; i++) {
        const int T = int(seqs[0].size());
        rows.clear();
        for (auto& s : seqs) {
          rows.insert(rows.end(), s.begin(), s.end());
          rows.push_back(-1);
        }
        logits.resize(size_t(B) * T * c.vocab);
        opt.logits = logits.data();
        forward(w, ws, TrainingLossConfig{}, {Dims{B, T}, rows.data()}, opt);
        for (int b = 0; b < B; b++) {
          const float* l = logits.data() + (size_t(b) * T + T - 1) * c.vocab;
          seqs[size_t(b)].push_back(int32_t(std::max_element(l, l + c.vocab) - l));
          generated++;
        }
        if (i == 0) t_prefill = now_seconds() - t0;
      }
      t_decode = now_seconds() - t0 - t_prefill;
    } else {
      fail("--mode must be cached or recompute, not '", mode, "'");
    }
    const int layers = c.layers;
    const double decode_tokens = double(generated - B);  // tokens after each sequence's first
    std::printf("{\"mode\": \"%s\", \"precision\": \"%s\", \"batch\": %d, \"prompt\": %d, "
                "\"tokens\": %d, \"threads\": %d, \"prefill_s\": %.6f, \"decode_s\": %.6f, "
                "\"prefill_tokens_per_s\": %.3f, \"decode_tokens_per_s\": %.3f, "
                "\"total_tokens_per_s\": %.3f, \"generated\": %lld, "
                "\"kv_bytes_per_token\": %zu, \"mha_kv_bytes_per_token\": %zu, "
                "\"spec_drafts\": %lld, \"spec_accepted\": %lld}\n",
                mode.c_str(), precision.c_str(), B, P, N, omp_get_max_threads(), t_prefill, t_decode,
                double(B) * P / std::max(t_prefill, 1e-9), decode_tokens / std::max(t_decode, 1e-9),
                double(generated) / std::max(t_prefill + t_decode, 1e-9), (long long)generated,
                KvCache::latent_bytes_per_token(c, w.dtype(), layers),
                KvCache::mha_bytes_per_token(c, w.dtype(), layers), (long long)st.drafts,
                (long long)st.accepted);
    if (profile::enabled())  // DSV3_PROFILE=1: time per op over the whole run
      std::fprintf(stderr, "%s", profile::report(t_prefill + t_decode).c_str());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_decode: error: %s\n", e.what());
    return 1;
  }
  return 0;
}
