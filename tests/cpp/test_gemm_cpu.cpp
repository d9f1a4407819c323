// src/ops/gemm_cpu: every (A/B dtype, C dtype, trans_a, trans_b, beta) combination on every engine
// against a naive fp64 loop over the same (already rounded) inputs; odd sizes, strided operands
// with NaN in the padding, zero sizes, accumulation into 16-bit C, batches, calls from inside an
// OpenMP parallel region, and bit-identical results on 1 and 2 threads.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "core/check.h"
#include "core/dtype.h"
#include "ops/gemm_cpu.h"
#include "test_util.h"

namespace dsv3::cpu {
namespace {

double load(DType t, const void* p, size_t i) {
  switch (t) {
    case DType::F64: return static_cast<const double*>(p)[i];
    case DType::F32: return static_cast<const float*>(p)[i];
    case DType::BF16: return bf16_to_f32(static_cast<const uint16_t*>(p)[i]);
    case DType::F16: return f16_to_f32(static_cast<const uint16_t*>(p)[i]);
    default: return 0;
  }
}
void store(DType t, void* p, size_t i, double v) {
  switch (t) {
    case DType::F64: static_cast<double*>(p)[i] = v; return;
    case DType::F32: static_cast<float*>(p)[i] = float(v); return;
    case DType::BF16: static_cast<uint16_t*>(p)[i] = f32_to_bf16(float(v)); return;
    case DType::F16: static_cast<uint16_t*>(p)[i] = f32_to_f16(float(v)); return;
    default: return;
  }
}

// A (rows, cols) matrix stored row-major with row stride ld >= cols in dtype t. The window holds
// N(0,1) values rounded to t; the padding columns hold `pad` (NaN for inputs: any read of it
// would poison the result; a sentinel for C, to check it is left alone).
struct Mat {
  DType t;
  int rows, cols, ld;
  std::vector<char> bytes;
  Mat(DType t, int rows, int cols, int ld, uint64_t seed, double pad)
      : t(t), rows(rows), cols(cols), ld(ld),
        bytes(std::max<size_t>(size_t(rows) * ld, 1) * dtype_size(t)) {
    Rng r(seed);
    for (int i = 0; i < rows; i++)
      for (int j = 0; j < ld; j++) store(t, data(), size_t(i) * ld + j, j < cols ? r.normal() : pad);
  }
  void* data() { return bytes.data(); }
  double at(int i, int j) const { return load(t, bytes.data(), size_t(i) * ld + j); }
};

struct Case {
  bool ta, tb;
  int M, N, K;
  int pad;  // extra elements per row of A, B and C (strided operands when > 0)
  float alpha, beta;
  DType ab, c;
};

std::string describe(GemmEngine e, const Case& k) {
  return cat(gemm_engine_name(e), " ", dtype_name(k.ab), "->", dtype_name(k.c), " ta=", k.ta,
             " tb=", k.tb, " M=", k.M, " N=", k.N, " K=", k.K, " pad=", k.pad,
             " alpha=", k.alpha, " beta=", k.beta);
}

struct Operands {
  Mat A, B, C;
  Operands(const Case& k, uint64_t seed)
      : A(k.ab, k.ta ? k.K : k.M, k.ta ? k.M : k.K, (k.ta ? k.M : k.K) + k.pad, seed,
          std::numeric_limits<double>::quiet_NaN()),
        B(k.ab, k.tb ? k.N : k.K, k.tb ? k.K : k.N, (k.tb ? k.K : k.N) + k.pad, seed + 1,
          std::numeric_limits<double>::quiet_NaN()),
        C(k.c, k.M, k.N, k.N + k.pad, seed + 2, 12345.0) {}
  // Runs case k on engine e with `threads` OpenMP threads, on a copy of C; returns C as stored.
  std::vector<char> run(GemmEngine e, const Case& k, int threads = 0) const {
    Mat c = C;
    const int saved = omp_get_max_threads();
    if (threads) omp_set_num_threads(threads);
    gemm_on(e, k.ta, k.tb, k.M, k.N, k.K, k.alpha, A.bytes.data(), A.ld, B.bytes.data(), B.ld,
            k.beta, c.data(), c.ld, k.ab, k.c);
    omp_set_num_threads(saved);
    return c.bytes;
  }
};

// Relative rounding of storing a value in dtype t (half an ulp, 2^-p for p significant bits):
// bf16 keeps 8 bits (2^-8, not 2^-9: 7 stored + the implicit one), f16 11, f32 24.
double unit_roundoff(DType t) {
  switch (t) {
    case DType::BF16: return std::ldexp(1.0, -8);
    case DType::F16: return std::ldexp(1.0, -11);
    case DType::F64: return std::ldexp(1.0, -53);
    default: return std::ldexp(1.0, -24);
  }
}

// Runs one case on engine e and checks it against the fp64 loop. Returns C as stored.
std::vector<char> check_case(GemmEngine e, const Case& k, uint64_t seed = 7, int threads = 0) {
  const Operands o(k, seed);
  const std::vector<char> out = o.run(e, k, threads);
  const std::string what = describe(e, k);
  // op(A) as (M, K) and op(B) transposed as (N, K), in fp64, so the loop below reads rows.
  std::vector<double> a(size_t(k.M) * k.K), bt(size_t(k.N) * k.K);
  for (int i = 0; i < k.M; i++)
    for (int p = 0; p < k.K; p++) a[size_t(i) * k.K + p] = k.ta ? o.A.at(p, i) : o.A.at(i, p);
  for (int j = 0; j < k.N; j++)
    for (int p = 0; p < k.K; p++) bt[size_t(j) * k.K + p] = k.tb ? o.B.at(j, p) : o.B.at(p, j);
  // The accumulation: fp64 for F64, fp32 (2^-24) otherwise, whatever the storage dtype.
  const double u_acc = k.ab == DType::F64 ? std::ldexp(1.0, -53) : std::ldexp(1.0, -24);
  const double u_out = unit_roundoff(k.c);
  std::vector<double> got, want;
  for (int i = 0; i < k.M; i++) {
    for (int j = 0; j < k.N; j++) {
      double s = 0, abs_s = 0;
      for (int p = 0; p < k.K; p++) {
        const double x = a[size_t(i) * k.K + p] * bt[size_t(j) * k.K + p];
        s += x;
        abs_s += std::abs(x);
      }
      const double c_old = o.C.at(i, j);
      const double ref = k.alpha * s + k.beta * c_old;
      const double v = load(k.c, out.data(), size_t(i) * o.C.ld + j);
      // Per element, rigorously: a K-term fp32 dot product (any order, FMA or not) is within
      // K * 2^-24 * sum|a*b| of the exact one (Higham's gamma_K; K * u << 1 here); then the C
      // rounding adds half an ulp of the result. 2x margin, plus the f16 subnormal spacing.
      const double bound = 2 * (k.K + 2) * u_acc * (std::abs(k.alpha) * abs_s + std::abs(c_old)) +
                           u_out * std::abs(ref) * 1.0001 + 0x1p-25;
      if (!(std::abs(v - ref) <= bound)) {  // also catches NaN
        ADD_FAILURE() << what << " C(" << i << "," << j << ") = " << v << ", want " << ref
                      << " +- " << bound;
        return out;
      }
      got.push_back(v);
      want.push_back(ref);
    }
    for (int j = k.N; j < o.C.ld; j++)  // padding of C untouched
      EXPECT_EQ(0, std::memcmp(&out[(size_t(i) * o.C.ld + j) * dtype_size(k.c)],
                               &o.C.bytes[(size_t(i) * o.C.ld + j) * dtype_size(k.c)],
                               dtype_size(k.c)))
          << what << " wrote the padding of C at (" << i << "," << j << ")";
  }
  // Scale-free norm error ||C - C_ref|| / ||C_ref||. With N(0,1) inputs the summation error is
  // about sqrt(K) * 2^-24 ~ 1e-6 for K <= 300 (1e-13 in fp64); 1e-5 (1e-12) leaves 10x margin
  // and still fails on any wrong element (one wrong element of ~1000 is ~3e-2). A 16-bit C adds
  // its rounding, at most 2^-8 (bf16) / 2^-11 (f16) relative, elementwise and hence norm-wise.
  const double tol = (k.ab == DType::F64 ? 1e-12 : 1e-5) +
                     (k.c == DType::BF16 || k.c == DType::F16 ? u_out : 0.0);
  if (!want.empty()) {
    EXPECT_LE(test::rel_error(got, want), tol) << what;
  }
  return out;
}

const GemmEngine kEngines[] = {GemmEngine::Auto, GemmEngine::Blas, GemmEngine::Dnnl,
                               GemmEngine::DnnlRuntime, GemmEngine::DnnlGemmApi};
const std::pair<DType, DType> kPairs[] = {
    {DType::F64, DType::F64}, {DType::F32, DType::F32}, {DType::BF16, DType::F32},
    {DType::BF16, DType::BF16}, {DType::F16, DType::F32}, {DType::F16, DType::F16}};

TEST(GemmCpu, EveryCombinationMatchesFp64) {
  for (GemmEngine e : kEngines)
    for (auto [ab, c] : kPairs) {
      if (!gemm_engine_supports(e, ab, c)) continue;
      for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++)
          for (float beta : {0.0f, 1.0f}) {
            check_case(e, {bool(ta), bool(tb), 37, 29, 53, 0, 1.0f, beta, ab, c});
            check_case(e, {bool(ta), bool(tb), 37, 29, 53, 5, -0.75f, beta, ab, c});  // strided
            if (HasFailure()) return;
          }
    }
}

TEST(GemmCpu, LargerOddShapes) {
  // Big enough for the blocked / multi-threaded paths of both libraries.
  for (GemmEngine e : kEngines)
    for (auto [ab, c] : kPairs) {
      if (!gemm_engine_supports(e, ab, c)) continue;
      for (int ta = 0; ta < 2; ta++)
        for (int tb = 0; tb < 2; tb++) {
          check_case(e, {bool(ta), bool(tb), 131, 67, 301, 3, 1.0f, 1.0f, ab, c});
          if (HasFailure()) return;
        }
    }
}

TEST(GemmCpu, AttentionBlocksWithStridedOperands) {
  // (32 x 48) x (48 x r) with q, k rows interleaved over 4 heads (lda = ldb = 4*48), and
  // (32 x r) x (r x 32) with v rows interleaved (ldb = 4*32): the shapes of the attention tiles.
  for (auto [ab, c] : kPairs)
    for (int r : {1, 17, 256}) {
      check_case(GemmEngine::Auto, {false, true, 32, r, 48, 3 * 48, 1.0f, 0.0f, ab, c});
      check_case(GemmEngine::Auto, {false, false, 32, 32, r, 3 * 32, 1.0f, 1.0f, ab, c});
      if (HasFailure()) return;
    }
}

TEST(GemmCpu, ZeroSizes) {
  for (GemmEngine e : kEngines)
    for (auto [ab, c] : kPairs) {
      if (!gemm_engine_supports(e, ab, c)) continue;
      for (float beta : {0.0f, 1.0f}) {
        // K == 0: C = beta * C, so beta 0 zeroes the window (and only the window).
        check_case(e, {false, true, 5, 7, 0, 2, 1.0f, beta, ab, c});
        check_case(e, {true, false, 5, 7, 0, 0, 1.0f, beta, ab, c});
        // M == 0 or N == 0: nothing to write; null pointers are fine.
        gemm_on(e, false, false, 0, 7, 3, 1.0f, nullptr, 3, nullptr, 7, beta, nullptr, 7, ab, c);
        gemm_on(e, false, false, 4, 0, 3, 1.0f, nullptr, 3, nullptr, 1, beta, nullptr, 1, ab, c);
        gemm_on(e, false, false, 0, 0, 0, 1.0f, nullptr, 1, nullptr, 1, beta, nullptr, 1, ab, c);
      }
      // alpha == 0 behaves like K == 0 (A and B are not read).
      check_case(e, {false, false, 6, 5, 4, 1, 0.0f, 0.0f, ab, c});
      if (HasFailure()) return;
    }
}

TEST(GemmCpu, AccumulatesIntoSixteenBitCWithOneRounding) {
  // Repeated beta = 1 into a bf16/f16 C: each call must round once (fp32 sum of A*B and the old C,
  // then one rounding). check_case bounds every element by half an ulp of C plus the fp32
  // summation error; rounding A*B first and then the sum would break it on some elements.
  for (GemmEngine e : kEngines)
    for (DType t : {DType::BF16, DType::F16}) {
      if (!gemm_engine_supports(e, t, t)) continue;
      for (int ta = 0; ta < 2; ta++)
        check_case(e, {bool(ta), true, 64, 96, 128, 0, 1.0f, 1.0f, t, t}, 11);
    }
}

TEST(GemmCpu, RejectsBadArguments) {
  float x[4] = {};
  EXPECT_THROW(gemm(false, false, 1, 1, 1, 1.0f, x, 1, x, 1, 0.0f, x, 1, DType::F64, DType::F32),
               Error);
  EXPECT_THROW(gemm(false, false, 1, 1, 1, 1.0f, x, 1, x, 1, 0.0f, x, 1, DType::BF16, DType::F16),
               Error);
  EXPECT_THROW(gemm(false, false, 1, 1, 1, 1.0f, x, 1, x, 1, 0.0f, x, 1, DType::F32, DType::BF16),
               Error);
  EXPECT_THROW(gemm(false, false, 1, 1, 1, 1.0f, x, 1, x, 1, 0.5f, x, 1, DType::F32, DType::F32),
               Error);
  EXPECT_THROW(gemm(false, false, 2, 2, 2, 1.0f, x, 1, x, 2, 0.0f, x, 2, DType::F32, DType::F32),
               Error);  // lda < K
  EXPECT_THROW(gemm(false, false, 1, 1, 1, 1.0f, x, 1, x, 1, 0.0f, x, 1, DType::I32, DType::I32),
               Error);
}

// GEMMs shaped like the `tiny` model's (x(rows, in) -> y(rows, out), and its two gradients), big
// enough that every library threads and blocks, and with K = rows > 2 x 320 for the weight
// gradient (OpenBLAS's K blocking, see blas_k_sliced): each must give the same bits on 1 and on
// 2 threads.
struct Linear {
  int rows, in, out;
};
const Linear kTinyLinears[] = {{1024, 256, 128}, {1024, 256, 16}, {700, 256, 256}, {256, 256, 1024}};

Case linear_case(const Linear& l, int kind, DType ab, DType c) {
  // kind 0: y = x w^T; 1: dx += dy w; 2: dw += dy^T x (K = rows)
  if (kind == 0) return {false, true, l.rows, l.out, l.in, 0, 1.0f, 0.0f, ab, c};
  if (kind == 1) return {false, false, l.rows, l.in, l.out, 0, 1.0f, 1.0f, ab, c};
  return {true, false, l.out, l.in, l.rows, 0, 1.0f, 1.0f, ab, c};
}

// Thread-count independence of single calls is a property of the libraries' kernels, not of
// gemm_cpu: measured on AVX-512 (docs/gemm.md "Determinism"), where it is asserted. On AVX2 CPUs
// OpenBLAS's Haswell kernels and oneDNN's AVX2 gemm split the work differently on 1 and 2 threads
// (seen on an AVX2 EPYC: 38 of 60 engine/shape pairs differ), so there the count is printed and
// only run-to-run determinism at a fixed thread count is asserted. gemm_batch is independent of
// the thread count by construction everywhere (BatchMatchesSingleCallsOnAnyThreadCount).
bool single_calls_thread_invariant() { return __builtin_cpu_supports("avx512f"); }

TEST(GemmCpu, SameBitsOnOneAndTwoThreads) {
  const bool invariant = single_calls_thread_invariant();
  int differ = 0, total = 0;
  for (auto [ab, c] : kPairs)
    for (const Linear& l : kTinyLinears)
      for (int kind = 0; kind < 3; kind++) {
        const Case k = linear_case(l, kind, ab, c);
        const Operands o(k, 99);
        for (GemmEngine e : {GemmEngine::Blas, GemmEngine::Dnnl, GemmEngine::DnnlRuntime,
                             GemmEngine::DnnlGemmApi})
          if (gemm_engine_supports(e, ab, c)) {
            const auto two = o.run(e, k, 2);
            EXPECT_TRUE(two == o.run(e, k, 2)) << describe(e, k) << " differs run to run";
            const bool same = o.run(e, k, 1) == two;
            if (invariant) EXPECT_TRUE(same) << describe(e, k);
            differ += !same, total++;
          }
      }
  if (!invariant)
    std::printf("no AVX-512: %d of %d engine/shape pairs give other bits on 1 and 2 threads "
                "(not asserted here; see docs/gemm.md)\n", differ, total);
}

// An expert batch: row counts vary per call (M for forward, K for the weight gradient).
struct Batch {
  std::vector<Case> cases;
  std::vector<Operands> ops;
  uint64_t seed(size_t i) const { return 500 + i; }
  Batch(bool weight_grad, DType ab, DType c) {
    for (int r : {301, 0, 77, 512, 1, 700, 128, 33}) {
      cases.push_back(weight_grad ? Case{true, false, 64, 48, r, 2, 1.0f, 1.0f, ab, c}
                                  : Case{false, true, r, 64, 48, 2, 1.0f, 0.0f, ab, c});
      ops.emplace_back(cases.back(), seed(cases.size() - 1));
    }
  }
  // gemm_batch_on over copies of the C's; returns them.
  std::vector<std::vector<char>> run(GemmEngine e, BatchMode mode, int threads) const {
    std::vector<std::vector<char>> out;
    std::vector<GemmCall> calls;
    for (const Operands& o : ops) out.push_back(o.C.bytes);
    for (size_t i = 0; i < ops.size(); i++) {
      const Case& k = cases[i];
      calls.push_back({k.M, k.N, k.K, ops[i].A.bytes.data(), ops[i].A.ld, ops[i].B.bytes.data(),
                       ops[i].B.ld, out[i].data(), ops[i].C.ld});
    }
    const Case& k = cases[0];
    const int saved = omp_get_max_threads();
    omp_set_num_threads(threads);
    gemm_batch_on(e, mode, k.ta, k.tb, k.alpha, k.beta, calls.data(), int(calls.size()), k.ab,
                  k.c);
    omp_set_num_threads(saved);
    return out;
  }
};

TEST(GemmCpu, BatchMatchesSingleCallsOnAnyThreadCount) {
  for (auto [ab, c] : kPairs)
    for (bool wg : {false, true}) {
      const Batch b(wg, ab, c);
      for (GemmEngine e : {GemmEngine::Auto, GemmEngine::Blas, GemmEngine::Dnnl}) {
        if (!gemm_engine_supports(e, ab, c)) continue;
        const std::string what = cat(gemm_engine_name(e), " ", dtype_name(ab), "->",
                                     dtype_name(c), wg ? " weight-grad" : " forward");
        // Each call against fp64, and the same bits as that call made alone.
        const auto want = b.run(e, BatchMode::Sequential, 1);
        for (size_t i = 0; i < b.cases.size(); i++)
          EXPECT_TRUE(check_case(e, b.cases[i], b.seed(i), 1) == want[i]) << what << " call " << i;
        EXPECT_TRUE(b.run(e, BatchMode::Parallel, 2) == want) << what;
        // Sequential runs each call on every thread: a single call's property (see above)
        if (single_calls_thread_invariant())
          EXPECT_TRUE(b.run(e, BatchMode::Sequential, 2) == want) << what;
        EXPECT_TRUE(b.run(e, BatchMode::Auto, 2) == want) << what;
      }
    }
  gemm_batch(false, false, 1.0f, 0.0f, nullptr, 0, DType::F32, DType::F32);  // empty batch
}

TEST(GemmCpu, InsideAParallelRegionRunsOnTheCallingThread) {
  // Each thread of our own parallel region runs its own GEMM (as an op's parallel loop would);
  // results must equal the same GEMM issued outside any region.
  for (auto [ab, c] : kPairs) {
    const Linear l{512, 256, 128};
    std::vector<Case> cases;
    std::vector<Operands> ops;
    std::vector<std::vector<char>> outside, inside(4);
    for (int j = 0; j < 4; j++) {
      cases.push_back(linear_case(l, j % 3, ab, c));
      ops.emplace_back(cases[j], 40 + j);
      outside.push_back(ops[j].run(GemmEngine::Auto, cases[j]));
    }
#pragma omp parallel for num_threads(2) schedule(static, 1)
    for (int j = 0; j < 4; j++) inside[j] = ops[j].run(GemmEngine::Auto, cases[j]);
    for (int j = 0; j < 4; j++)
      EXPECT_TRUE(inside[j] == outside[j]) << describe(GemmEngine::Auto, cases[j]);
  }
}

TEST(GemmCpu, PrimitiveCacheIsBounded) {
  // bf16 where oneDNN has it (the dtype training uses the cache for), else fp32 primitives
  const DType t = gemm_engine_supports(GemmEngine::Dnnl, DType::BF16, DType::F32) ? DType::BF16
                                                                                  : DType::F32;
  const size_t keep = gemm_cache_stats().capacity;
  gemm_cache_reset(4);
  for (int round = 0; round < 2; round++)
    for (int m = 1; m <= 10; m++)
      check_case(GemmEngine::Dnnl, {false, true, m, 16, 24, 0, 1.0f, 0.0f, t, DType::F32});
  const GemmCacheStats s = gemm_cache_stats();
  EXPECT_LE(s.entries, 4u);
  EXPECT_EQ(s.misses, 20u);  // LRU over 10 shapes cycling through 4 slots never hits
  EXPECT_EQ(s.evictions, 16u);
  check_case(GemmEngine::Dnnl, {false, true, 10, 16, 24, 0, 1.0f, 0.0f, t, DType::F32});
  EXPECT_EQ(gemm_cache_stats().hits, 1u);
  gemm_cache_reset(keep);
}

int process_threads() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
  return -1;
}

TEST(GemmCpu, OneThreadPoolForBothLibraries) {
  // OpenBLAS (openblas-openmp) and oneDNN (DNNL_CPU_RUNTIME=OMP) both run on libgomp's pool, the
  // one our own `omp parallel` regions use: after GEMMs on every engine, from outside and inside
  // a parallel region, the process has no more threads than OpenMP's team (a library with its own
  // pool would add its workers).
  for (GemmEngine e : kEngines)
    for (auto [ab, c] : kPairs)
      if (gemm_engine_supports(e, ab, c)) {
        check_case(e, {false, true, 200, 300, 256, 0, 1.0f, 0.0f, ab, c});
        const Case k = linear_case({64, 64, 64}, 0, ab, c);
        const Operands o(k, 5);
#pragma omp parallel num_threads(2)
        o.run(e, k);
      }
  const int threads = process_threads();
  if (threads < 0) GTEST_SKIP() << "no /proc/self/status";
  EXPECT_LE(threads, std::max(omp_get_max_threads(), 2));
}

TEST(GemmCpu, MeasuresAPeak) {
  for (DType t : {DType::F32, DType::BF16}) EXPECT_GT(measure_gemm_peak_gflops(t), 1.0);
}

}  // namespace
}  // namespace dsv3::cpu
