// The host side of the CUDA backend, checked without a GPU: the caching allocator's bookkeeping
// (on a malloc-backed RawDeviceMemory), the launch plans and tile choices of the kernels
// (ops/cuda/launch.h), the grouped-GEMM tile table, the row-major to cuBLASLt mapping, the graph
// cache's CPU behaviour and the fp16 loss scaler that CPU and GPU training share.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <set>
#include <vector>

#include "backend/backend.h"
#include "backend/caching_allocator.h"
#include "core/rng.h"
#include "ops/cuda/gemm_plan.h"
#include "ops/cuda/launch.h"
#include "ops/optimizer.h"
#include "optim/precision.h"
#include "test_util.h"

namespace dsv3::test {
namespace {

namespace cu = ::dsv3::cuda;

// ---- caching allocator ------------------------------------------------------------------------

// Host memory with a capacity, streams as integers, events that remember their stream and whether
// the host waited for them.
class FakeMemory final : public RawDeviceMemory {
 public:
  explicit FakeMemory(size_t capacity) : capacity_(capacity) {}
  ~FakeMemory() override {
    for (auto& [p, n] : live_) std::free(p);
  }
  void* allocate(size_t bytes) override {
    if (used_ + bytes > capacity_) return nullptr;
    void* p = std::malloc(bytes);
    live_[p] = bytes;
    used_ += bytes;
    allocs++;
    return p;
  }
  void release(void* p) override {
    ASSERT_TRUE(live_.count(p));
    used_ -= live_[p];
    live_.erase(p);
    std::free(p);
    releases++;
  }
  void* record(void* stream) override {
    events_.push_back({stream, false, false});
    return reinterpret_cast<void*>(events_.size());  // 1-based handle
  }
  void wait(void* stream, void* event) override { waits.push_back({stream, event}); }
  void synchronize(void* event) override { ev(event).synced = true; }
  void destroy(void* event) override { ev(event).destroyed = true; }
  std::string describe() override { return cat(capacity_ - used_, " bytes free"); }

  struct Ev {
    void* stream;
    bool synced, destroyed;
  };
  Ev& ev(void* e) { return events_.at(reinterpret_cast<size_t>(e) - 1); }
  size_t used() const { return used_; }
  int allocs = 0, releases = 0;
  std::vector<std::pair<void*, void*>> waits;
  std::vector<Ev> events_;

 private:
  size_t capacity_, used_ = 0;
  std::map<void*, size_t> live_;
};

void* S(int i) { return reinterpret_cast<void*>(uintptr_t(i)); }  // a stream
constexpr size_t MiB = size_t(1) << 20;

TEST(CachingAllocator, SizeClassesBoundTheWaste) {
  EXPECT_EQ(CachingAllocator::round_size(0), 512u);
  EXPECT_EQ(CachingAllocator::round_size(1), 512u);
  EXPECT_EQ(CachingAllocator::round_size(512), 512u);
  EXPECT_EQ(CachingAllocator::round_size(513), 1024u);
  EXPECT_EQ(CachingAllocator::round_size(MiB), MiB);
  EXPECT_EQ(CachingAllocator::round_size(MiB + 1), MiB + 64 * 1024);
  EXPECT_EQ(CachingAllocator::round_size(64 * MiB + 1), 66 * MiB);
  Rng r(7);
  for (int i = 0; i < 20000; i++) {
    const size_t b = 1 + r.below(uint64_t(1) << (1 + r.below(33)));  // sizes up to 8 GiB
    const size_t c = CachingAllocator::round_size(b);
    ASSERT_GE(c, b);
    ASSERT_EQ(c % 512, 0u);
    if (b < MiB) ASSERT_LT(c - b, 512u);
    else if (b <= 64 * MiB) ASSERT_LE(double(c - b), b / 16.0 + 1) << b;
    else ASSERT_LT(c - b, 2 * MiB) << b;
    ASSERT_EQ(CachingAllocator::round_size(c), c) << "a class is its own class";
  }
}

TEST(CachingAllocator, ReusesFreedBlocksInStreamOrder) {
  FakeMemory raw(1 << 30);
  CachingAllocator a(raw);
  void* p = a.allocate(1000, S(1));
  EXPECT_EQ(a.stats().in_use, 1000u);
  EXPECT_EQ(a.stats().reserved, 1024u);
  a.free(p, S(1));
  EXPECT_EQ(a.stats().in_use, 0u);
  EXPECT_EQ(a.stats().cached, 1024u);
  void* q = a.allocate(900, S(1));  // same class, same stream: reused, no wait
  EXPECT_EQ(q, p);
  EXPECT_TRUE(raw.waits.empty());
  EXPECT_TRUE(raw.events_[0].destroyed);
  a.free(q, S(1));
  void* r2 = a.allocate(1000, S(2));  // another stream waits for the free's event first
  EXPECT_EQ(r2, p);
  ASSERT_EQ(raw.waits.size(), 1u);
  EXPECT_EQ(raw.waits[0].first, S(2));
  EXPECT_EQ(raw.allocs, 1);
  const auto st = a.stats();
  EXPECT_EQ(st.requests, 3u);
  EXPECT_EQ(st.cache_hits, 2u);
  EXPECT_EQ(st.peak_in_use, 1000u);
  a.free(r2, S(2));
}

TEST(CachingAllocator, AHugeCachedBlockDoesNotServeASmallRequest) {
  FakeMemory raw(1 << 30);
  CachingAllocator a(raw);
  a.free(a.allocate(10 * MiB, S(1)), S(1));
  void* p = a.allocate(MiB, S(1));
  EXPECT_EQ(raw.allocs, 2) << "10 MiB > 1.25 x 1 MiB: a new block";
  void* q = a.allocate(9 * MiB, S(1));  // 10 MiB <= 1.25 x 9 MiB: the cached one
  EXPECT_EQ(raw.allocs, 2);
  EXPECT_EQ(a.stats().reserved, 11 * MiB);
  a.free(p, S(1));
  a.free(q, S(1));
  a.release_cached();
  EXPECT_EQ(a.stats().reserved, 0u);
  EXPECT_EQ(raw.used(), 0u);
  ASSERT_EQ(raw.events_.size(), 3u);  // the 10 MiB free's event went with its reuse
  EXPECT_TRUE(raw.events_[0].destroyed);
  for (size_t i : {1, 2}) EXPECT_TRUE(raw.events_[i].synced && raw.events_[i].destroyed) << "released only after its event";
}

TEST(CachingAllocator, OutOfMemoryReleasesTheCacheThenFailsClearly) {
  FakeMemory raw(8 * MiB);
  CachingAllocator a(raw);
  a.free(a.allocate(6 * MiB, S(1)), S(1));  // cached, holding 6 of 8 MiB
  void* p = a.allocate(4 * MiB, S(1));       // too large for the cache's block (> 1.25x? no: 6 > 5)
  EXPECT_NE(p, nullptr);
  EXPECT_EQ(a.stats().oom_retries, 1u);
  EXPECT_EQ(a.stats().reserved, 4 * MiB);
  try {
    a.allocate(6 * MiB, S(1));
    FAIL() << "allocated past the device";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("out of GPU memory"), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("--batch"), std::string::npos) << "says what to do";
  }
  EXPECT_EQ(a.stats().in_use, 4 * MiB);
  a.free(p, S(1));
  EXPECT_THROW(a.free(reinterpret_cast<void*>(0x1234), S(1)), Error);
}

TEST(CachingAllocator, PeakAndResetPeak) {
  FakeMemory raw(1 << 30);
  CachingAllocator a(raw);
  void* x = a.allocate(3 * MiB, nullptr);
  void* y = a.allocate(5 * MiB, nullptr);
  a.free(x, nullptr);
  EXPECT_EQ(a.stats().peak_in_use, 8 * MiB);
  a.reset_peak();
  EXPECT_EQ(a.stats().peak_in_use, 5 * MiB);
  a.free(y, nullptr);
}

// ---- launch plans ------------------------------------------------------------------------------

TEST(CudaPlans, AttentionPicksTensorCoresForHalfDtypesAndFitsSharedMemory) {
  auto p = cu::plan_attention(192, 128, true, false);  // V3's MLA
  EXPECT_EQ(p.kind, cu::AttentionPlan::TensorCore);
  EXPECT_EQ(p.dqk_pad, 192);
  EXPECT_EQ(p.dv_pad, 128);
  p = cu::plan_attention(12, 8, true, false);
  EXPECT_EQ(p.kind, cu::AttentionPlan::TensorCore);
  EXPECT_EQ(p.dqk_pad, 64);
  EXPECT_EQ(cu::plan_attention(96, 64, true, false).dqk_pad, 128);
  EXPECT_EQ(cu::plan_attention(192, 128, false, false).kind, cu::AttentionPlan::Generic) << "f32";
  EXPECT_EQ(cu::plan_attention(192, 128, true, true).kind, cu::AttentionPlan::Generic) << "forced";
  EXPECT_EQ(cu::plan_attention(256, 128, true, false).kind, cu::AttentionPlan::Generic);
  for (int dqk : {1, 8, 17, 64, 100, 192, 256, 384, 512})
    for (int dv : {1, 8, 64, 128, 200, 512})
      for (bool half : {false, true}) {
        const auto q = cu::plan_attention(dqk, dv, half, false);
        ASSERT_LE(std::max({q.smem_fwd, q.smem_dq, q.smem_dkdv}), cu::kMaxSmemPerBlock) << dqk << "/" << dv;
        if (q.kind == cu::AttentionPlan::TensorCore) {
          ASSERT_GE(q.dqk_pad, dqk);
          ASSERT_GE(q.dv_pad, dv);
          ASSERT_EQ(q.dqk_pad % 16, 0);
          ASSERT_EQ(q.dv_pad % 16, 0);
        }
      }
  EXPECT_THROW(cu::plan_attention(600, 128, false, false), Error);
  // the tensor-core forward at V3's widths: Q, K (64 x 200) and V^T (128 x 72) in bf16
  EXPECT_EQ(cu::attention_tc_smem(192, 128, 0), 2u * (2 * 64 * 200 + 128 * 72));
}

TEST(CudaPlans, ElementwiseAndRowLaunches) {
  for (size_t n : {size_t(1), size_t(255), size_t(256), size_t(1) << 20, size_t(1) << 34}) {
    const cu::Launch1D l = cu::plan_elementwise(n);
    EXPECT_EQ(l.block, 256u);
    EXPECT_GE(l.grid, 1u);
    EXPECT_LE(l.grid, 132u * 16);
    EXPECT_GE(size_t(l.grid) * l.block, std::min<size_t>(n, 132 * 16 * 256)) << n;
  }
  for (size_t w : {size_t(1), size_t(50), size_t(7168), size_t(129280)}) {
    const unsigned t = cu::row_threads(w);
    EXPECT_EQ(t % 32, 0u);
    EXPECT_GE(t, 32u);
    EXPECT_LE(t, 1024u);
  }
  EXPECT_EQ(cu::grouped_gemm_smem(true), size_t(128) * 40 * 2);
  EXPECT_LE(cu::grouped_gemm_smem(false), cu::kDefaultSmem);
}

// Every routed row belongs to exactly one tile, no tile straddles two experts, the grid bound
// holds, for random splits (empty experts included).
TEST(CudaPlans, GroupedGemmTileTableCoversEveryRowOnce) {
  Rng r(3);
  for (int trial = 0; trial < 300; trial++) {
    const int E = 1 + int(r.below(64)), bm = cu::kGemmBM;
    std::vector<int32_t> off(E + 1, 0);
    for (int e = 0; e < E; e++) off[e + 1] = off[e] + (r.below(4) == 0 ? 0 : int(r.below(200)));
    const size_t cap = size_t(off[E]) + r.below(50);
    std::vector<int32_t> prefix(E + 1);
    ASSERT_TRUE(cu::grouped_tile_prefix(off.data(), E, bm, int64_t(cap), prefix.data()));
    ASSERT_LE(size_t(prefix[E]), cu::grouped_tile_bound(cap, E, bm));
    std::vector<int> covered(off[E], 0);
    for (int t = 0; t < int(cu::grouped_tile_bound(cap, E, bm)); t++) {
      const int e = cu::grouped_tile_expert(prefix.data(), E, t);
      if (t >= prefix[E]) {
        ASSERT_EQ(e, -1);
        continue;
      }
      ASSERT_GE(e, 0);
      ASSERT_GT(off[e + 1], off[e]) << "a tile of an expert without rows";
      const int row0 = off[e] + (t - prefix[e]) * bm, rows = std::min(bm, off[e + 1] - row0);
      ASSERT_GT(rows, 0);
      for (int i = row0; i < row0 + rows; i++) covered[i]++;
    }
    for (int i = 0; i < off[E]; i++) ASSERT_EQ(covered[i], 1) << "row " << i;
  }
  std::vector<int32_t> prefix(4);
  const std::vector<int32_t> decreasing = {0, 5, 3, 9}, too_many = {0, 5, 6, 9}, bad_start = {1, 5, 6, 9};
  EXPECT_FALSE(cu::grouped_tile_prefix(decreasing.data(), 3, 64, 100, prefix.data()));
  EXPECT_EQ(prefix[3], 0) << "no tile runs on invalid offsets";
  EXPECT_FALSE(cu::grouped_tile_prefix(too_many.data(), 3, 64, 8, prefix.data()));
  EXPECT_FALSE(cu::grouped_tile_prefix(bad_start.data(), 3, 64, 100, prefix.data()));
}

TEST(CudaPlans, OptimizerBlocksCoverTheSpansExactly) {
  const std::vector<ParamSpan> spans = {{0, 1000, true}, {1024, 40000, false}, {50000, 16384, true}};
  for (size_t block : {cu::kAdamBlock, cu::kSumBlock}) {
    const auto b = cu::span_blocks(std::span<const ParamSpan>(spans), block);
    std::set<uint64_t> seen;
    size_t total = 0;
    for (const auto& x : b) {
      ASSERT_LE(x.numel, block);
      ASSERT_GT(x.numel, 0u);
      for (uint64_t i = x.offset; i < x.offset + x.numel; i++) ASSERT_TRUE(seen.insert(i).second);
      total += x.numel;
    }
    EXPECT_EQ(total, 1000u + 40000 + 16384);
    EXPECT_EQ(b.front().decay, 1u);
    EXPECT_EQ(b[1].decay, 0u);
  }
}

// ---- cuBLASLt mapping ---------------------------------------------------------------------------

// cuBLAS semantics on column-major storage: C(m,n) = op(A) op(B), element (i,j) at C[i + j ldc].
void colmajor_gemm(const cu::LtGemm& g, const std::vector<double>& A, const std::vector<double>& B,
                   std::vector<double>& C) {
  auto at = [](const cu::LtOperand& o, const std::vector<double>& X, int i, int j) {
    // op(X)(i, j): X(i, j) or X(j, i) of the stored rows x cols matrix
    return o.trans ? X[size_t(j) + size_t(i) * o.ld] : X[size_t(i) + size_t(j) * o.ld];
  };
  for (int i = 0; i < g.m; i++)
    for (int j = 0; j < g.n; j++) {
      double s = 0;
      for (int k = 0; k < g.k; k++) s += at(g.a, A, i, k) * at(g.b, B, k, j);
      C[size_t(i) + size_t(j) * g.c.ld] = s;
    }
}

TEST(CudaGemm, RowMajorCallsMapToColumnMajorCublasLt) {
  const int M = 5, N = 7, K = 3;
  for (bool ta : {false, true})
    for (bool tb : {false, true}) {
      // row-major operands with padded leading dimensions
      const int lda = (ta ? M : K) + 2, ldb = (tb ? K : N) + 1, ldc = N + 3;
      const std::vector<double> A = random_vec(size_t(ta ? K : M) * lda, 1), B = random_vec(size_t(tb ? N : K) * ldb, 2);
      std::vector<double> want(size_t(M) * ldc, 0.0), got(size_t(M) * ldc, 0.0);
      for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
          double s = 0;
          for (int k = 0; k < K; k++)
            s += (ta ? A[size_t(k) * lda + i] : A[size_t(i) * lda + k]) *
                 (tb ? B[size_t(j) * ldb + k] : B[size_t(k) * ldb + j]);
          want[size_t(i) * ldc + j] = s;
        }
      const cu::LtGemm g = cu::lt_from_row_major(ta, tb, M, N, K, lda, ldb, ldc);
      EXPECT_EQ(g.a.trans, tb);
      EXPECT_EQ(g.b.trans, ta);
      EXPECT_GE(g.a.ld, g.a.rows) << "cuBLASLt requires ld >= rows";
      EXPECT_GE(g.b.ld, g.b.rows);
      EXPECT_GE(g.c.ld, g.c.rows);
      colmajor_gemm(g, B, A, got);  // cuBLASLt's A is our B
      EXPECT_EQ(got, want) << "ta " << ta << " tb " << tb;
    }
}

// ---- graph cache and loss scaler ----------------------------------------------------------------

TEST(CudaGraphs, OnTheCpuACacheRunsTheRegionEveryTime) {
  backend::GraphCache g(true);
  int runs = 0;
  for (int i = 0; i < 3; i++) g.run(Exec{}, 42, [&] { runs++; });
  EXPECT_EQ(runs, 3);
  EXPECT_EQ(g.graphs(), 0u);
}

// The fp16 dynamic loss scaler: one class, used by CPU and GPU training alike (TrainState owns
// it; the step decides on grads_finite, which the sum-of-squares op computes on either device).
TEST(LossScaler, StateMachineSkipsHalvesAndDoublesInPowersOfTwo) {
  PrecisionConfig pc;
  pc.precision = Precision::FP16;
  pc.loss_scale = 1024;
  pc.loss_scale_window = 3;
  LossScaler s(pc);
  EXPECT_TRUE(s.enabled());
  EXPECT_FALSE(s.update(false));  // overflow: skip, halve
  EXPECT_EQ(s.scale(), 512);
  EXPECT_TRUE(s.update(true));
  EXPECT_TRUE(s.update(true));
  EXPECT_EQ(s.scale(), 512);
  EXPECT_TRUE(s.update(true));  // three clean steps: double
  EXPECT_EQ(s.scale(), 1024);
  EXPECT_EQ(s.overflows(), 1);
  for (int i = 0; i < 20; i++) s.update(false);
  EXPECT_EQ(s.scale(), 1) << "never below 1";
  LossScaler t(pc);
  t.restore(s.state());
  EXPECT_EQ(t.scale(), s.scale());
  pc.precision = Precision::BF16;
  LossScaler off(pc);
  EXPECT_TRUE(off.update(false)) << "bf16 never skips on the scaler's account";
  EXPECT_EQ(off.scale(), 1);
  EXPECT_TRUE(off.state().is_null());
}

}  // namespace
}  // namespace dsv3::test
