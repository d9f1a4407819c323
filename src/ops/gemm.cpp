// Linear and grouped linear layers: argument checks, then the CPU GEMM layer (gemm_cpu).
#include "ops/gemm.h"

#include <algorithm>
#include <vector>

#include "core/profile.h"
#include "ops/dispatch.h"
#include "ops/gemm_cpu.h"
#include "ops/gemm_int8.h"
#include "ops/quant.h"

namespace dsv3 {

namespace {
void check_out_dtype(const char* op, const Tensor& y, DType t) {
  DSV3_CHECK(y.dtype == t || y.dtype == accum_dtype(t), op, ": output is ", dtype_name(y.dtype),
             ", expected ", dtype_name(t), " or ", dtype_name(accum_dtype(t)), " (internal error)");
}
// A weight of `count` (out, in) matrices `stride` elements apart: the operands' dtype t, or int8
// rows (ops/quant.h), whose elements are bytes.
void check_weight(const char* op, const Tensor& w, DType t, int count, size_t stride, int out, int in) {
  const bool q = is_int8_weight(w.dtype);
  const size_t one = q ? q8_matrix_bytes(out, in) : size_t(out) * in;
  check_arg(op, "w", w, q ? w.dtype : t, count > 0 ? (count - 1) * stride + one : 0);
  DSV3_CHECK(!q || is_float(t), op, ": int8 weights with ", dtype_name(t), " inputs (internal error)");
}
void refuse_int8_grad(const char* op, const Tensor& w, const Tensor& dw) {
  DSV3_CHECK(!is_int8_weight(w.dtype) || !dw, op, ": int8 weights have no gradient: an int8 "
             "model cannot be trained (train the fp32 checkpoint, with --qat to prepare it for int8)");
}
}  // namespace

void linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w, int N,
                    int in, int out, Write mode) {
  const char* op = "linear_forward";
  profile::Scope prof(op, 2.0 * N * in * out);
  check_device(ex, op, {{"y", y}, {"x", x}, {"w", w}});
  check_arg(op, "x", x, x.dtype, size_t(N) * in);
  check_weight(op, w, x.dtype, 1, 0, out, in);
  check_out_dtype(op, y, x.dtype);
  check_arg(op, "y", y, y.dtype, size_t(N) * out);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  if (N == 0) return;
  if (is_int8_weight(w.dtype)) return int8_linear_forward(ex, y, x, w, N, in, out, mode);
  cpu::gemm(false, true, N, out, in, 1.0f, x.data, in, w.data, in, mode == Write::Accumulate ? 1.0f : 0.0f, y.data,
            out, x.dtype, y.dtype);
}

void linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                     const Tensor& x, const Tensor& w, int N, int in, int out, Write dx_mode) {
  const char* op = "linear_backward";
  profile::Scope prof(op, 2.0 * N * in * out * ((dx ? 1 : 0) + (dw ? 1 : 0)));
  check_device(ex, op, {{"dx", dx}, {"dw", dw}, {"dy", dy}, {"x", x}, {"w", w}});
  const DType t = dy.dtype;
  check_arg(op, "dy", dy, t, size_t(N) * out);
  check_weight(op, w, t, 1, 0, out, in);
  refuse_int8_grad(op, w, dw);
  check_opt(op, "dx", dx, t, size_t(N) * in);
  if (dw) check_arg(op, "x", x, t, size_t(N) * in);
  check_opt(op, "dw", dw, accum_dtype(t), size_t(out) * in);
  if (ex.device != Device::CPU) no_kernel(ex, op);
  if (N == 0) return;
  if (is_int8_weight(w.dtype)) {
    if (dx) int8_linear_backward_dx(ex, dx, dy, w, N, in, out, dx_mode);
    return;
  }
  if (dx)
    cpu::gemm(false, false, N, in, out, 1.0f, dy.data, out, w.data, in,
              dx_mode == Write::Accumulate ? 1.0f : 0.0f, dx.data, in, t, t);
  if (dw)
    cpu::gemm(true, false, out, in, N, 1.0f, dy.data, out, x.data, in, 1.0f, dw.data, in, t,
              dw.dtype);
}

namespace {
void check_offsets(const char* op, const Tensor& offsets, int E, size_t rows_x) {
  check_arg(op, "offsets", offsets, DType::I32, size_t(E) + 1);
  const int32_t* o = offsets.as<int32_t>();
  DSV3_CHECK(o[0] == 0, op, ": offsets[0] is ", o[0], " (internal error)");
  for (int e = 0; e < E; e++)
    DSV3_CHECK(o[e + 1] >= o[e], op, ": offsets decrease at expert ", e, " (internal error)");
  DSV3_CHECK(size_t(o[E]) <= rows_x, op, ": ", o[E], " rows routed, buffers hold ", rows_x,
             " (internal error)");
}
}  // namespace

void grouped_linear_forward(const Exec& ex, const Tensor& y, const Tensor& x, const Tensor& w,
                            const Tensor& offsets, GroupedShape s) {
  const char* op = "grouped_linear_forward";
  profile::Scope prof(op, profile::enabled() && offsets && offsets.device == Device::CPU
                              ? 2.0 * offsets.as<int32_t>()[s.E] * s.in * s.out
                              : 0);
  check_device(ex, op, {{"y", y}, {"x", x}, {"w", w}, {"offsets", offsets}});
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const DType t = x.dtype;
  check_weight(op, w, t, s.E, s.w_stride, s.out, s.in);
  check_out_dtype(op, y, t);
  check_offsets(op, offsets, s.E, x.numel / std::max(s.in, 1));
  const int32_t* o = offsets.as<int32_t>();
  check_arg(op, "y", y, y.dtype, size_t(o[s.E]) * s.out);
  if (is_int8_weight(w.dtype)) return int8_grouped_linear_forward(ex, y, x, w, o, s);
  const size_t xs = dtype_size(t), ys = dtype_size(y.dtype);
  std::vector<cpu::GemmCall> calls;  // one per expert with rows, run side by side (gemm_batch)
  for (int e = 0; e < s.E; e++) {
    const int rows = o[e + 1] - o[e];
    if (rows == 0) continue;
    calls.push_back({rows, s.out, s.in, static_cast<const char*>(x.data) + size_t(o[e]) * s.in * xs,
                     s.in, static_cast<const char*>(w.data) + e * s.w_stride * xs, s.in,
                     static_cast<char*>(y.data) + size_t(o[e]) * s.out * ys, s.out});
  }
  cpu::gemm_batch(false, true, 1.0f, 0.0f, calls.data(), int(calls.size()), t, y.dtype);
}

void grouped_linear_backward(const Exec& ex, const Tensor& dx, const Tensor& dw, const Tensor& dy,
                             const Tensor& x, const Tensor& w, const Tensor& offsets,
                             GroupedShape s, Write dx_mode) {
  const char* op = "grouped_linear_backward";
  profile::Scope prof(op, profile::enabled() && offsets && offsets.device == Device::CPU
                              ? 2.0 * offsets.as<int32_t>()[s.E] * s.in * s.out * ((dx ? 1 : 0) + (dw ? 1 : 0))
                              : 0);
  check_device(ex, op, {{"dx", dx}, {"dw", dw}, {"dy", dy}, {"x", x}, {"w", w}, {"offsets", offsets}});
  if (ex.device != Device::CPU) no_kernel(ex, op);
  const DType t = dy.dtype;
  const size_t wspan = s.E > 0 ? (s.E - 1) * s.w_stride + size_t(s.out) * s.in : 0;
  DSV3_CHECK(!is_int8_weight(w.dtype), op, ": int8 expert weights have no backward (internal error)");
  check_arg(op, "w", w, t, wspan);
  check_offsets(op, offsets, s.E, dy.numel / std::max(s.out, 1));
  const int32_t* o = offsets.as<int32_t>();
  const size_t rows = size_t(o[s.E]);
  check_arg(op, "dy", dy, t, rows * s.out);
  check_opt(op, "dx", dx, t, rows * s.in);
  if (dw) check_arg(op, "x", x, t, rows * s.in);
  check_opt(op, "dw", dw, accum_dtype(t), wspan);
  const size_t es = dtype_size(t), gs = dtype_size(accum_dtype(t));
  auto at = [](const Tensor& tt, size_t i, size_t size) {
    return static_cast<char*>(tt.data) + i * size;
  };
  std::vector<cpu::GemmCall> calls;
  if (dx) {
    for (int e = 0; e < s.E; e++) {
      const int r = o[e + 1] - o[e];
      if (r == 0) continue;
      calls.push_back({r, s.in, s.out, at(dy, size_t(o[e]) * s.out, es), s.out,
                       at(w, e * s.w_stride, es), s.in, at(dx, size_t(o[e]) * s.in, es), s.in});
    }
    cpu::gemm_batch(false, false, 1.0f, dx_mode == Write::Accumulate ? 1.0f : 0.0f, calls.data(),
                    int(calls.size()), t, t);
  }
  if (dw) {
    calls.clear();
    for (int e = 0; e < s.E; e++) {
      const int r = o[e + 1] - o[e];
      if (r == 0) continue;
      calls.push_back({s.out, s.in, r, at(dy, size_t(o[e]) * s.out, es), s.out,
                       at(x, size_t(o[e]) * s.in, es), s.in, at(dw, e * s.w_stride, gs), s.in});
    }
    cpu::gemm_batch(true, false, 1.0f, 1.0f, calls.data(), int(calls.size()), t, dw.dtype);
  }
}

}  // namespace dsv3
