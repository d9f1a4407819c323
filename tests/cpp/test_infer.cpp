// The inference path (M2, I1): the latent-attention op against a naive oracle, the decode
// engine's cached logits against a full recompute through the training forward at every step
// (batches of sequences of different lengths, chunked prefill, both routers, q_lora on and off,
// YaRN), the MTP draft against the training path's MTP logits, continuous batching against
// one-at-a-time, speculative decoding against plain greedy decoding, the sampler's
// distributions, stop strings and the cache's page accounting.
#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "cli_util.h"
#include "infer/chat.h"
#include "infer/decode.h"
#include "infer/request.h"
#include "infer/sample.h"
#include "infer/sampler.h"
#include "infer/scheduler.h"
#include "infer/text_stream.h"
#include "model/model.h"
#include "ops/elementwise.h"
#include "ops/gemm_cpu.h"
#include "ops/latent_attention.h"
#include "ops/rope.h"
#include "test_util.h"

namespace dsv3 {
namespace {

// ---- ops

// The naive oracle: per sequence, query and head, scores over the cached rows, softmax, and
// the latent-weighted sum, in double straight from the definitions (no GEMM, no paging code).
std::vector<double> latent_attention_oracle(const std::vector<double>& q,
                                            const std::vector<double>& cache,
                                            const std::vector<LatentSeq>& seqs,
                                            const std::vector<int32_t>& pt,
                                            LatentAttentionShape s) {
  const int W = s.W();
  std::vector<double> out(size_t(s.R) * s.H * s.kv_lora, 0.0);
  for (const LatentSeq& sq : seqs)
    for (int i = 0; i < sq.rows; i++)
      for (int h = 0; h < s.H; h++) {
        const double* qr = &q[(size_t(sq.row0 + i) * s.H + h) * W];
        const int last = sq.pos0 + i;
        std::vector<double> sc(size_t(last) + 1);
        double mx = -1e300;
        for (int t = 0; t <= last; t++) {
          const double* kr = &cache[(size_t(pt[sq.page0 + t / s.page]) * s.page + t % s.page) * W];
          double d = 0;
          for (int j = 0; j < W; j++) d += qr[j] * kr[j];
          sc[t] = d * s.scale;
          mx = std::max(mx, sc[t]);
        }
        double z = 0;
        for (double& v : sc) z += (v = std::exp(v - mx));
        double* o = &out[(size_t(sq.row0 + i) * s.H + h) * s.kv_lora];
        for (int t = 0; t <= last; t++) {
          const double* kr = &cache[(size_t(pt[sq.page0 + t / s.page]) * s.page + t % s.page) * W];
          for (int j = 0; j < s.kv_lora; j++) o[j] += sc[t] / z * kr[j];
        }
      }
  return out;
}

template <typename T>
std::vector<T> cast_to(const std::vector<double>& v) {
  std::vector<T> o(v.size());
  for (size_t i = 0; i < v.size(); i++) o[i] = T(float(v[i]));
  return o;
}
template <>
std::vector<double> cast_to<double>(const std::vector<double>& v) {
  return v;
}

// oneDNN 2.6 builds bf16 matmuls only on CPUs with AVX512 (docs/gemm.md); an AVX2-only machine
// cannot run any bf16 GEMM, whatever the op.
bool bf16_gemm_works() {
  bf16_t a[1] = {bf16_t(1.0f)};
  float c[1];
  try {
    cpu::gemm(false, true, 1, 1, 1, 1.0f, a, 1, a, 1, 0.0f, c, 1, DType::BF16, DType::F32);
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

template <typename T>
std::vector<double> run_latent(const std::vector<double>& q, const std::vector<double>& cache,
                               std::vector<LatentSeq> seqs, std::vector<int32_t> pt,
                               LatentAttentionShape s) {
  auto qt = cast_to<T>(q), ct = cast_to<T>(cache);
  std::vector<T> out(size_t(s.R) * s.H * s.kv_lora);
  std::vector<int32_t> sq(seqs.size() * 4);
  std::memcpy(sq.data(), seqs.data(), sq.size() * 4);
  latent_attention_forward(Exec{}, host_tensor(out), host_tensor(qt), host_tensor(ct),
                           host_tensor(sq), host_tensor(pt), s);
  std::vector<double> o(out.size());
  for (size_t i = 0; i < o.size(); i++) o[i] = double(float(out[i]));
  if constexpr (std::is_same_v<T, double>)
    for (size_t i = 0; i < o.size(); i++) o[i] = out[i];
  return o;
}

// Three sequences: a decode row after 13 cached tokens, a 9-token prefill chunk after 5, and a
// fresh 70-row prompt (several work items of queries); pages of 4 tokens scattered in the cache.
TEST(LatentAttention, MatchesNaiveOracleInEveryDtype) {
  LatentAttentionShape s{3, 0, 3, 16, 8, 4, 0.3};
  const std::vector<std::pair<int, int>> rows_pos = {{1, 13}, {9, 5}, {70, 0}};
  std::vector<LatentSeq> seqs;
  std::vector<int32_t> pt;
  int pages = 0;
  for (auto [rows, pos0] : rows_pos) {
    const int n = (pos0 + rows + s.page - 1) / s.page;
    seqs.push_back({s.R, rows, pos0, int32_t(pt.size())});
    for (int i = 0; i < n; i++) pt.push_back(pages++);
    s.R += rows;
  }
  Rng r(5);  // scatter the pages
  for (size_t i = pt.size() - 1; i > 0; i--) std::swap(pt[i], pt[r.below(i + 1)]);
  const auto q = test::random_vec(size_t(s.R) * s.H * s.W(), 1);
  const auto cache = test::random_vec(size_t(pages) * s.page * s.W(), 2);
  const auto want = latent_attention_oracle(q, cache, seqs, pt, s);
  EXPECT_LT(test::rel_error(run_latent<double>(q, cache, seqs, pt, s), want), 1e-13);
  // 16-bit and fp32 kernels read rounded inputs: compare with the oracle on the same inputs
  auto rounded = [](const std::vector<double>& v, auto tag) {
    using T = decltype(tag);
    std::vector<double> o(v.size());
    for (size_t i = 0; i < v.size(); i++) o[i] = double(float(T(float(v[i]))));
    return o;
  };
  const auto want32 = latent_attention_oracle(rounded(q, float{}), rounded(cache, float{}), seqs, pt, s);
  EXPECT_LT(test::rel_error(run_latent<float>(q, cache, seqs, pt, s), want32), 1e-6);
  if (bf16_gemm_works()) {
    const auto wantb = latent_attention_oracle(rounded(q, bf16_t{}), rounded(cache, bf16_t{}), seqs, pt, s);
    EXPECT_LT(test::rel_error(run_latent<bf16_t>(q, cache, seqs, pt, s), wantb), 2e-2);  // P and out rounded to bf16
  } else {
    std::printf("bf16 not checked: this CPU's oneDNN has no bf16 matmul (no AVX512-BF16)\n");
  }
  const auto wanth = latent_attention_oracle(rounded(q, f16_t{}), rounded(cache, f16_t{}), seqs, pt, s);
  EXPECT_LT(test::rel_error(run_latent<f16_t>(q, cache, seqs, pt, s), wanth), 3e-3);
}

TEST(LatentAttention, RejectsInconsistentSequences) {
  LatentAttentionShape s{1, 2, 1, 4, 2, 4, 1.0};
  std::vector<double> q(2 * 6), cache(4 * 6), out(2 * 4);
  std::vector<int32_t> sq = {0, 2, 3, 0}, pt = {0};  // 5 tokens need 2 pages, the table has 1
  EXPECT_THROW(latent_attention_forward(Exec{}, host_tensor(out), host_tensor(q), host_tensor(cache),
                                        host_tensor(sq), host_tensor(pt), s),
               Error);
}

TEST(Ops, SwapAxesAndRopeAtPositions) {
  // (A=2, B=3, width 4) -> columns 1..2 into (B, A, width 3) at offset 1
  std::vector<float> src(24), dst(18, -1.0f);
  std::iota(src.begin(), src.end(), 0.0f);
  swap_axes(Exec{}, host_tensor(dst), host_tensor(src), {2, 3, 2, 4, 1, 3, 1});
  for (int b = 0; b < 3; b++)
    for (int a = 0; a < 2; a++)
      for (int d = 0; d < 2; d++)
        EXPECT_EQ(dst[(b * 2 + a) * 3 + 1 + d], src[(a * 3 + b) * 4 + 1 + d]);
  EXPECT_EQ(dst[0], -1.0f);
  // rope_forward_at with positions n % T is rope_forward
  RopeParams p;
  p.dim = 8;
  const int T = 5, N = 10;
  std::vector<float> cos(T * 4), sin(T * 4);
  rope_tables(Exec{}, host_tensor(cos), host_tensor(sin), T, p);
  auto x = test::random_vec(N * 2 * 8, 3);
  std::vector<float> a(x.begin(), x.end()), b = a;
  std::vector<int32_t> pos(N);
  for (int n = 0; n < N; n++) pos[n] = n % T;
  const RopeLayout l{N, T, 2, 16, 8, 0, 8};
  rope_forward(Exec{}, host_tensor(a), host_tensor(cos), host_tensor(sin), l);
  rope_forward_at(Exec{}, host_tensor(b), host_tensor(cos), host_tensor(sin), host_tensor(pos), l);
  EXPECT_EQ(a, b);
  pos[3] = T;  // outside the tables
  EXPECT_THROW(rope_forward_at(Exec{}, host_tensor(b), host_tensor(cos), host_tensor(sin),
                               host_tensor(pos), l),
               Error);
}

// ---- the engine against the training forward

struct Variant {
  const char* name;
  RouterKind router;
  int q_lora;
  double yarn;
};

ModelConfig engine_config(const Variant& v) {
  ModelConfig c = preset("debug");
  c.vocab = 96;
  c.layers = 3;
  c.dense_layers = 1;
  c.max_seq = 64;
  c.router = v.router;
  c.q_lora = v.q_lora;
  if (v.router == RouterKind::Softmax) c.norm_topk = false, c.route_scale = 1.0;
  if (v.yarn > 1) c.yarn_factor = v.yarn, c.yarn_original_ctx = 16;
  return c;
}

std::vector<float> init_weights(const ModelConfig& c, uint64_t seed) {
  const ParamTable t = build_param_table(c);
  std::vector<float> p(t.total);
  init_params(c, t, p.data(), seed);
  for (const auto& info : t.list) {
    if (info.kind == ParamKind::Buffer)  // routing biases away from zero
      for (size_t i = 0; i < info.numel; i++) p[info.offset + i] = 0.01f * float(int(i % 5) - 2);
    // larger weights than the training init, so attention is far from uniform and the logits
    // spread (a stronger test of the cache's rows and positions)
    else if (info.shape.size() == 2)
      for (size_t i = 0; i < info.numel; i++) p[info.offset + i] *= 4.0f;
  }
  return p;
}

// The training forward (no cache) over the whole sequence as one row; opt says what it writes.
void training_forward(const ModelWeights& w, const std::vector<int32_t>& seq, const ForwardOptions& opt) {
  const int T = int(seq.size());
  WorkspaceConfig wc;
  wc.max = {1, T};
  wc.backward = false;
  Workspace ws(w.config(), w.dtype(), w.device(), wc);
  std::vector<int32_t> row = seq;
  row.push_back(-1);
  forward(w, ws, TrainingLossConfig{}, {Dims{1, T}, row.data()}, opt);
}

// Logits (T, V) of the whole sequence through the training forward (no cache).
std::vector<float> recompute_logits(const ModelWeights& w, const std::vector<int32_t>& seq) {
  std::vector<float> logits(seq.size() * size_t(w.config().vocab));
  ForwardOptions opt;
  opt.logits = logits.data();
  opt.mtp = false;
  training_forward(w, seq, opt);
  return logits;
}

// Worst |cached - recompute| over the rows, relative to the largest |logit|.
double compare_rows(const float* got, const float* want, int rows, int V) {
  double diff = 0, scale = 1e-30;
  for (size_t i = 0; i < size_t(rows) * V; i++) {
    diff = std::max(diff, double(std::fabs(got[i] - want[i])));
    scale = std::max(scale, double(std::fabs(want[i])));
  }
  return diff / scale;
}

// Three sequences with prompts of 5, 19 and 11 tokens: steps of at most 12 rows, so prompts are
// cut into chunks that share steps with other sequences' decode rows; pages of 4 tokens, so
// every sequence spans several pages that interleave with the others'. Every new row asks for
// its logits and every row is compared with the recompute of its whole sequence.
double max_engine_error(const Variant& v, DType dt) {
  const ModelConfig c = engine_config(v);
  ModelWeights w(c, dt);
  w.load(init_weights(c, 11));
  DecodeConfig dc;
  dc.max_rows = 12;
  dc.max_seqs = 4;
  dc.max_logit_rows = 12;  // every row's logits
  dc.page_tokens = 4;
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, dt, c.layers) * 4 * 40;
  DecodeEngine eng(w, dc);
  Rng rng(3);
  std::vector<std::vector<int32_t>> seqs(3);
  const int prompt[3] = {5, 19, 11};
  std::vector<SeqCache> caches(3);
  for (int i = 0; i < 3; i++) {
    for (int k = 0; k < prompt[i]; k++) seqs[i].push_back(int32_t(rng.below(c.vocab)));
    EXPECT_TRUE(eng.cache().reserve(caches[i], 40));
  }
  double worst = 0;
  int decode_steps = 0;
  for (int step = 0; step < 14; step++) {
    std::vector<SeqStep> in;
    std::vector<std::vector<int32_t>> inputs(3);
    int rows = 0;
    for (int i = 0; i < 3; i++) {
      const int cached = caches[i].length, known = int(seqs[i].size());
      const int n = std::min(known - cached, std::max(0, std::min(dc.max_rows - rows, 7)));
      if (n <= 0) continue;
      inputs[i].assign(seqs[i].begin() + cached, seqs[i].begin() + cached + n);
      in.push_back({&caches[i], inputs[i], n});
      rows += n;
    }
    if (in.empty()) break;
    size_t total = 0;
    for (auto& s : in) total += size_t(s.logit_rows);
    std::vector<float> logits(total * c.vocab);
    eng.step(in, logits.data());
    size_t off = 0;
    for (auto& s : in) {
      const int i = int(s.seq - caches.data());
      const auto want = recompute_logits(w, std::vector<int32_t>(seqs[i].begin(),
                                                                 seqs[i].begin() + s.seq->length));
      const int n = s.logit_rows, pos0 = s.seq->length - n;
      worst = std::max(worst, compare_rows(logits.data() + off * c.vocab,
                                           want.data() + size_t(pos0) * c.vocab, n, c.vocab));
      // the sequence continues with its greedy token once its prompt is in
      if (s.seq->length == int(seqs[i].size())) {
        const float* last = logits.data() + (off + n - 1) * c.vocab;
        seqs[i].push_back(int32_t(std::max_element(last, last + c.vocab) - last));
        decode_steps++;
      }
      off += size_t(n);
    }
  }
  EXPECT_GE(decode_steps, 20) << "the schedule must mix prefill chunks and decode rows";
  for (auto& s : caches) eng.cache().release(s);
  EXPECT_EQ(eng.cache().pages_free(), eng.cache().pages());
  return worst;
}

const Variant kVariants[] = {
    {"sigmoid router, q_lora", RouterKind::Sigmoid, 32, 1.0},
    {"softmax router, q_lora", RouterKind::Softmax, 32, 1.0},
    {"sigmoid router, no q_lora, YaRN", RouterKind::Sigmoid, 0, 4.0},
    {"softmax router, no q_lora", RouterKind::Softmax, 0, 1.0},
};

// fp64 weights: the absorbed path is the same math in another order, so it agrees to fp64
// rounding; the logits come back as fp32, so the bound is a few fp32 ulps of the largest logit.
TEST(DecodeEngine, CachedLogitsEqualRecomputeFp64) {
  for (const Variant& v : kVariants) {
    const double e = max_engine_error(v, DType::F64);
    EXPECT_LT(e, 4e-7) << v.name;
  }
}

// fp32 weights: the absorbed order (q_nope W_UK against the latent instead of q_nope against
// W_UK c) and the different GEMM blockings round differently. Bound: 4e-6 of the largest logit
// (about 70 fp32 ulps of it through 3 layers; measured: about 1e-6), printed per variant.
TEST(DecodeEngine, CachedLogitsEqualRecomputeFp32) {
  for (const Variant& v : kVariants) {
    const double e = max_engine_error(v, DType::F32);
    std::printf("%s: max |cached - recompute| / max |logit| = %.3g\n", v.name, e);
    EXPECT_LT(e, 4e-6) << v.name;
  }
}

// The MTP module over the cache equals the training path's MTP logits at the same position.
TEST(DecodeEngine, MtpDraftEqualsTrainingMtpLogits) {
  const ModelConfig c = engine_config(kVariants[0]);
  ModelWeights w(c, DType::F64);
  w.load(init_weights(c, 12));
  const int T = 13;
  Rng rng(4);
  std::vector<int32_t> seq(T);
  for (auto& x : seq) x = int32_t(rng.below(c.vocab));
  // training path: MTP logits of every position (module 1 at t sees h_t and x[t+1])
  std::vector<float> mtp(size_t(T) * c.vocab);
  ForwardOptions opt;
  opt.mtp_logits = mtp.data();
  training_forward(w, seq, opt);
  // engine: prefill 7 tokens, MTP over positions 0..6, then 5 more tokens, MTP over 7..11
  DecodeConfig dc;
  dc.max_rows = 16;
  dc.max_seqs = 1;
  dc.page_tokens = 4;
  dc.mtp = true;
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, w.dtype(), c.layers + 1) * 32;
  DecodeEngine eng(w, dc);
  SeqCache sc;
  ASSERT_TRUE(eng.cache().reserve(sc, 16));
  std::vector<float> logits(size_t(T) * c.vocab), draft(c.vocab);
  auto run = [&](int from, int n, int mtp_to) {
    std::vector<SeqStep> in = {{&sc, std::span<const int32_t>(seq).subspan(from, n), 0}};
    eng.step(in, logits.data());
    std::vector<int32_t> hrows, next;
    for (int j = sc.mtp_length; j < mtp_to; j++) hrows.push_back(j - from), next.push_back(seq[j + 1]);
    std::vector<MtpStep> m = {{&sc, hrows, next}};
    eng.mtp_step(m, draft.data());
    EXPECT_LT(compare_rows(draft.data(), mtp.data() + size_t(mtp_to - 1) * c.vocab, 1, c.vocab), 4e-7)
        << "MTP position " << mtp_to - 1;
  };
  run(0, 7, 7);
  run(7, 5, 12);
  EXPECT_EQ(sc.mtp_length, 12);
}

// ---- scheduler and generation

ModelWeights* f64_model() {
  static ModelWeights* w = [] {
    const ModelConfig c = engine_config(kVariants[0]);
    auto* m = new ModelWeights(c, DType::F64);
    m->load(init_weights(c, 13));
    return m;
  }();
  return w;
}

std::vector<int32_t> tokens(int n, uint64_t seed, int vocab) {
  Rng r(seed);
  std::vector<int32_t> t(static_cast<size_t>(n));
  for (auto& x : t) x = int32_t(r.below(uint64_t(vocab)));
  return t;
}

// Requests that join and leave a running batch produce what each produces alone (greedy and
// seeded sampling), and the cache is whole again afterwards.
TEST(Scheduler, ContinuousBatchingEqualsOneAtATime) {
  const ModelWeights& w = *f64_model();
  const int V = w.config().vocab;
  struct Req {
    int prompt, max_tokens;
    double temperature;
  };
  const Req reqs[] = {{3, 9, 0.0}, {17, 4, 0.0}, {8, 12, 0.9}, {25, 6, 0.7}, {1, 10, 0.0}};
  std::vector<std::vector<int32_t>> alone;
  for (size_t i = 0; i < std::size(reqs); i++) {
    SampleConfig s;
    s.temperature = reqs[i].temperature;
    s.seed = 100 + i;
    s.max_tokens = reqs[i].max_tokens;
    alone.push_back(generate(w, tokens(reqs[i].prompt, i, V), s, 64));
    EXPECT_EQ(int(alone.back().size()), reqs[i].max_tokens);
  }
  DecodeConfig dc;
  dc.max_rows = 10;  // long prompts are chunked across steps
  dc.max_seqs = 3;
  dc.page_tokens = 4;
  // room for about two requests at once: the others wait for pages
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(w.config(), w.dtype(), w.config().layers) * 4 * 16;
  DecodeEngine eng(w, dc);
  Scheduler sched(eng, {3, false});
  std::vector<std::vector<int32_t>> got(std::size(reqs));
  std::vector<std::string> done(std::size(reqs));
  int max_running = 0, max_waiting = 0;
  for (size_t i = 0; i < std::size(reqs); i++) {
    auto r = std::make_unique<GenRequest>();
    r->prompt = tokens(reqs[i].prompt, i, V);
    r->sampling.temperature = reqs[i].temperature;
    r->sampling.seed = 100 + i;
    r->max_tokens = reqs[i].max_tokens;
    r->on_token = [&got, i](int32_t id) { got[i].push_back(id); return true; };
    r->on_done = [&done, i](FinishReason f) { done[i] = finish_reason_name(f); };
    ASSERT_EQ(sched.check(*r), "");
    sched.add(std::move(r));
  }
  while (sched.step()) {
    max_running = std::max(max_running, sched.running());
    max_waiting = std::max(max_waiting, sched.waiting());
  }
  EXPECT_GE(max_running, 2);
  EXPECT_GE(max_waiting, 1) << "the budget should have held requests back";
  for (size_t i = 0; i < std::size(reqs); i++) {
    EXPECT_EQ(got[i], alone[i]) << "request " << i;
    EXPECT_EQ(done[i], "length");
  }
  EXPECT_EQ(eng.cache().pages_free(), eng.cache().pages());
  EXPECT_EQ(eng.cache().pages_unreserved(), eng.cache().pages());
}

TEST(Scheduler, StopsAndRejections) {
  const ModelWeights& w = *f64_model();
  const int V = w.config().vocab;
  SampleConfig s;
  s.temperature = 0;
  s.max_tokens = 12;
  const auto prompt = tokens(6, 1, V);
  const auto full = generate(w, prompt, s, 64);
  ASSERT_EQ(full.size(), 12u);
  s.stop_ids = {full[4]};  // ends before the first occurrence of that token
  const auto cut = generate(w, prompt, s, 64);
  const size_t first = size_t(std::find(full.begin(), full.end(), full[4]) - full.begin());
  EXPECT_EQ(cut, std::vector<int32_t>(full.begin(), full.begin() + first));
  s.stop_ids.clear();
  int seen = 0;  // on_token returning false ends after that token
  EXPECT_EQ(generate(w, prompt, s, 64, [&](int32_t) { return ++seen < 3; }).size(), 3u);
  // the context bounds generation: prompt 6 + 12 tokens in a context of 10 -> 4 tokens
  EXPECT_EQ(generate(w, prompt, s, 10).size(), 5u);  // the last token needs no cache row
  DecodeConfig dc;
  dc.page_tokens = 4;
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(w.config(), w.dtype(), w.config().layers) * 8;
  DecodeEngine eng(w, dc);
  Scheduler sched(eng, {4, false});
  GenRequest r;
  r.prompt = prompt;
  r.max_tokens = 3;
  EXPECT_EQ(sched.check(r), "");
  r.max_tokens = 0;
  EXPECT_NE(sched.check(r).find("max_tokens"), std::string::npos);
  r.max_tokens = 40;  // more than the whole cache
  EXPECT_NE(sched.check(r).find("kv_cache_mb"), std::string::npos);
  r.max_tokens = 2;
  r.prompt.assign(65, 1);
  EXPECT_NE(sched.check(r).find("context"), std::string::npos);
  r.prompt = {V};
  EXPECT_NE(sched.check(r).find("vocabulary"), std::string::npos);
  r.prompt = {1};
  r.sampling.top_p = 0;
  EXPECT_NE(sched.check(r).find("top_p"), std::string::npos);
}

// Greedy speculative decoding emits exactly the greedy tokens; the acceptance rate is counted.
TEST(Scheduler, SpeculativeGreedyEqualsGreedy) {
  const ModelWeights& w = *f64_model();
  for (uint64_t seed : {1, 2}) {
    SampleConfig s;
    s.temperature = 0;
    s.max_tokens = 20;
    const auto prompt = tokens(9, seed, w.config().vocab);
    const auto plain = generate(w, prompt, s, 64);
    s.speculative = true;
    SchedulerStats st;
    const auto spec = generate(w, prompt, s, 64, {}, &st);
    EXPECT_EQ(spec, plain);
    EXPECT_GT(st.drafts, 0);
    EXPECT_LE(st.accepted, st.drafts);
    std::printf("seed %llu: %lld drafts, %lld accepted, %lld steps for 20 tokens\n",
                (unsigned long long)seed, (long long)st.drafts, (long long)st.accepted,
                (long long)st.steps);
  }
  // A model whose drafts are always right (zero final norms: every logit is 0, so both heads
  // answer id 0): each step then emits two tokens, through the acceptance path.
  const ModelConfig c = w.config();
  std::vector<float> p = init_weights(c, 13);
  const ParamTable t = build_param_table(c);
  for (const char* name : {"model.norm.weight", "model.layers.3.shared_head.norm.weight"}) {
    const ParamInfo& info = t.at(name);
    std::fill_n(p.begin() + info.offset, info.numel, 0.0f);
  }
  ModelWeights agree(c, DType::F64);
  agree.load(p);
  SampleConfig g;
  g.temperature = 0;
  g.max_tokens = 20;
  g.speculative = true;
  SchedulerStats st;
  const auto out = generate(agree, tokens(5, 4, c.vocab), g, 64, {}, &st);
  EXPECT_EQ(out, std::vector<int32_t>(20, 0));
  EXPECT_EQ(st.accepted, st.drafts);
  EXPECT_GE(st.accepted, 8);
  EXPECT_LE(st.steps, 12) << "accepted drafts must save steps";
  // sampled speculative decoding runs and stays within the budget
  SampleConfig s;
  s.temperature = 0.8;
  s.max_tokens = 15;
  s.speculative = true;
  EXPECT_EQ(generate(w, tokens(4, 3, w.config().vocab), s, 64).size(), 15u);
}

// The recompute baseline and the cached engine pick the same greedy tokens.
TEST(Generate, CachedEqualsRecomputeGreedy) {
  const ModelWeights& w = *f64_model();
  SampleConfig s;
  s.temperature = 0;
  s.max_tokens = 15;
  const auto prompt = tokens(7, 9, w.config().vocab);
  EXPECT_EQ(generate(w, prompt, s, 64), generate_recompute(w, prompt, s, 64));
}

// ---- sampler

std::map<int32_t, double> frequencies(Sampler& sm, const std::vector<float>& logits, int n,
                                      int32_t draft = -1) {
  std::map<int32_t, double> f;
  for (int i = 0; i < n; i++) {
    bool acc;
    const int32_t id = draft >= 0 ? sm.verify(logits.data(), draft, &acc) : sm.sample(logits.data());
    f[id] += 1.0 / n;
  }
  return f;
}

TEST(Sampler, TransformsAndDistributions) {
  const std::vector<float> logits = {1.0f, 3.0f, 2.0f, 3.0f, -1.0f};
  const int V = 5;
  auto dist = [&](SamplingParams p, std::vector<int32_t> seen = {}) {
    Sampler s(p, V);
    s.observe(seen);
    Candidates c;
    s.distribution(logits.data(), c);
    std::map<int32_t, double> m;
    for (size_t i = 0; i < c.ids.size(); i++) m[c.ids[i]] = c.p[i];
    return m;
  };
  SamplingParams p;
  p.temperature = 0;
  EXPECT_EQ(dist(p), (std::map<int32_t, double>{{1, 1.0}}));  // first maximum
  p.temperature = 1;
  auto full = dist(p);
  double z = 0;
  for (float l : logits) z += std::exp(l - 3.0);
  for (int i = 0; i < V; i++) EXPECT_NEAR(full[i], std::exp(logits[i] - 3.0) / z, 1e-12);
  p.top_k = 2;  // the two 3.0s
  EXPECT_EQ(dist(p).size(), 2u);
  EXPECT_NEAR(dist(p)[1], 0.5, 1e-12);
  p.top_k = 0;
  p.top_p = 0.5;  // 0.5 of the mass: both 3.0s are needed (each ~0.41)
  EXPECT_EQ(dist(p).size(), 2u);
  p.top_p = 1;
  p.min_p = 0.3;  // keeps p >= 0.3 p_max: 3.0, 3.0 and 2.0 (e^-1 = 0.37)
  EXPECT_EQ(dist(p).size(), 3u);
  p.min_p = 0;
  p.repetition_penalty = 3.0;  // token 1 seen: 3/3 = 1 -> token 3 alone on top
  p.temperature = 0;
  EXPECT_EQ(dist(p, {1}), (std::map<int32_t, double>{{3, 1.0}}));
  // draws follow the distribution; the speculative acceptance test preserves it
  p = {};
  p.temperature = 0.7;
  p.seed = 9;
  Sampler a(p, V), b(p, V);
  const auto want = dist(p);
  const int n = 40000;
  const auto fa = frequencies(a, logits, n);
  const auto fb = frequencies(b, logits, n, /*draft=*/2);
  for (auto [id, q] : want) {
    EXPECT_NEAR(fa.count(id) ? fa.at(id) : 0.0, q, 0.01) << id;
    EXPECT_NEAR(fb.count(id) ? fb.at(id) : 0.0, q, 0.01) << "speculative " << id;
  }
  Sampler c1(p, V), c2(p, V);  // a seed fixes the draws
  for (int i = 0; i < 50; i++) EXPECT_EQ(c1.sample(logits.data()), c2.sample(logits.data()));
  SamplingParams bad;
  bad.top_p = 1.5;
  EXPECT_THROW(validate(bad), Error);
  bad = {};
  bad.repetition_penalty = 0;
  EXPECT_THROW(validate(bad), Error);
}

// ---- text

TEST(TextStream, StopStringsAcrossTokensAndUtf8) {
  TextStream t({"END", "\n\n"});
  std::string out;
  for (const char* piece : {"hello ", "E", "N", "ough", " E", "ND", " more"}) out += t.feed(piece);
  EXPECT_TRUE(t.stopped());
  EXPECT_EQ(out, "hello ENough ");
  TextStream u;
  const std::string snow = "\xe2\x98\x83";  // U+2603 in three bytes
  EXPECT_EQ(u.feed(snow.substr(0, 1)), "");
  EXPECT_EQ(u.feed(snow.substr(1, 1)), "");
  EXPECT_EQ(u.feed(snow.substr(2) + "a"), snow + "a");
  TextStream v({"xyz"});
  EXPECT_EQ(v.feed("abx"), "ab");
  EXPECT_EQ(v.flush(), "x");
}

TEST(ChatTemplate, DeepSeekMarkersAndPlainDefault) {
  const std::vector<ChatMessage> msgs = {
      {"system", "S"}, {"user", "U"}, {"assistant", "A"}, {"user", "V"}};
  const ChatPrompt plain = apply_chat_template(TextCodec(), msgs);
  EXPECT_STREQ(plain.template_name, "plain");
  EXPECT_EQ(ids_to_bytes(plain.ids), "S\n\nUser: U\n\nAssistant: A\n\nUser: V\n\nAssistant:");
  EXPECT_EQ(plain.stop_strings, std::vector<std::string>{"\nUser:"});
  EXPECT_THROW(apply_chat_template(TextCodec(), {{"wizard", "x"}}), Error);
  // a tokenizer with DeepSeek-V3's markers as special tokens
  const auto dir = test::temp_dir("chat_template");
  const std::string bos = "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  const std::string eos = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
  const std::string user = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>", asst = "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";
  std::ofstream((dir / "t.txt").string()) << "the cat sat on the mat; the dog sat on the log.\n";
  const auto r = test::run_cli("tokenizer train --input " + (dir / "t.txt").string() +
                               " --vocab_size 280 --specials '" + bos + "," + eos + "," + user + "," +
                               asst + "' --out " + (dir / "t.dsv3tok").string());
  ASSERT_EQ(r.code, 0) << r.out;
  const TextCodec codec((dir / "t.dsv3tok").string());
  const ChatPrompt ds = apply_chat_template(codec, msgs);
  EXPECT_STREQ(ds.template_name, "deepseek-v3");
  EXPECT_EQ(codec.decode(ds.ids), bos + "S" + user + "U" + asst + "A" + eos + user + "V" + asst);
  EXPECT_EQ(ds.ids.front(), codec.special_id(bos));
  EXPECT_EQ(ds.ids.back(), codec.special_id(asst));  // one id, not its bytes
  EXPECT_EQ(ds.stop_ids, std::vector<int32_t>{codec.special_id(eos)});
  std::filesystem::remove_all(dir);
}

// The server's request parser alone: what a valid body becomes, and a 400 naming the field for
// each malformed one (wrong JSON types included: they must never escape as nlohmann exceptions).
TEST(CompletionRequest, ParsesValidBodiesAndNamesTheBadField) {
  const TextCodec bytes;
  const RequestLimits lim{64, 256, 0, 32};
  auto parse = [&](const std::string& body, bool chat) {
    return parse_completion_request(nlohmann::json::parse(body), chat, bytes, lim, 7);
  };
  auto bad = [&](const std::string& body, bool chat) {
    try {
      parse(body, chat);
    } catch (const BadRequest& e) {
      return e.param + ": " + e.message;
    }
    return std::string("accepted");
  };
  CompletionRequest r = parse(R"({"prompt": "Hi", "max_tokens": 5, "temperature": 0, "stop": ["x", "y"]})", false);
  EXPECT_EQ(r.prompt, bytes_to_ids("Hi"));
  EXPECT_EQ(r.max_tokens, 5);
  EXPECT_EQ(r.sampling.temperature, 0.0);
  EXPECT_EQ(r.sampling.seed, 7u);  // the server's default when the body sends none
  EXPECT_EQ(r.stop, (std::vector<std::string>{"x", "y"}));
  EXPECT_FALSE(r.model.has_value());
  r = parse(R"({"model": "m", "prompt": [[1, 2, 3]], "seed": 9, "stream": true})", false);
  EXPECT_EQ(r.prompt, (std::vector<int32_t>{1, 2, 3}));
  EXPECT_EQ(r.model, std::optional<std::string>("m"));
  EXPECT_EQ(r.sampling.seed, 9u);
  EXPECT_TRUE(r.stream);
  EXPECT_EQ(r.max_tokens, 16);  // OpenAI's default for completions
  r = parse(R"({"messages": [{"role": "user", "content": [{"type": "text", "text": "A"},
                                                          {"type": "text", "text": "B"}]}]})", true);
  EXPECT_EQ(ids_to_bytes(r.prompt), "User: AB\n\nAssistant:");
  EXPECT_EQ(r.max_tokens, 32);  // chat: as much as the limit and the context allow
  // a completion's default of 16 stays within a smaller limit
  r = parse_completion_request(nlohmann::json{{"prompt", "x"}}, false, bytes, {64, 256, 0, 8}, 1);
  EXPECT_EQ(r.max_tokens, 8);

  EXPECT_EQ(bad("[1]", false), ": the request body must be a JSON object");
  EXPECT_EQ(bad(R"({"prompt": "x", "model": 5})", false), "model: model must be a string");
  EXPECT_EQ(bad(R"({"prompt": 5})", false).rfind("prompt: prompt must be a string", 0), 0u);
  EXPECT_EQ(bad(R"({"prompt": [1, 256]})", false).rfind("prompt: prompt token id 256", 0), 0u);
  EXPECT_EQ(bad(R"({"prompt": "x", "max_tokens": 0})", false).rfind("max_tokens:", 0), 0u);
  EXPECT_EQ(bad(R"({"prompt": "x", "max_tokens": 33})", false).rfind("max_tokens:", 0), 0u);
  EXPECT_EQ(bad(R"({"prompt": "x", "temperature": "hot"})", false), "temperature: temperature must be a number");
  EXPECT_EQ(bad(R"({"prompt": "x", "stop": [1]})", false).rfind("stop:", 0), 0u);
  EXPECT_EQ(bad(R"({"prompt": "x", "stream_options": {"include_usage": 1}})", false).rfind("include_usage:", 0), 0u);
  EXPECT_EQ(bad(R"({"prompt": "x", "n": 2})", false), "n: n is not supported by this server");
  EXPECT_EQ(bad(R"({"prompt": "x", "seed": 1.5})", false), "seed: seed must be an integer");
  EXPECT_EQ(bad(R"({"messages": []})", true), "messages: messages must be a non-empty array");
  EXPECT_EQ(bad(R"({"messages": [{"role": 1}]})", true), "messages: each message needs a string role");
  // a content part whose "type" is not a string: once an nlohmann type_error (HTTP 500)
  EXPECT_EQ(bad(R"({"messages": [{"role": "user", "content": [{"type": 5, "text": "x"}]}]})", true)
                .rfind("messages: message content parts", 0), 0u);
  EXPECT_EQ(bad(R"({"messages": [{"role": "wizard", "content": "x"}]})", true).rfind("messages:", 0), 0u);
  EXPECT_EQ(bad(R"({"prompt": ")" + std::string(70, 'x') + R"("})", false).rfind("prompt: the prompt has 70 tokens", 0), 0u);
}

TEST(KvCache, ReservationsAndPages) {
  const ModelConfig c = preset("debug");
  KvCache kv(c, DType::F32, Device::CPU, 2, 5, 4);
  EXPECT_EQ(KvCache::latent_bytes_per_token(c, DType::F32, 2), size_t(2 * (32 + 8) * 4));
  EXPECT_EQ(KvCache::mha_bytes_per_token(c, DType::F32, 2), size_t(2 * 2 * (24 + 16) * 4));
  SeqCache a, b;
  EXPECT_TRUE(kv.reserve(a, 9));    // 3 pages
  EXPECT_FALSE(kv.reserve(b, 12));  // 3 more do not fit
  EXPECT_EQ(b.reserved, 0);
  EXPECT_TRUE(kv.reserve(b, 8));
  EXPECT_EQ(kv.pages_unreserved(), 0);
  kv.ensure(a, 5);
  EXPECT_EQ(a.pages.size(), 2u);
  EXPECT_EQ(kv.slot(a, 5), a.pages[1] * 4 + 1);
  EXPECT_THROW(kv.ensure(a, 13), Error);  // beyond its reservation
  kv.release(a);
  EXPECT_EQ(kv.pages_free(), 5);
  EXPECT_EQ(kv.pages_unreserved(), 3);
  EXPECT_THROW(KvCache(c, DType::F32, Device::CPU, 2, 0, 4), Error);
}

// A fork borrows the parent's full pages, owns a copy of its partial page (every layer) and the
// pages it grows into; the budget counts only owned pages; a lender cannot be released first.
TEST(KvCache, ForkBorrowsFullPagesAndCopiesThePartialOne) {
  const ModelConfig c = preset("debug");
  KvCache kv(c, DType::F32, Device::CPU, 2, 8, 4);
  SeqCache p, a, b, big;
  EXPECT_TRUE(kv.reserve(p, 10));  // 3 pages
  kv.ensure(p, 10);
  p.length = 10;
  const int W = kv.width();
  for (int l = 0; l < 2; l++) {  // row value = layer * 1000 + position
    float* d = kv.layer(l).as<float>();
    for (int t = 0; t < 10; t++)
      for (int j = 0; j < W; j++) d[size_t(kv.slot(p, t)) * W + j] = float(l * 1000 + t);
  }
  EXPECT_TRUE(kv.fork(p, a, 13));  // 2 borrowed + copy of the partial + 1 more: 2 own pages
  EXPECT_EQ(a.borrowed, 2);
  EXPECT_EQ(a.reserved, 2);
  EXPECT_EQ(a.length, 10);
  ASSERT_EQ(a.pages.size(), 3u);
  EXPECT_EQ(a.pages[0], p.pages[0]);
  EXPECT_EQ(a.pages[1], p.pages[1]);
  EXPECT_NE(a.pages[2], p.pages[2]);
  for (int l = 0; l < 2; l++)
    for (int t = 0; t < 10; t++)
      EXPECT_EQ(kv.layer(l).as<float>()[size_t(kv.slot(a, t)) * W + W - 1], float(l * 1000 + t));
  EXPECT_FALSE(kv.fork(p, big, 10 + 4 * 4));  // 4 own pages: only 3 unreserved
  EXPECT_TRUE(big.pages.empty() && big.reserved == 0);
  EXPECT_EQ(kv.pages_unreserved(), 3);
  kv.ensure(a, 13);
  EXPECT_EQ(a.pages.size(), 4u);
  EXPECT_THROW(kv.ensure(a, 17), Error);  // beyond its reservation
  EXPECT_TRUE(kv.fork(p, b, 10));
  EXPECT_THROW(kv.release(p), Error);  // a and b borrow from it
  kv.release(a);
  kv.release(b);
  kv.release(p);
  EXPECT_EQ(kv.pages_free(), 8);
  EXPECT_EQ(kv.pages_unreserved(), 8);
}

// Continuations forked from one cached prefix score what each whole sequence scores through
// the training forward: step_logprobs = log_softmax(logits)[target] (the head in chunks of
// max_logit_rows), borrowed pages read right, children of different lengths in one step, one
// cut across two steps.
TEST(DecodeEngine, ForkedContinuationsScoreLikeWholeSequences) {
  const ModelConfig c = engine_config(kVariants[0]);
  ModelWeights w(c, DType::F32);
  w.load(init_weights(c, 5));
  DecodeConfig dc;
  dc.max_rows = 16;
  dc.max_seqs = 4;
  dc.max_logit_rows = 5;
  dc.page_tokens = 4;
  dc.kv_cache_bytes = KvCache::latent_bytes_per_token(c, DType::F32, c.layers) * 4 * 20;
  DecodeEngine eng(w, dc);
  Rng rng(9);
  std::vector<int32_t> context(10);  // the parent caches 9: 2 full pages and 1 token
  for (auto& t : context) t = int32_t(rng.below(c.vocab));
  const int lens[3] = {1, 6, 11};
  std::vector<std::vector<int32_t>> conts(3), inputs(3);
  for (int k = 0; k < 3; k++)
    for (int i = 0; i < lens[k]; i++) {
      inputs[k].push_back(i == 0 ? context.back() : conts[k].back());  // the token before
      conts[k].push_back(int32_t(rng.below(c.vocab)));
    }
  SeqCache parent;
  ASSERT_TRUE(eng.cache().reserve(parent, 9));
  std::vector<SeqStep> in = {{&parent, std::span<const int32_t>(context).first(9), 0}};
  eng.step_logprobs(in, {}, nullptr);
  std::vector<SeqCache> kids(3);
  for (int k = 0; k < 3; k++) ASSERT_TRUE(eng.cache().fork(parent, kids[k], 9 + lens[k]));
  std::vector<double> got(3, 0.0);
  std::vector<int> fed(3, 0);
  int steps = 0;
  while (fed[0] < lens[0] || fed[1] < lens[1] || fed[2] < lens[2]) {  // 1 + 6 + 9 rows, then 2
    in.clear();
    std::vector<int32_t> targets;
    int rows = 0;
    for (int k = 0; k < 3; k++) {
      const int n = std::min(lens[k] - fed[k], dc.max_rows - rows);
      if (n <= 0) continue;
      in.push_back({&kids[k], std::span<const int32_t>(inputs[k]).subspan(size_t(fed[k]), size_t(n)), n});
      targets.insert(targets.end(), conts[k].begin() + fed[k], conts[k].begin() + fed[k] + n);
      rows += n;
    }
    std::vector<float> lp(targets.size());
    eng.step_logprobs(in, targets, lp.data());
    size_t at = 0;
    for (const SeqStep& s : in) {
      const size_t k = size_t(s.seq - kids.data());
      for (int i = 0; i < s.logit_rows; i++) got[k] += lp[at++];
      fed[k] += s.logit_rows;
    }
    steps++;
  }
  EXPECT_EQ(steps, 2);
  for (int k = 0; k < 3; k++) {
    std::vector<int32_t> whole = context;
    whole.insert(whole.end(), conts[k].begin(), conts[k].end() - 1);
    const auto lg = recompute_logits(w, whole);
    double want = 0;
    for (int i = 0; i < lens[k]; i++) {
      const float* row = lg.data() + size_t(9 + i) * c.vocab;
      double mx = row[0], sum = 0;
      for (int j = 0; j < c.vocab; j++) mx = std::max(mx, double(row[j]));
      for (int j = 0; j < c.vocab; j++) sum += std::exp(double(row[j]) - mx);
      want += double(row[conts[k][size_t(i)]]) - mx - std::log(sum);
    }
    // fp32 cache path vs fp32 training path: ~1e-6 relative per logit (CachedLogitsEqual-
    // RecomputeFp32), summed over up to 11 tokens of |log p| ~ 5
    EXPECT_NEAR(got[size_t(k)], want, 2e-4 + 1e-5 * std::fabs(want)) << k;
  }
  for (auto& s : kids) eng.cache().release(s);
  eng.cache().release(parent);
  EXPECT_EQ(eng.cache().pages_free(), eng.cache().pages());
}

}  // namespace
}  // namespace dsv3
