#include "ops/gemm_cpu.h"

#include <cblas.h>
#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <list>
#include <memory>
#include <mutex>
#include <numeric>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "core/check.h"
#include "core/timer.h"

namespace dsv3::cpu {
namespace {

// One GEMM's arguments, as gemm() receives them.
struct Args {
  bool ta, tb;
  int M, N, K;
  float alpha;
  const void* A;
  int lda;
  const void* B;
  int ldb;
  float beta;
  void* C;
  int ldc;
  DType ab, c;
};

bool supported_pair(DType ab, DType c) {
  switch (ab) {
    case DType::F64: return c == DType::F64;
    case DType::F32: return c == DType::F32;
    case DType::BF16: case DType::F16: return c == DType::F32 || c == ab;
    default: return false;
  }
}

void check_args(const Args& g) {
  DSV3_CHECK(supported_pair(g.ab, g.c), "gemm: unsupported dtypes A/B ", dtype_name(g.ab), ", C ",
             dtype_name(g.c), " (C must be f32 or the input dtype; f64 inputs need f64 C)");
  DSV3_CHECK(g.beta == 0.0f || g.beta == 1.0f, "gemm: beta must be 0 or 1, got ", g.beta);
  DSV3_CHECK(g.M >= 0 && g.N >= 0 && g.K >= 0, "gemm: negative size M=", g.M, " N=", g.N,
             " K=", g.K);
  if (g.M == 0 || g.N == 0) return;  // nothing is read or written
  DSV3_CHECK(g.C && g.ldc >= g.N, "gemm: C is null or ldc (", g.ldc, ") < N (", g.N, ")");
  if (g.K == 0 || g.alpha == 0.0f) return;  // A and B are not read
  DSV3_CHECK(g.A && g.lda >= (g.ta ? g.M : g.K), "gemm: A is null or lda (", g.lda,
             ") < its row length");
  DSV3_CHECK(g.B && g.ldb >= (g.tb ? g.K : g.N), "gemm: B is null or ldb (", g.ldb,
             ") < its row length");
}

// Threads a GEMM issued from here may use: one inside an OpenMP parallel region.
int usable_threads() { return omp_in_parallel() ? 1 : omp_get_max_threads(); }

// Inside a parallel region (or anywhere, with force), sets this thread's nthreads ICV to 1 for the
// scope, so libraries that plan their work from omp_get_max_threads() (oneDNN does, at primitive
// creation and execution) plan for the one thread they will get. The ICV is per task: other
// threads are unaffected.
struct SingleThreadScope {
  int saved = 0;
  explicit SingleThreadScope(bool force = false) {
    if ((force || omp_in_parallel()) && omp_get_max_threads() != 1) {
      saved = omp_get_max_threads();
      omp_set_num_threads(1);
    }
  }
  ~SingleThreadScope() {
    if (saved) omp_set_num_threads(saved);
  }
};

// ---- fp16/bf16 <-> fp32 rows ---------------------------------------------------------------

void widen_row(float* d, const void* s, DType t, int n) {
  const uint16_t* h = static_cast<const uint16_t*>(s);
  int j = 0;
  if (t == DType::BF16) {
    for (; j < n; j++) d[j] = bf16_to_f32(h[j]);  // a shift: vectorised by the compiler
    return;
  }
#if defined(__AVX512F__)
  for (; j + 16 <= n; j += 16)  // vcvtph2ps is exact, like f16_to_f32
    _mm512_storeu_ps(d + j, _mm512_maskz_cvtph_ps(__mmask16(0xffff),
                                                   _mm256_loadu_si256((const __m256i*)(h + j))));
#elif defined(__F16C__)  // AVX2 machines: 8 at a time (the scalar fallback made fp16 3x fp32)
  for (; j + 8 <= n; j += 8)
    _mm256_storeu_ps(d + j, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i*)(h + j))));
#endif
  for (; j < n; j++) d[j] = f16_to_f32(h[j]);
}

void narrow_row(void* d, DType t, const float* s, int n) {
  uint16_t* h = static_cast<uint16_t*>(d);
  int j = 0;
  if (t == DType::BF16) {
    for (; j < n; j++) h[j] = f32_to_bf16(s[j]);
    return;
  }
#if defined(__AVX512F__)
  // vcvtps2ph with round-to-nearest-even: the same result as f32_to_f16 except for NaN payloads.
  for (; j + 16 <= n; j += 16)
    _mm256_storeu_si256((__m256i*)(h + j),
                        _mm512_maskz_cvtps_ph(__mmask16(0xffff), _mm512_loadu_ps(s + j),
                                              _MM_FROUND_TO_NEAREST_INT));
#elif defined(__F16C__)
  for (; j + 8 <= n; j += 8)
    _mm_storeu_si128((__m128i*)(h + j), _mm256_cvtps_ph(_mm256_loadu_ps(s + j),
                                                        _MM_FROUND_TO_NEAREST_INT));
#endif
  for (; j < n; j++) h[j] = f32_to_f16(s[j]);
}

// Per-thread scratch that only grows (64-byte aligned for the vector loads).
struct Scratch {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> p;
  size_t bytes = 0;
  void* get(size_t n) {
    if (n > bytes) {
      n = (n + 4095) & ~size_t(4095);
      p.reset(std::aligned_alloc(64, n));
      DSV3_CHECK(p, "gemm: cannot allocate ", n, " bytes of scratch");
      bytes = n;
    }
    return p.get();
  }
};
struct ThreadScratch {
  Scratch a, b, c, dnnl;
};
ThreadScratch& scratch() {
  thread_local ThreadScratch s;
  return s;
}

// ---- OpenBLAS ------------------------------------------------------------------------------

CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

// OpenBLAS splits K into blocks of at most GEMM_Q (256..448 for sgemm on x86-64, >= 128 for
// dgemm) and adds each block's product into C; its single- and multi-threaded drivers halve a
// remainder between Q and 2Q differently (level3.c rounds to the unroll, level3_thread.c does
// not), so for K > Q the bits would depend on the thread count. Calling it on K slices no larger
// than any Q, accumulating into C ourselves, fixes the summation order: one (K <= slice) pass
// per slice in both drivers, whatever the thread count. Costs one extra C pass per slice.
template <typename T, typename Fn>
void blas_k_sliced(const Args& g, const T* A, int lda, const T* B, int ldb, T* C, int ldc,
                   int slice, Fn gemm_fn) {
  for (int k0 = 0; k0 < g.K; k0 += slice) {
    const int kc = std::min(slice, g.K - k0);
    const T* a = g.ta ? A + size_t(k0) * lda : A + k0;  // op(A) columns k0.. = rows of A^T
    const T* b = g.tb ? B + k0 : B + size_t(k0) * ldb;
    gemm_fn(CblasRowMajor, tr(g.ta), tr(g.tb), g.M, g.N, kc, T(g.alpha), a, lda, b, ldb,
            k0 == 0 ? T(g.beta) : T(1), C, ldc);
  }
}
constexpr int kSgemmSlice = 256, kDgemmSlice = 128;

// An fp32 GEMM on (already fp32) operands: C = alpha op(A) op(B) + beta C with g's flags and sizes.
using Sgemm = void (*)(const Args& g, const float* A, int lda, const float* B, int ldb, float* C,
                       int ldc);

void openblas_sgemm(const Args& g, const float* A, int lda, const float* B, int ldb, float* C,
                    int ldc) {
  blas_k_sliced<float>(g, A, lda, B, ldb, C, ldc, kSgemmSlice, cblas_sgemm);
}

// 16-bit storage, fp32 compute. C is cut into fixed blocks of kWidenBlock rows (or columns, when
// N > M); a block needs its slice of op(A) (or op(B)) and all of the other operand. Each thread
// widens the other operand once into its own scratch and, per block it takes, that block's slice
// (and C block, for a 16-bit C), then runs a single-threaded fp32 GEMM on them. So every widened
// value is written and read by the same core: widening on one core for a GEMM that reads it on
// another costs a cache-line transfer per 16 values, which measured 2x slower end to end. The
// blocks, and so the bits, do not depend on the thread count.
constexpr int kWidenBlock = 128;

// The (rows, cols) window at (r0, c0) of a 16-bit matrix with row stride ld, into compact fp32.
void widen_window(float* dst, const void* src, DType t, int ld, int r0, int c0, int rows,
                  int cols) {
  const uint16_t* p = static_cast<const uint16_t*>(src) + size_t(r0) * ld + c0;
  for (int i = 0; i < rows; i++) widen_row(dst + size_t(i) * cols, p + size_t(i) * ld, t, cols);
}
void narrow_window(void* dst, DType t, int ld, int r0, int c0, const float* src, int rows,
                   int cols) {
  uint16_t* p = static_cast<uint16_t*>(dst) + size_t(r0) * ld + c0;
  for (int i = 0; i < rows; i++) narrow_row(p + size_t(i) * ld, t, src + size_t(i) * cols, cols);
}

void run_widened(const Args& g, Sgemm sgemm) {
  const bool by_m = g.M >= g.N;  // blocks of C rows, else of C columns
  const int len = by_m ? g.M : g.N, blocks = (len + kWidenBlock - 1) / kWidenBlock;
  const int ar = g.ta ? g.K : g.M, ac = g.ta ? g.M : g.K;  // A and B as stored
  const int br = g.tb ? g.N : g.K, bc = g.tb ? g.K : g.N;

  // Block blk of C, on this thread; `whole` is this thread's widened B (by_m) or A.
  auto block = [&](int blk, const float* whole, ThreadScratch& s) {
    const int x0 = blk * kWidenBlock, xn = std::min(kWidenBlock, len - x0);
    Args sub = g;
    const float *a, *b;
    int lda, ldb;
    if (by_m) {  // op(A) rows x0..x0+xn: rows of A, or columns of A^T as stored
      sub.M = xn;
      float* p = static_cast<float*>(s.a.get(size_t(xn) * g.K * 4));
      if (g.ta) {
        widen_window(p, g.A, g.ab, g.lda, 0, x0, g.K, xn);
        lda = xn;
      } else {
        widen_window(p, g.A, g.ab, g.lda, x0, 0, xn, g.K);
        lda = g.K;
      }
      a = p, b = whole, ldb = bc;
    } else {  // op(B) columns x0..x0+xn: columns of B, or rows of B^T as stored
      sub.N = xn;
      float* p = static_cast<float*>(s.b.get(size_t(xn) * g.K * 4));
      if (g.tb) {
        widen_window(p, g.B, g.ab, g.ldb, x0, 0, xn, g.K);
        ldb = g.K;
      } else {
        widen_window(p, g.B, g.ab, g.ldb, 0, x0, g.K, xn);
        ldb = xn;
      }
      a = whole, lda = ac, b = p;
    }
    const int r0 = by_m ? x0 : 0, c0 = by_m ? 0 : x0;
    if (g.c == DType::F32) {
      sgemm(sub, a, lda, b, ldb, static_cast<float*>(g.C) + size_t(r0) * g.ldc + c0, g.ldc);
      return;
    }
    float* c = static_cast<float*>(s.c.get(size_t(sub.M) * sub.N * 4));
    if (g.beta != 0.0f) widen_window(c, g.C, g.c, g.ldc, r0, c0, sub.M, sub.N);
    sgemm(sub, a, lda, b, ldb, c, sub.N);
    narrow_window(g.C, g.c, g.ldc, r0, c0, c, sub.M, sub.N);
  };

  std::exception_ptr err;
  std::mutex err_mu;
  auto keep_error = [&] {
    std::lock_guard<std::mutex> lock(err_mu);
    if (!err) err = std::current_exception();
  };
  // Run by every thread of our team (team = true; every thread reaches the `omp for`, error or
  // not), or by the caller alone. Not an orphaned `omp for` then: inside a caller's parallel
  // region it would bind to that region's team.
  auto worker = [&](bool team) {
    SingleThreadScope single(true);  // the blocks' GEMMs use this thread only
    ThreadScratch& s = scratch();
    float* whole = nullptr;  // s.b (by_m) or s.a; the slices use the other one
    try {
      if (by_m) {
        whole = static_cast<float*>(s.b.get(size_t(br) * bc * 4));
        widen_window(whole, g.B, g.ab, g.ldb, 0, 0, br, bc);
      } else {
        whole = static_cast<float*>(s.a.get(size_t(ar) * ac * 4));
        widen_window(whole, g.A, g.ab, g.lda, 0, 0, ar, ac);
      }
    } catch (...) {
      keep_error();
      whole = nullptr;
    }
    auto one = [&](int blk) {
      if (!whole) return;
      try {
        block(blk, whole, s);
      } catch (...) {
        keep_error();
      }
    };
    if (team) {
#pragma omp for schedule(dynamic, 1)
      for (int blk = 0; blk < blocks; blk++) one(blk);
    } else {
      for (int blk = 0; blk < blocks; blk++) one(blk);
    }
  };
  // Small GEMMs stay on the calling thread (a team's start-up and the transfers cost more).
  if (blocks > 1 && 2.0 * g.M * g.N * g.K > double(1 << 22) && usable_threads() > 1) {
#pragma omp parallel
    worker(true);
  } else {
    worker(false);
  }
  if (err) std::rethrow_exception(err);
}

void run_blas(const Args& g) {
  switch (g.ab) {
    case DType::F64:
      blas_k_sliced<double>(g, static_cast<const double*>(g.A), g.lda,
                            static_cast<const double*>(g.B), g.ldb, static_cast<double*>(g.C),
                            g.ldc, kDgemmSlice, cblas_dgemm);
      return;
    case DType::F32:
      openblas_sgemm(g, static_cast<const float*>(g.A), g.lda, static_cast<const float*>(g.B),
                     g.ldb, static_cast<float*>(g.C), g.ldc);
      return;
    default: run_widened(g, openblas_sgemm);
  }
}

// ---- oneDNN --------------------------------------------------------------------------------

using dnnl::memory;

dnnl::engine& dnnl_engine() {
  static dnnl::engine eng = [] {
    // gemm_cpu keeps its own bounded cache of primitives; oneDNN's global one would hold a
    // second reference to each (default 1024 entries), so evictions here would free nothing.
    dnnl::set_primitive_cache_capacity(0);
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return eng;
}
dnnl::stream& dnnl_stream() {
  thread_local dnnl::stream s(dnnl_engine());
  return s;
}

memory::data_type dnnl_type(DType t) {
  switch (t) {
    case DType::F32: return memory::data_type::f32;
    case DType::BF16: return memory::data_type::bf16;
    case DType::F16: return memory::data_type::f16;
    default: fail("gemm: oneDNN has no ", dtype_name(t), " matmul");
  }
}

// The logical (rows, cols) matrix op(X): stored row-major with stride ld, or transposed (stored
// (cols, rows)) when trans. Dims / leading strides may be DNNL_RUNTIME_DIM_VAL.
memory::desc matrix_desc(memory::data_type t, memory::dim rows, memory::dim cols, bool trans,
                         memory::dim ld) {
  return memory::desc({rows, cols}, t, trans ? memory::dims{1, ld} : memory::dims{ld, 1});
}

// Everything a matmul primitive is specialised on. Runtime-shape primitives have M=N=K=ld*=-1.
struct Key {
  int32_t M, N, K, lda, ldb, ldc;
  uint32_t alpha_bits;
  uint8_t ab, c, ta, tb, beta1, nthr, pad0 = 0, pad1 = 0;
  bool operator==(const Key& o) const { return std::memcmp(this, &o, sizeof(Key)) == 0; }
};
static_assert(sizeof(Key) == 36);
struct KeyHash {
  size_t operator()(const Key& k) const {
    uint64_t h = 1469598103934665603ull;  // FNV-1a over the bytes (no padding: all fields sized)
    const auto* p = reinterpret_cast<const unsigned char*>(&k);
    for (size_t i = 0; i < sizeof(Key); i++) h = (h ^ p[i]) * 1099511628211ull;
    return size_t(h);
  }
};

struct Prim {
  dnnl::matmul prim;
  memory::desc scratch_md;
  size_t scratch_bytes = 0;
};

std::shared_ptr<Prim> make_prim(const Key& k, bool runtime) {
  const auto rt = DNNL_RUNTIME_DIM_VAL;
  const auto tab = dnnl_type(DType(k.ab)), tc = dnnl_type(DType(k.c));
  memory::desc a = runtime ? matrix_desc(tab, rt, rt, k.ta, rt) : matrix_desc(tab, k.M, k.K, k.ta, k.lda);
  memory::desc b = runtime ? matrix_desc(tab, rt, rt, k.tb, rt) : matrix_desc(tab, k.K, k.N, k.tb, k.ldb);
  memory::desc c = runtime ? matrix_desc(tc, rt, rt, false, rt) : matrix_desc(tc, k.M, k.N, false, k.ldc);
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per-thread scratch, see run_dnnl
  float alpha;
  std::memcpy(&alpha, &k.alpha_bits, 4);
  // A constant scale: a runtime one (DNNL_RUNTIME_F32_VAL) sends oneDNN 2.6 to its slower
  // gemm-based matmul instead of brgemm.
  if (alpha != 1.0f) attr.set_output_scales(0, {alpha});
  if (k.beta1) {
    dnnl::post_ops po;
    po.append_sum(1.0f);  // C = alpha*A*B + C, summed in fp32, rounded to C's dtype once
    attr.set_post_ops(po);
  }
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, dnnl_engine());
  auto p = std::make_shared<Prim>();
  p->prim = dnnl::matmul(pd);
  p->scratch_md = pd.scratchpad_desc();
  p->scratch_bytes = p->scratch_md.get_size();
  return p;
}

// Least-recently-used map Key -> primitive. Creation happens outside the lock, so threads that
// miss at once create in parallel (and one of two identical creations is dropped).
class PrimCache {
 public:
  std::shared_ptr<Prim> get(const Key& k, bool runtime) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      auto it = map_.find(k);
      if (it != map_.end()) {
        lru_.splice(lru_.begin(), lru_, it->second);
        hits_++;
        return it->second->second;
      }
      misses_++;
    }
    std::shared_ptr<Prim> p = make_prim(k, runtime);
    std::lock_guard<std::mutex> lock(mu_);
    auto it = map_.find(k);
    if (it != map_.end()) return it->second->second;
    lru_.emplace_front(k, p);
    map_[k] = lru_.begin();
    while (map_.size() > capacity_) {
      map_.erase(lru_.back().first);
      lru_.pop_back();  // a thread still executing it holds its own shared_ptr
      evictions_++;
    }
    return p;
  }
  GemmCacheStats stats() {
    std::lock_guard<std::mutex> lock(mu_);
    return {map_.size(), capacity_, hits_, misses_, evictions_};
  }
  void reset(size_t capacity) {
    std::lock_guard<std::mutex> lock(mu_);
    map_.clear();
    lru_.clear();
    capacity_ = std::max<size_t>(capacity, 1);
    hits_ = misses_ = evictions_ = 0;
  }

 private:
  std::mutex mu_;
  std::list<std::pair<Key, std::shared_ptr<Prim>>> lru_;
  std::unordered_map<Key, decltype(lru_)::iterator, KeyHash> map_;
  // Exact-shape primitives for expert GEMMs (~400 distinct row counts x 3 GEMMs x layers) would
  // never fit, which is why Auto uses runtime-shaped ones; 512 covers every fixed shape of a
  // model several times over and bounds the JIT code to ~10-45 MB.
  size_t capacity_ = 512;
  uint64_t hits_ = 0, misses_ = 0, evictions_ = 0;
};
PrimCache& prim_cache() {
  static PrimCache c;
  return c;
}

void run_dnnl(const Args& g, bool runtime) {
  SingleThreadScope single;
  uint32_t alpha_bits;
  std::memcpy(&alpha_bits, &g.alpha, 4);
  Key k{};
  k.M = runtime ? -1 : g.M;
  k.N = runtime ? -1 : g.N;
  k.K = runtime ? -1 : g.K;
  k.lda = runtime ? -1 : g.lda;
  k.ldb = runtime ? -1 : g.ldb;
  k.ldc = runtime ? -1 : g.ldc;
  k.alpha_bits = alpha_bits;
  k.ab = uint8_t(g.ab);
  k.c = uint8_t(g.c);
  k.ta = g.ta;
  k.tb = g.tb;
  k.beta1 = g.beta != 0.0f;
  k.nthr = uint8_t(std::min(omp_get_max_threads(), 255));
  std::shared_ptr<Prim> p = prim_cache().get(k, runtime);

  dnnl::engine& eng = dnnl_engine();
  const auto tab = dnnl_type(g.ab), tc = dnnl_type(g.c);
  memory a(matrix_desc(tab, g.M, g.K, g.ta, g.lda), eng, const_cast<void*>(g.A));
  memory b(matrix_desc(tab, g.K, g.N, g.tb, g.ldb), eng, const_cast<void*>(g.B));
  memory c(matrix_desc(tc, g.M, g.N, false, g.ldc), eng, g.C);
  std::unordered_map<int, memory> args{{DNNL_ARG_SRC, a}, {DNNL_ARG_WEIGHTS, b}, {DNNL_ARG_DST, c}};
  if (p->scratch_bytes)
    args.emplace(DNNL_ARG_SCRATCHPAD,
                 memory(p->scratch_md, eng, scratch().dnnl.get(p->scratch_bytes)));
  dnnl::stream& s = dnnl_stream();
  p->prim.execute(s, args);
  s.wait();
}

void dnnl_sgemm_call(const Args& g, const float* A, int lda, const float* B, int ldb, float* C,
                     int ldc) {
  const dnnl_status_t st = dnnl_sgemm(g.ta ? 'T' : 'N', g.tb ? 'T' : 'N', g.M, g.N, g.K, g.alpha,
                                      A, lda, B, ldb, g.beta, C, ldc);
  DSV3_CHECK(st == dnnl_success, "gemm: dnnl_sgemm failed (status ", int(st), ")");
}

void run_dnnl_gemm_api(const Args& g) {
  SingleThreadScope single;
  if (g.ab == DType::F32)
    dnnl_sgemm_call(g, static_cast<const float*>(g.A), g.lda, static_cast<const float*>(g.B),
                    g.ldb, static_cast<float*>(g.C), g.ldc);
  else
    run_widened(g, dnnl_sgemm_call);
}

bool cpu_has_avx512_fp16() {
  static const bool has = __builtin_cpu_supports("avx512fp16");
  return has;
}

// Whether oneDNN builds a matmul of this dtype on this CPU at all. oneDNN 2.6 has bf16 matmul
// only from AVX-512 on (native AVX512-BF16, emulated on plain AVX-512); on an AVX2-only CPU the
// primitive descriptor does not exist. Asked once per dtype by creating the runtime-shaped
// primitive Auto would use, so the answer is oneDNN's own, not a guess from CPUID.
bool dnnl_matmul_available(DType ab) {
  auto probe = [](DType t) {
    try {
      Key k{};
      k.ab = k.c = uint8_t(t);
      k.alpha_bits = 0x3f800000u;  // 1.0f
      k.nthr = 1;
      make_prim(k, true);
      return true;
    } catch (const dnnl::error&) {
      return false;
    }
  };
  static const bool bf16 = probe(DType::BF16);
  static const bool f16 = cpu_has_avx512_fp16() && probe(DType::F16);
  switch (ab) {
    case DType::F32: return true;
    case DType::BF16: return bf16;
    case DType::F16: return f16;
    default: return false;
  }
}

// The per-dtype choice measured in docs/gemm.md.
GemmEngine auto_engine(const Args& g) {
  switch (g.ab) {
    case DType::F64: return GemmEngine::Blas;
    // without a oneDNN bf16 matmul (CPUs before AVX-512) bf16 is widened like fp16
    case DType::BF16:
      return dnnl_matmul_available(DType::BF16) ? GemmEngine::DnnlRuntime : GemmEngine::DnnlGemmApi;
    default: return GemmEngine::DnnlGemmApi;  // F32; F16 widened to fp32 first
  }
}

void run(GemmEngine e, const Args& g) {
  check_args(g);
  if (e == GemmEngine::Auto) e = auto_engine(g);
  DSV3_CHECK(gemm_engine_supports(e, g.ab, g.c), "gemm: engine ", gemm_engine_name(e),
             " cannot run ", dtype_name(g.ab), " -> ", dtype_name(g.c));
  if (g.M == 0 || g.N == 0) return;
  if (g.K == 0 || g.alpha == 0.0f) {  // C = beta * C with beta in {0, 1}
    if (g.beta == 0.0f) {
      const size_t es = dtype_size(g.c);
      for (int i = 0; i < g.M; i++)
        std::memset(static_cast<char*>(g.C) + size_t(i) * g.ldc * es, 0, size_t(g.N) * es);
    }
    return;
  }
  switch (e) {
    case GemmEngine::Blas: run_blas(g); return;
    case GemmEngine::Dnnl: run_dnnl(g, false); return;
    case GemmEngine::DnnlRuntime: run_dnnl(g, true); return;
    case GemmEngine::DnnlGemmApi: run_dnnl_gemm_api(g); return;
    case GemmEngine::Auto: break;
  }
}

}  // namespace

bool gemm_native(DType ab) { return ab == DType::F64 || dnnl_matmul_available(ab); }

const char* gemm_engine_name(GemmEngine e) {
  switch (e) {
    case GemmEngine::Auto: return "auto";
    case GemmEngine::Blas: return "openblas";
    case GemmEngine::Dnnl: return "onednn";
    case GemmEngine::DnnlRuntime: return "onednn-rt";
    case GemmEngine::DnnlGemmApi: return "dnnl_sgemm";
  }
  return "?";
}

bool gemm_engine_supports(GemmEngine e, DType ab, DType c) {
  if (!supported_pair(ab, c)) return false;
  switch (e) {
    case GemmEngine::Auto: case GemmEngine::Blas: return true;
    case GemmEngine::Dnnl: case GemmEngine::DnnlRuntime:
      return dnnl_matmul_available(ab);
    case GemmEngine::DnnlGemmApi: return ab != DType::F64;
  }
  return false;
}

void gemm_on(GemmEngine e, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
             const void* A, int lda, const void* B, int ldb, float beta, void* C, int ldc, DType ab,
             DType c) {
  run(e, Args{trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ab, c});
}

void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const void* A, int lda,
          const void* B, int ldb, float beta, void* C, int ldc, DType ab, DType c) {
  gemm_on(GemmEngine::Auto, trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, ab, c);
}

void gemm_batch_on(GemmEngine e, BatchMode mode, bool trans_a, bool trans_b, float alpha,
                   float beta, const GemmCall* calls, int count, DType ab, DType c) {
  DSV3_CHECK(count >= 0 && (count == 0 || calls), "gemm_batch: bad call list");
  auto args = [&](const GemmCall& k) {
    return Args{trans_a, trans_b, k.M, k.N, k.K, alpha, k.A, k.lda, k.B, k.ldb, beta, k.C, k.ldc,
                ab, c};
  };
  for (int i = 0; i < count; i++) check_args(args(calls[i]));  // fail before any thread starts
  // Auto: calls side by side, each on one thread. Measured faster than one after another on all
  // threads for the expert batches (docs/gemm.md), and each C then comes from a single-threaded
  // GEMM, the same bits whatever the thread count.
  if (mode == BatchMode::Auto) mode = BatchMode::Parallel;
  if (mode == BatchMode::Sequential || usable_threads() == 1) {
    for (int i = 0; i < count; i++) run(e, args(calls[i]));
    return;
  }
  // Largest first, handed out dynamically: the expert sizes vary, so this balances the threads.
  // Which thread runs a call does not change its result (each GEMM runs single-threaded).
  std::vector<int> order(count);
  std::iota(order.begin(), order.end(), 0);
  auto flops = [&](int i) { return double(calls[i].M) * calls[i].N * calls[i].K; };
  std::stable_sort(order.begin(), order.end(), [&](int x, int y) { return flops(x) > flops(y); });
  std::exception_ptr err;
  std::mutex err_mu;
#pragma omp parallel for schedule(dynamic, 1)
  for (int j = 0; j < count; j++) {
    try {
      run(e, args(calls[order[j]]));
    } catch (...) {
      std::lock_guard<std::mutex> lock(err_mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

void gemm_batch(bool trans_a, bool trans_b, float alpha, float beta, const GemmCall* calls, int count,
                DType ab, DType c) {
  gemm_batch_on(GemmEngine::Auto, BatchMode::Auto, trans_a, trans_b, alpha, beta, calls, count, ab,
                c);
}

GemmCacheStats gemm_cache_stats() { return prim_cache().stats(); }
void gemm_cache_reset(size_t capacity) { prim_cache().reset(capacity); }

double measure_gemm_peak_gflops(DType ab) {
  const DType c = ab == DType::F64 ? DType::F64 : DType::F32;
  const int n = 1536;
  const size_t nn = size_t(n) * n;
  std::vector<float> src(nn);
  for (size_t i = 0; i < nn; i++) src[i] = float(int((i * 2654435761u) % 1997) - 998) / 998.0f;
  std::vector<char> a(nn * dtype_size(ab)), b(nn * dtype_size(ab)), out(nn * dtype_size(c));
  convert(a.data(), ab, src.data(), DType::F32, nn);
  convert(b.data(), ab, src.data(), DType::F32, nn);
  auto once = [&] {
    const double t0 = now_seconds();
    gemm(false, false, n, n, n, 1.0f, a.data(), n, b.data(), n, 0.0f, out.data(), n, ab, c);
    return now_seconds() - t0;
  };
  once();  // warm-up: page faults, primitive creation, thread pool start
  // At least 5 timed runs and 0.5 s of work; the best one is the machine's sustained rate (other
  // processes on a shared machine only ever make a run slower).
  double best = 1e30, total = 0;
  for (int r = 0; r < 5 || total < 0.5; r++) {
    const double t = once();
    best = std::min(best, t);
    total += t;
  }
  return 2.0 * n * double(n) * n / best / 1e9;
}

}  // namespace dsv3::cpu
