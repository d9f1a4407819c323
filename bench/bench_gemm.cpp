// The CPU GEMM comparison behind docs/gemm.md: every engine of src/ops/gemm_cpu.cpp on the GEMM
// shapes of the `tiny` model (N = 2048 token rows), in GFLOP/s, plus the square-matrix peaks.
//
//   OMP_NUM_THREADS=2 build/bench/bench_gemm [--quick] [--only f32|bf16|f16|batch|peak]
//                                            [--shape SUBSTRING]
//   DSV3_SBGEMM_LIB=/path/libopenblas.so ...   adds a column for OpenBLAS cblas_sbgemm (bf16 x
//       bf16 -> f32) from a library built with BUILD_BFLOAT16=1. It is dlopen'ed with its own
//       symbols (RTLD_DEEPBIND), so the product never links it; docs/gemm.md says how to build one.
//
// Each cell: calls are repeated for ~20 ms per sample, 7 samples (3 with --quick), the best
// sample is printed (other jobs on a shared machine only ever slow a sample down). When other
// jobs keep the cores busy, 2-thread numbers are meaningless however many samples are taken;
// docs/gemm.md says how the published ones were measured.
#include <dlfcn.h>
#include <omp.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "core/dtype.h"
#include "core/rng.h"
#include "core/timer.h"
#include "ops/gemm_cpu.h"

using namespace dsv3;
using namespace dsv3::cpu;

namespace {

int g_samples = 7;
std::string g_shape_filter;  // --shape: only shapes whose name contains it
double g_sample_s = 0.02;

// Best GFLOP/s of `fn` (which performs `flops` per call) over the samples.
double time_gflops(double flops, const std::function<void()>& fn) {
  fn();  // warm-up: primitive creation, scratch, page faults
  int reps = 1;
  for (;;) {  // calibrate reps so a sample lasts about g_sample_s
    const double t0 = now_seconds();
    for (int r = 0; r < reps; r++) fn();
    const double t = now_seconds() - t0;
    if (t >= g_sample_s || reps >= (1 << 20)) break;
    reps = t <= 0 ? reps * 16 : std::max(reps + 1, int(reps * g_sample_s / t * 1.1));
  }
  double best = 0;
  for (int s = 0; s < g_samples; s++) {
    const double t0 = now_seconds();
    for (int r = 0; r < reps; r++) fn();
    best = std::max(best, flops * reps / (now_seconds() - t0) / 1e9);
  }
  return best;
}

// A buffer of `n` elements of dtype t filled with N(0,1) values rounded to t.
struct Buf {
  std::vector<char> bytes;
  Buf(size_t n, DType t, uint64_t seed) : bytes(std::max<size_t>(n, 1) * dtype_size(t)) {
    Rng r(seed);
    std::vector<float> f(std::max<size_t>(n, 1));
    for (auto& x : f) x = float(r.normal());
    convert(bytes.data(), t, f.data(), DType::F32, f.size());
  }
  void* data() { return bytes.data(); }
};

// OpenBLAS sbgemm from a separately built library (see the header comment).
using sbgemm_fn = void (*)(int, int, int, int, int, int, float, const uint16_t*, int,
                           const uint16_t*, int, float, float*, int);
sbgemm_fn load_sbgemm() {
  const char* path = std::getenv("DSV3_SBGEMM_LIB");
  if (!path || !*path) return nullptr;
  void* h = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
  if (!h) {
    std::fprintf(stderr, "DSV3_SBGEMM_LIB: %s\n", dlerror());
    return nullptr;
  }
  auto f = reinterpret_cast<sbgemm_fn>(dlsym(h, "cblas_sbgemm"));
  if (!f) std::fprintf(stderr, "DSV3_SBGEMM_LIB: no cblas_sbgemm in %s\n", path);
  return f;
}
sbgemm_fn g_sbgemm = nullptr;
constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS enum values

struct Shape {
  std::string name;
  bool ta, tb;
  int M, N, K, lda, ldb, ldc;
  float beta;
};

// The three GEMMs of a linear layer x(rows, in) -> y(rows, out) with w (out, in): forward
// y = x w^T (overwrite), input gradient dx += dy w, weight gradient dw += dy^T x.
void add_linear(std::vector<Shape>& v, const std::string& name, int rows, int in, int out) {
  v.push_back({name + " fwd", false, true, rows, out, in, in, in, out, 0.0f});
  v.push_back({name + " dx", false, false, rows, in, out, out, in, in, 1.0f});
  v.push_back({name + " dw", true, false, out, in, rows, out, in, in, 1.0f});
}

std::vector<Shape> tiny_shapes(bool quick) {
  std::vector<Shape> v;
  const int T = 2048;
  add_linear(v, "2048x256->128", T, 256, 128);
  add_linear(v, "2048x128->192", T, 128, 192);
  add_linear(v, "2048x256->80", T, 256, 80);
  add_linear(v, "2048x64->256", T, 64, 256);
  add_linear(v, "2048x128->256", T, 128, 256);
  add_linear(v, "2048x256->1536", T, 256, 1536);
  add_linear(v, "2048x768->256", T, 768, 256);
  add_linear(v, "router 2048x256->16", T, 256, 16);
  add_linear(v, "head 256x256->4096", 256, 256, 4096);
  add_linear(v, "expert 512x256->256", 512, 256, 256);
  // Attention blocks of 32 query rows, heads interleaved in the rows (stride 4 heads x dim):
  // scores (32 x 48) x (48 x r) = q k^T and out (32 x r) x (r x 32) = p v.
  for (int r : quick ? std::vector<int>{256} : std::vector<int>{64, 256}) {
    const std::string rs = std::to_string(r);
    v.push_back({"attn qk^T 32x48 . 48x" + rs, false, true, 32, r, 48, 4 * 48, 4 * 48, r, 0.0f});
    v.push_back({"attn pv 32x" + rs + " . " + rs + "x32", false, false, 32, 32, r, r, 4 * 32,
                 4 * 32, 0.0f});
  }
  return v;
}

struct Option {
  std::string name;
  DType ab, c;
  GemmEngine engine;  // ignored when sbgemm
  bool sbgemm = false;
};

void print_table(const std::string& title, const std::vector<Option>& opts,
                 const std::vector<Shape>& shapes) {
  std::printf("\n%s (GFLOP/s, %d threads)\n%-30s", title.c_str(), omp_get_max_threads(), "shape");
  for (const Option& o : opts) std::printf(" %15s", o.name.c_str());
  std::printf("\n");
  for (const Shape& s : shapes) {
    if (s.name.find(g_shape_filter) == std::string::npos) continue;
    std::printf("%-30s", s.name.c_str());
    std::fflush(stdout);
    const size_t an = size_t(s.ta ? s.K : s.M) * s.lda, bn = size_t(s.tb ? s.N : s.K) * s.ldb,
                 cn = size_t(s.M) * s.ldc;
    const double flops = 2.0 * s.M * s.N * s.K;
    for (const Option& o : opts) {
      Buf a(an, o.ab, 1), b(bn, o.ab, 2), c(cn, o.c, 3);
      double g;
      if (o.sbgemm) {
        g = time_gflops(flops, [&] {
          g_sbgemm(kRowMajor, s.ta ? kTrans : kNoTrans, s.tb ? kTrans : kNoTrans, s.M, s.N, s.K,
                   1.0f, (const uint16_t*)a.data(), s.lda, (const uint16_t*)b.data(), s.ldb,
                   s.beta, (float*)c.data(), s.ldc);
        });
      } else {
        g = time_gflops(flops, [&] {
          gemm_on(o.engine, s.ta, s.tb, s.M, s.N, s.K, 1.0f, a.data(), s.lda, b.data(), s.ldb,
                  s.beta, c.data(), s.ldc, o.ab, o.c);
        });
      }
      std::printf(" %15.1f", g);
      std::fflush(stdout);
    }
    std::printf("\n");
  }
}

// MoE experts: 16 GEMMs whose row counts (300..700, ~512 on average) change every step.
std::vector<int> expert_rows(uint64_t step) {
  Rng r(1000 + step);
  std::vector<int> m(16);
  for (int& x : m) x = 300 + int(r.uniform() * 401);
  return m;
}

struct BatchBufs {
  std::vector<Buf> a, b, c;
  std::vector<GemmCall> calls;
};
// kind 0: forward (M = rows, trans_b), 1: input gradient (M = rows), 2: weight gradient (K = rows,
// trans_a); the expert is in -> out.
BatchBufs make_batch(int kind, const std::vector<int>& rows, int in, int out, DType ab, DType c) {
  BatchBufs bb;
  for (size_t e = 0; e < rows.size(); e++) {
    const int R = rows[e];
    GemmCall k{};
    if (kind == 0) k = {R, out, in, nullptr, in, nullptr, in, nullptr, out};
    if (kind == 1) k = {R, in, out, nullptr, out, nullptr, in, nullptr, in};
    if (kind == 2) k = {out, in, R, nullptr, out, nullptr, in, nullptr, in};
    const size_t an = size_t(kind == 2 ? R : k.M) * k.lda, bn = size_t(k.K) * k.ldb,
                 cn = size_t(k.M) * k.ldc;
    bb.a.emplace_back(an, ab, 10 + e);
    bb.b.emplace_back(bn, ab, 20 + e);
    bb.c.emplace_back(cn, c, 30 + e);
    bb.calls.push_back(k);
  }
  for (size_t e = 0; e < rows.size(); e++) {
    bb.calls[e].A = bb.a[e].data();
    bb.calls[e].B = bb.b[e].data();
    bb.calls[e].C = bb.c[e].data();
  }
  return bb;
}

// Expert batches: each option runs `steps` steps, each with fresh row counts, so a per-shape
// primitive cache sees what training shows it (the first steps miss, later ones hit more).
void print_batches(DType ab, DType c, bool quick) {
  struct BOpt {
    std::string name;
    GemmEngine e;
    BatchMode mode;
  };
  const std::string ob = ab == DType::F32 ? "openblas" : "widen+oblas";
  std::vector<BOpt> opts = {{ob + " par", GemmEngine::Blas, BatchMode::Parallel},
                            {ob + " seq", GemmEngine::Blas, BatchMode::Sequential}};
  if (gemm_engine_supports(GemmEngine::Dnnl, ab, c)) {
    opts.push_back({"onednn par", GemmEngine::Dnnl, BatchMode::Parallel});
    opts.push_back({"onednn seq", GemmEngine::Dnnl, BatchMode::Sequential});
    opts.push_back({"onednn-rt par", GemmEngine::DnnlRuntime, BatchMode::Parallel});
    opts.push_back({"onednn-rt seq", GemmEngine::DnnlRuntime, BatchMode::Sequential});
  }
  if (gemm_engine_supports(GemmEngine::DnnlGemmApi, ab, c)) {
    const std::string n = ab == DType::F32 ? "dnnl_sgemm" : "widen+dnnl";
    opts.push_back({n + " par", GemmEngine::DnnlGemmApi, BatchMode::Parallel});
    opts.push_back({n + " seq", GemmEngine::DnnlGemmApi, BatchMode::Sequential});
  }
  const int steps = quick ? 15 : 40;
  std::printf("\nMoE experts %s x %s -> %s: 16 GEMMs, rows 300..700 redrawn each step, %d steps "
              "(GFLOP/s over all steps, best of 3; onednn: cache of %zu primitives, hit rate)\n",
              dtype_name(ab), dtype_name(ab), dtype_name(c), steps, gemm_cache_stats().capacity);
  std::printf("%-30s", "batch");
  for (const BOpt& o : opts) std::printf(" %15s", o.name.c_str());
  std::printf("\n");
  const char* kinds[] = {"fwd", "dx", "dw"};
  for (auto [in, out] : {std::pair{256, 256}, std::pair{128, 256}}) {
    for (int kind = 0; kind < 3; kind++) {
      char label[64];
      std::snprintf(label, sizeof label, "experts %dx%d %s", in, out, kinds[kind]);
      std::printf("%-30s", label);
      std::fflush(stdout);
      std::vector<BatchBufs> per_step;
      double flops = 0;
      for (int s = 0; s < steps; s++) {
        per_step.push_back(make_batch(kind, expert_rows(s), in, out, ab, c));
        for (const GemmCall& k : per_step.back().calls) flops += 2.0 * k.M * k.N * k.K;
      }
      for (const BOpt& o : opts) {
        double best = 0;
        GemmCacheStats st{};
        for (int rep = 0; rep < 3; rep++) {
          gemm_cache_reset(gemm_cache_stats().capacity);  // every repetition starts cold
          const double t0 = now_seconds();
          for (auto& bb : per_step)
            gemm_batch_on(o.e, o.mode, kind == 2, kind == 0, 1.0f, kind == 0 ? 0.0f : 1.0f,
                          bb.calls.data(), int(bb.calls.size()), ab, c);
          best = std::max(best, flops / (now_seconds() - t0) / 1e9);
          st = gemm_cache_stats();
        }
        char cell[32];
        if (o.e == GemmEngine::Dnnl && st.hits + st.misses)
          std::snprintf(cell, sizeof cell, "%.1f (%2.0f%%)", best,
                        100.0 * st.hits / double(st.hits + st.misses));
        else
          std::snprintf(cell, sizeof cell, "%.1f", best);
        std::printf(" %15s", cell);
        std::fflush(stdout);
      }
      std::printf("\n");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  bool quick = false;
  std::string only;
  for (int i = 1; i < argc; i++) {
    if (!std::strcmp(argv[i], "--quick")) quick = true;
    else if (!std::strcmp(argv[i], "--only") && i + 1 < argc) only = argv[++i];
    else if (!std::strcmp(argv[i], "--shape") && i + 1 < argc) g_shape_filter = argv[++i];
    else {
      std::fprintf(stderr, "usage: bench_gemm [--quick] [--only f32|bf16|f16|batch|peak] [--shape SUBSTRING]\n");
      return 2;
    }
  }
  if (quick) g_samples = 3;
  g_sbgemm = load_sbgemm();
  std::printf("bench_gemm: %d OpenMP threads%s\n", omp_get_max_threads(),
              g_sbgemm ? ", with OpenBLAS sbgemm from DSV3_SBGEMM_LIB" : "");
  const auto shapes = tiny_shapes(quick);
  auto want = [&](const char* s) { return only.empty() || only == s; };

  if (want("peak")) {
    std::printf("\nsquare 1536^3 peak (measure_gemm_peak_gflops, auto engine): ");
    for (DType t : {DType::F32, DType::BF16, DType::F16, DType::F64})
      std::printf(" %s %.1f ", dtype_name(t), measure_gemm_peak_gflops(t));
    std::printf("GFLOP/s\n");
  }
  if (want("f32")) {
    print_table("fp32 x fp32 -> fp32",
                {{"openblas", DType::F32, DType::F32, GemmEngine::Blas},
                 {"onednn", DType::F32, DType::F32, GemmEngine::Dnnl},
                 {"onednn-rt", DType::F32, DType::F32, GemmEngine::DnnlRuntime},
                 {"dnnl_sgemm", DType::F32, DType::F32, GemmEngine::DnnlGemmApi}},
                shapes);
  }
  if (want("bf16")) {
    std::vector<Option> o = {{"onednn", DType::BF16, DType::F32, GemmEngine::Dnnl},
                             {"onednn-rt", DType::BF16, DType::F32, GemmEngine::DnnlRuntime},
                             {"widen+dnnl", DType::BF16, DType::F32, GemmEngine::DnnlGemmApi},
                             {"widen+openblas", DType::BF16, DType::F32, GemmEngine::Blas}};
    if (g_sbgemm) o.push_back({"sbgemm", DType::BF16, DType::F32, GemmEngine::Blas, true});
    o.push_back({"onednn >bf16", DType::BF16, DType::BF16, GemmEngine::Dnnl});
    o.push_back({"onednn-rt >bf16", DType::BF16, DType::BF16, GemmEngine::DnnlRuntime});
    o.push_back({"widen+dnnl>bf16", DType::BF16, DType::BF16, GemmEngine::DnnlGemmApi});
    print_table("bf16 x bf16 -> f32 (and -> bf16 C: columns >bf16)", o, shapes);
  }
  if (want("f16")) {
    std::vector<Option> o = {{"widen+dnnl", DType::F16, DType::F32, GemmEngine::DnnlGemmApi},
                             {"widen+openblas", DType::F16, DType::F32, GemmEngine::Blas},
                             {"widen+dnnl>f16", DType::F16, DType::F16, GemmEngine::DnnlGemmApi}};
    if (gemm_engine_supports(GemmEngine::Dnnl, DType::F16, DType::F32))
      o.push_back({"onednn", DType::F16, DType::F32, GemmEngine::Dnnl});
    else
      std::printf("\n(oneDNN 2.6 has no f16 matmul on this CPU: it needs AVX512-FP16)");
    print_table("fp16 x fp16 -> f32 (and -> f16 C: column >f16)", o, shapes);
  }
  if (want("batch")) {
    print_batches(DType::F32, DType::F32, quick);
    print_batches(DType::BF16, DType::F32, quick);
    print_batches(DType::F16, DType::F32, quick);
  }
  return 0;
}
