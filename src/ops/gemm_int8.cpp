#include "ops/gemm_int8.h"

#include <omp.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <numeric>
#include <vector>

#include <oneapi/dnnl/dnnl.h>

#include "core/profile.h"
#include "ops/dispatch.h"
#include "ops/gemm_cpu.h"
#include "ops/quant.h"

namespace dsv3 {

int q8_act_levels() { return 63; }

namespace cpu {
namespace {

// Inside a parallel region, this thread's nthreads ICV is 1 for the scope: oneDNN plans its
// threads from omp_get_max_threads() (same device as gemm_cpu.cpp's).
struct OneThreadInParallel {
  int saved = 0;
  OneThreadInParallel() {
    if (omp_in_parallel() && omp_get_max_threads() != 1) {
      saved = omp_get_max_threads();
      omp_set_num_threads(1);
    }
  }
  ~OneThreadInParallel() {
    if (saved) omp_set_num_threads(saved);
  }
};

// Per-thread scratch that only grows.
struct Grow {
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> p;
  size_t bytes = 0;
  template <typename T>
  T* get(size_t n) {
    size_t want = n * sizeof(T);
    if (want > bytes) {
      want = (want + 4095) & ~size_t(4095);
      p.reset(std::aligned_alloc(64, want));
      DSV3_CHECK(p, "int8 linear: cannot allocate ", want, " bytes of scratch");
      bytes = want;
    }
    return static_cast<T*>(p.get());
  }
};
struct Scratch {
  Grow a, scale, acc, w;
};
Scratch& scratch() {
  thread_local Scratch s;
  return s;
}

}  // namespace

void gemm_u8s8s32_nt(int M, int N, int K, const uint8_t* A, int lda, uint8_t ao, const void* B,
                     size_t ldb, int32_t* C, int ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (int i = 0; i < M; i++) std::memset(C + size_t(i) * ldc, 0, size_t(N) * 4);
    return;
  }
  OneThreadInParallel one;
  const int32_t co = 0;
  const dnnl_status_t st = dnnl_gemm_u8s8s32('N', 'T', 'F', M, N, K, 1.0f, A, lda, ao,
                                             static_cast<const int8_t*>(B), dnnl_dim_t(ldb), 0,
                                             0.0f, C, ldc, &co);
  DSV3_CHECK(st == dnnl_success, "int8 GEMM: dnnl_gemm_u8s8s32 failed (status ", int(st), ")");
}

}  // namespace cpu

namespace {

// Work at which the row loops below go parallel (elements touched).
constexpr size_t kParallelWork = size_t(1) << 16;

// y[n, o0 + j] (=|+=) acc[n, j] * f(n) * s_{o0+j} for rows n < N, j < cols. S: the scale read.
template <typename Y, typename A, typename RowScale>
void epilogue(Y* y, int ldy, const A* acc, int lda, int N, int cols, const void* w, int in, int o0,
              bool accumulate, RowScale row_scale, bool team) {
#pragma omp parallel for schedule(static) if (team && size_t(N) * cols > kParallelWork)
  for (int n = 0; n < N; n++) {
    const accum_t<Y> f = row_scale(n);
    Y* yr = y + size_t(n) * ldy + o0;
    const A* ar = acc + size_t(n) * lda;
    for (int j = 0; j < cols; j++) {
      const accum_t<Y> v = accum_t<Y>(ar[j]) * f * accum_t<Y>(cpu::q8_scale(w, in, o0 + j));
      yr[j] = store<Y>(accumulate ? load(yr[j]) + v : v);
    }
  }
}

// ---- W8A8 ----------------------------------------------------------------------------------
template <typename X, typename Y>
void w8a8_rows(Y* y, const X* x, const void* w, int N, int in, int out, bool accumulate, bool team) {
  const int L = q8_act_levels();
  cpu::Scratch& s = cpu::scratch();
  uint8_t* a = s.a.get<uint8_t>(size_t(N) * in);
  float* sx = s.scale.get<float>(size_t(N));
  int32_t* acc = s.acc.get<int32_t>(size_t(N) * out);
#pragma omp parallel for schedule(static) if (team && size_t(N) * in > kParallelWork)
  for (int n = 0; n < N; n++)
    sx[n] = cpu::quantize_row(a + size_t(n) * in, x + size_t(n) * in, in, L, L + 1);
  cpu::gemm_u8s8s32_nt(N, out, in, a, in, uint8_t(L + 1), w, q8_row_bytes(in), acc, out);
  epilogue(y, out, acc, out, N, out, w, in, 0, accumulate,
           [&](int n) { return accum_t<Y>(sx[n]); }, team);
}

// ---- W8A16 ---------------------------------------------------------------------------------
constexpr int kWRows = 64;    // weight rows widened at once
constexpr int kXRows = 256;   // token rows per task

// Widens rows [o0, o0 + rows) of the int8 weight to T (exact: |q| <= 127).
template <typename T>
void widen_rows(T* dst, const void* w, int in, int o0, int rows) {
  const size_t rb = q8_row_bytes(in);
  for (int r = 0; r < rows; r++) {
    const int8_t* q = reinterpret_cast<const int8_t*>(static_cast<const char*>(w) + size_t(o0 + r) * rb);
    for (int k = 0; k < in; k++) dst[size_t(r) * in + k] = store<T>(accum_t<T>(q[k]));
  }
}

// One task: token rows [n0, n0+nr) x weight rows [o0, o0+orows), single-threaded.
template <typename X, typename Y>
void w8a16_task(Y* y, const X* x, const void* w, int in, int out, int n0, int nr, int o0,
                int orows, bool accumulate) {
  using A = accum_t<X>;
  cpu::Scratch& s = cpu::scratch();
  X* wb = s.w.get<X>(size_t(orows) * in);
  A* acc = s.acc.get<A>(size_t(nr) * orows);
  widen_rows(wb, w, in, o0, orows);
  cpu::gemm(false, true, nr, orows, in, 1.0f, x + size_t(n0) * in, in, wb, in, 0.0f, acc, orows,
            dtype_of<X>(), dtype_of<A>());
  epilogue(y + size_t(n0) * out, out, acc, orows, nr, orows, w, in, o0, accumulate,
           [](int) { return accum_t<Y>(1); }, false);
}

template <typename X, typename Y>
void w8a16_rows(Y* y, const X* x, const void* w, int N, int in, int out, bool accumulate, bool team) {
  const int wb = (out + kWRows - 1) / kWRows, xb = (N + kXRows - 1) / kXRows;
  const int tasks = wb * xb;
  auto run = [&](int t) {
    const int i = t / wb, j = t % wb;
    const int n0 = i * kXRows, o0 = j * kWRows;
    w8a16_task(y, x, w, in, out, n0, std::min(kXRows, N - n0), o0, std::min(kWRows, out - o0),
               accumulate);
  };
  if (!team || tasks == 1 || omp_in_parallel() || omp_get_max_threads() == 1) {
    for (int t = 0; t < tasks; t++) run(t);
    return;
  }
  std::exception_ptr err;
  std::mutex mu;
#pragma omp parallel for schedule(dynamic, 1)
  for (int t = 0; t < tasks; t++) {
    try {
      run(t);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

// x in X (f32, bf16, f16, f64), y in X or its accumulation dtype.
template <typename Fn>
void dispatch_xy(const char* op, DType xt, DType yt, Fn&& fn) {
  dispatch_float(xt, op, [&]<typename X>() {
    if (yt == xt) return fn.template operator()<X, X>();
    DSV3_CHECK(yt == dtype_of<accum_t<X>>(), op, ": output is ", dtype_name(yt), " for ",
               dtype_name(xt), " inputs (internal error)");
    return fn.template operator()<X, accum_t<X>>();
  });
}

void rows_forward(const char* op, DType scheme, void* y, DType yt, const void* x, DType xt,
                  const void* w, int N, int in, int out, bool accumulate, bool team) {
  dispatch_xy(op, xt, yt, [&]<typename X, typename Y>() {
    if (scheme == DType::W8A8)
      w8a8_rows(static_cast<Y*>(y), static_cast<const X*>(x), w, N, in, out, accumulate, team);
    else
      w8a16_rows(static_cast<Y*>(y), static_cast<const X*>(x), w, N, in, out, accumulate, team);
  });
}

}  // namespace

void int8_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w, int N,
                         int in, int out, Write mode) {
  if (ex.device != Device::CPU) no_kernel(ex, "linear_forward (int8 weights)");
  if (N == 0 || out == 0) return;
  rows_forward("linear_forward", w.dtype, y.data, y.dtype, x.data, x.dtype, w.data, N, in, out,
               mode == Write::Accumulate, true);
}

void int8_grouped_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w,
                                 const int32_t* o, GroupedShape s) {
  const char* op = "grouped_linear_forward";
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const size_t xs = dtype_size(x.dtype), ys = dtype_size(y.dtype);
  std::vector<int> order;
  for (int e = 0; e < s.E; e++)
    if (o[e + 1] > o[e]) order.push_back(e);
  // largest first, handed out dynamically; each expert on one thread (its own scratch)
  std::stable_sort(order.begin(), order.end(),
                   [&](int a, int b) { return o[a + 1] - o[a] > o[b + 1] - o[b]; });
  auto one = [&](int e, bool team) {
    rows_forward(op, w.dtype, static_cast<char*>(y.data) + size_t(o[e]) * s.out * ys, y.dtype,
                 static_cast<const char*>(x.data) + size_t(o[e]) * s.in * xs, x.dtype,
                 static_cast<const char*>(w.data) + size_t(e) * s.w_stride, o[e + 1] - o[e], s.in,
                 s.out, false, team);
  };
  if (order.size() <= 1 || omp_in_parallel() || omp_get_max_threads() == 1) {
    for (int e : order) one(e, order.size() == 1);
    return;
  }
  std::exception_ptr err;
  std::mutex mu;
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t j = 0; j < order.size(); j++) {
    try {
      one(order[j], false);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mu);
      if (!err) err = std::current_exception();
    }
  }
  if (err) std::rethrow_exception(err);
}

void int8_linear_backward_dx(const Exec& ex, const Tensor& dx, const Tensor& dy, const Tensor& w,
                             int N, int in, int out, Write mode) {
  const char* op = "linear_backward (int8 weights)";
  if (ex.device != Device::CPU) no_kernel(ex, op);
  if (N == 0 || in == 0) return;
  // W dequantised to the accumulation dtype, dy widened to it: one fp32 (fp64) GEMM, then dx.
  const DType acc = accum_dtype(dy.dtype);
  const size_t es = dtype_size(acc);
  std::vector<char> wd(size_t(out) * in * es), dyw, dxw;
  if (acc == DType::F64) {
    std::vector<float> f(size_t(out) * in);
    cpu::q8_dequantize(f.data(), in, w.data, out, in);
    convert(wd.data(), acc, f.data(), DType::F32, f.size());
  } else {
    cpu::q8_dequantize(reinterpret_cast<float*>(wd.data()), in, w.data, out, in);
  }
  const void* a = dy.data;
  if (dy.dtype != acc) {
    dyw.resize(size_t(N) * out * es);
    convert(dyw.data(), acc, dy.data, dy.dtype, size_t(N) * out);
    a = dyw.data();
  }
  const bool accumulate = mode == Write::Accumulate;
  if (dx.dtype == acc) {
    cpu::gemm(false, false, N, in, out, 1.0f, a, out, wd.data(), in, accumulate ? 1.0f : 0.0f,
              dx.data, in, acc, acc);
    return;
  }
  dxw.resize(size_t(N) * in * es);
  if (accumulate) convert(dxw.data(), acc, dx.data, dx.dtype, size_t(N) * in);
  cpu::gemm(false, false, N, in, out, 1.0f, a, out, wd.data(), in, accumulate ? 1.0f : 0.0f,
            dxw.data(), in, acc, acc);
  convert(dx.data, dx.dtype, dxw.data(), acc, size_t(N) * in);
}

}  // namespace dsv3
