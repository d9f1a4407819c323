// GEMMs on CUDA (ops/gemm.h): dense ones through cuBLASLt, the grouped expert GEMMs through
// dsv3's own one-launch kernel (kernels/grouped_gemm.cuh).
//
// cuBLASLt: bf16/fp16 operands with fp32 accumulation (CUBLAS_COMPUTE_32F; fp32 operands use
// CUBLAS_COMPUTE_32F_FAST_TF32 when TF32 is on), C in fp32 or the operand dtype, beta = 1 fuses
// the accumulation into C (residual adds, gradient accumulation) in the epilogue. The heuristic
// choice is made once per problem (transposes, sizes, strides, dtypes, beta, TF32, pointer
// alignment) and cached here: the one place GEMM algorithms are chosen.
#include <cublasLt.h>

#include <map>
#include <mutex>
#include <tuple>
#include <unordered_map>

#include "ops/cuda/gemm_plan.h"
#include "ops/cuda/kernels/grouped_gemm.cuh"
#include "ops/cuda/launch_cuda.cuh"
#include "ops/cuda/ops_cuda.h"

namespace dsv3::cuda {

namespace {

void check_lt(cublasStatus_t s, const char* what) {
  DSV3_CHECK(s == CUBLAS_STATUS_SUCCESS, "cuBLASLt ", what, " failed: ", cublasLtGetStatusString(s));
}

cudaDataType_t cuda_type(DType t) {
  switch (t) {
    case DType::F32: return CUDA_R_32F;
    case DType::BF16: return CUDA_R_16BF;
    case DType::F16: return CUDA_R_16F;
    default: fail("GEMM on CUDA: no ", dtype_name(t), " operands (the f64 oracle runs on the CPU)");
  }
}

// The largest power of two (<= 256) dividing the address: cuBLASLt's kernels need to know.
uint32_t alignment(const void* p) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  uint32_t al = 256;
  while (al > 1 && a % al) al /= 2;
  return al;
}

constexpr size_t kWorkspaceBytes = 32u << 20;  // cuBLASLt's recommendation for Hopper

using PlanKey = std::tuple<bool, bool, int, int, int, int, int, int, int, int, bool, bool, uint32_t,
                           uint32_t, uint32_t>;

struct Plan {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;
  cublasLtMatmulAlgo_t algo{};
};

struct Lt {
  cublasLtHandle_t handle = nullptr;
  std::mutex mu;
  std::map<PlanKey, Plan> plans;
  std::unordered_map<cudaStream_t, Buffer> workspace;  // one per stream: concurrent GEMMs
  bool tf32 = false;
  Lt() { check_lt(cublasLtCreate(&handle), "cublasLtCreate"); }
};
// Never destroyed (the CUDA runtime may be gone at exit).
Lt& lt() {
  static Lt* l = new Lt();
  return *l;
}

const Plan& plan_for(Lt& L, const LtGemm& g, DType ab, DType c, bool beta, bool tf32, const void* A,
                     const void* B, const void* C) {
  const PlanKey key{g.a.trans, g.b.trans, g.m, g.n, g.k, g.a.ld, g.b.ld, g.c.ld, int(ab), int(c), beta,
                    tf32, alignment(B), alignment(A), alignment(C)};
  auto it = L.plans.find(key);
  if (it != L.plans.end()) return it->second;
  Plan p;
  const cublasComputeType_t compute =
      ab == DType::F32 && tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  check_lt(cublasLtMatmulDescCreate(&p.desc, compute, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = g.a.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t tb = g.b.trans ? CUBLAS_OP_T : CUBLAS_OP_N;
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta), "set TRANSA");
  check_lt(cublasLtMatmulDescSetAttribute(p.desc, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb), "set TRANSB");
  check_lt(cublasLtMatrixLayoutCreate(&p.a, cuda_type(ab), uint64_t(g.a.rows), uint64_t(g.a.cols), g.a.ld),
           "cublasLtMatrixLayoutCreate");
  check_lt(cublasLtMatrixLayoutCreate(&p.b, cuda_type(ab), uint64_t(g.b.rows), uint64_t(g.b.cols), g.b.ld),
           "cublasLtMatrixLayoutCreate");
  check_lt(cublasLtMatrixLayoutCreate(&p.c, cuda_type(c), uint64_t(g.c.rows), uint64_t(g.c.cols), g.c.ld),
           "cublasLtMatrixLayoutCreate");
  cublasLtMatmulPreference_t pref = nullptr;
  check_lt(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws = kWorkspaceBytes;
  const uint32_t al_a = alignment(B), al_b = alignment(A), al_c = alignment(C);
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof ws),
           "set workspace");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &al_a, sizeof al_a),
           "set alignment");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &al_b, sizeof al_b),
           "set alignment");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &al_c, sizeof al_c),
           "set alignment");
  check_lt(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &al_c, sizeof al_c),
           "set alignment");
  cublasLtMatmulHeuristicResult_t result{};
  int found = 0;
  const cublasStatus_t st = cublasLtMatmulAlgoGetHeuristic(L.handle, p.desc, p.a, p.b, p.c, p.c, pref, 1,
                                                           &result, &found);
  cublasLtMatmulPreferenceDestroy(pref);
  DSV3_CHECK(st == CUBLAS_STATUS_SUCCESS && found > 0, "cuBLASLt has no algorithm for a ",
             dtype_name(ab), " GEMM ", g.m, "x", g.n, "x", g.k, " (C ", dtype_name(c), "): ",
             cublasLtGetStatusString(st));
  p.algo = result.algo;
  return L.plans.emplace(key, p).first->second;
}

void* workspace_for(Lt& L, const Exec& ex) {
  Buffer& w = L.workspace[stream_of(ex.stream)];
  if (!w) w = Buffer(Device::CUDA, DType::U8, kWorkspaceBytes);
  return w.view().data;
}

}  // namespace

void set_tf32(bool on) { lt().tf32 = on; }
bool tf32() { return lt().tf32; }

void gemm(const Exec& ex, bool trans_a, bool trans_b, int M, int N, int K, float alpha,
          const void* A, int lda, const void* B, int ldb, float beta, void* C, int ldc, DType ab,
          DType c) {
  DSV3_CHECK(beta == 0.0f || beta == 1.0f, "gemm: beta is 0 or 1 (internal error)");
  if (M == 0 || N == 0) return;
  if (K == 0) {  // C = beta C: zero it when beta is 0
    if (beta == 0.0f)
      check(cudaMemset2DAsync(C, size_t(ldc) * dtype_size(c), 0, size_t(N) * dtype_size(c), size_t(M),
                              stream_of(ex.stream)),
            "cudaMemset2DAsync");
    return;
  }
  Lt& L = lt();
  std::lock_guard<std::mutex> lock(L.mu);
  const LtGemm g = lt_from_row_major(trans_a, trans_b, M, N, K, lda, ldb, ldc);
  const Plan& p = plan_for(L, g, ab, c, beta != 0.0f, L.tf32, A, B, C);
  void* ws = workspace_for(L, ex);
  check_lt(cublasLtMatmul(L.handle, p.desc, &alpha, B, p.a, A, p.b, &beta, C, p.c, C, p.c, &p.algo, ws,
                          kWorkspaceBytes, stream_of(ex.stream)),
           "cublasLtMatmul");
  after_launch("gemm", ex.stream);
}

void linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w, int N,
                    int in, int out, Write mode) {
  gemm(ex, false, true, N, out, in, 1.0f, x.data, in, w.data, in,
       mode == Write::Accumulate ? 1.0f : 0.0f, y.data, out, x.dtype, y.dtype);
}

void linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                     const Tensor& x, const Tensor& w, int N, int in, int out, Write dx_mode) {
  const DType t = dy.dtype;
  if (dx)
    gemm(ex, false, false, N, in, out, 1.0f, dy.data, out, w.data, in,
         dx_mode == Write::Accumulate ? 1.0f : 0.0f, dx.data, in, t, t);
  if (dw) gemm(ex, true, false, out, in, N, 1.0f, dy.data, out, x.data, in, 1.0f, dw.data, in, t, dw.dtype);
}

void grouped_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w,
                            const Tensor& offsets, GroupedShape s) {
  const size_t rows_cap = x.numel / size_t(std::max(s.in, 1));
  DSV3_CHECK(y.numel >= rows_cap * s.out, "grouped_linear_forward: y holds ", y.numel,
             " elements, the rows of x need ", rows_cap * s.out, " (internal error)");
  const CudaLaunch L = launcher(ex, "grouped_linear_forward");
  dispatch_device(x.dtype, "grouped_linear_forward", [&]<typename T>() {
    if (y.dtype == DType::F32)
      grouped_forward_run(L, ptr<float>(y), ptr<const T>(x), ptr<const T>(w), ptr<const int32_t>(offsets),
                          s.E, s.in, s.out, s.w_stride, rows_cap);
    else
      grouped_forward_run(L, ptr<T>(y), ptr<const T>(x), ptr<const T>(w), ptr<const int32_t>(offsets),
                          s.E, s.in, s.out, s.w_stride, rows_cap);
  });
}

void grouped_linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                             const Tensor& x, const Tensor& w, const Tensor& offsets,
                             GroupedShape s, Write dx_mode) {
  const size_t rows_cap = dy.numel / size_t(std::max(s.out, 1));
  DSV3_CHECK((!dx || dx.numel >= rows_cap * s.in) && (!dw || x.numel >= rows_cap * s.in),
             "grouped_linear_backward: dx or x holds fewer rows than dy (internal error)");
  DSV3_CHECK(!dw || dw.dtype == DType::F32, "grouped_linear_backward: CUDA weight gradients are f32");
  dispatch_device(dy.dtype, "grouped_linear_backward", [&]<typename T>() {
    grouped_backward_run(launcher(ex, "grouped_linear_backward"), dx ? ptr<T>(dx) : nullptr,
                         dw ? ptr<float>(dw) : nullptr, ptr<const T>(dy), dw ? ptr<const T>(x) : nullptr,
                         ptr<const T>(w), ptr<const int32_t>(offsets), s.E, s.in, s.out, s.w_stride,
                         rows_cap, dx_mode == Write::Accumulate);
  });
}

// ---- peak throughput ------------------------------------------------------------------------

namespace {
template <typename T>
__global__ void fill_random_kernel(T* p, size_t n, uint32_t seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint32_t h = uint32_t(i) * 2654435761u ^ seed;  // a hash: random-looking, not zeros
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = st<T>(float(h & 0xffff) / 32768.0f - 1.0f);
  }
}
}  // namespace

double gemm_peak_gflops(DType ab) {
  const int n = 8192;
  const Exec ex{Device::CUDA};
  Buffer a(Device::CUDA, ab, size_t(n) * n), b(Device::CUDA, ab, size_t(n) * n);
  Buffer c(Device::CUDA, ab, size_t(n) * n);
  dispatch_device(ab, "gemm_peak_gflops", [&]<typename T>() {
    const CudaLaunch L = launcher(ex, "gemm_peak_gflops");
    L(fill_random_kernel<T>, dim3(1024), dim3(256), 0, ptr<T>(a.view()), a.numel(), 1u);
    L(fill_random_kernel<T>, dim3(1024), dim3(256), 0, ptr<T>(b.view()), b.numel(), 2u);
  });
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "cudaEventCreate");
  check(cudaEventCreate(&e1), "cudaEventCreate");
  auto run = [&] {
    gemm(ex, false, true, n, n, n, 1.0f, a.view().data, n, b.view().data, n, 0.0f, c.view().data, n, ab, ab);
  };
  for (int i = 0; i < 3; i++) run();  // warm-up: heuristics, clocks
  double best = 0;
  for (int rep = 0; rep < 3; rep++) {  // the best of three timings of 10 products
    check(cudaEventRecord(e0, stream_of(nullptr)), "cudaEventRecord");
    for (int i = 0; i < 10; i++) run();
    check(cudaEventRecord(e1, stream_of(nullptr)), "cudaEventRecord");
    check(cudaEventSynchronize(e1), "cudaEventSynchronize");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, e0, e1), "cudaEventElapsedTime");
    best = std::max(best, 10 * 2.0 * double(n) * n * n / (double(ms) * 1e-3) / 1e9);
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return best;
}

}  // namespace dsv3::cuda
