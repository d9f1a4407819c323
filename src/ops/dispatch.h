// How an op entry point picks its kernel, in one place per op: the device of its Exec, then the
// storage dtype of its data. Also the argument checks every entry point runs before a kernel
// touches memory (wrong dtype, wrong device or a too-small buffer is an internal error that
// names the op and the argument, never a silent overrun).
#pragma once
#include <initializer_list>
#include <utility>

#include "backend/backend.h"
#include "core/check.h"
#include "core/dtype.h"

namespace dsv3 {

// Calls fn.template operator()<T>() with T the storage type of the floating dtype t
// (float, double, bf16_t, f16_t).
template <typename Fn>
decltype(auto) dispatch_float(DType t, const char* op, Fn&& fn) {
  switch (t) {
    case DType::F32: return fn.template operator()<float>();
    case DType::F64: return fn.template operator()<double>();
    case DType::BF16: return fn.template operator()<bf16_t>();
    case DType::F16: return fn.template operator()<f16_t>();
    default: fail(op, ": no kernel for dtype ", dtype_name(t));
  }
}

struct Arg {
  const char* name;
  const Tensor& t;
};

// Every non-empty argument lives on ex.device.
inline void check_device(const Exec& ex, const char* op, std::initializer_list<Arg> args) {
  for (const Arg& a : args)
    DSV3_CHECK(!a.t || a.t.device == ex.device, op, ": ", a.name, " is on ", device_name(a.t.device),
               ", the op runs on ", device_name(ex.device), " (internal error)");
}
// Ops written for the CPU only so far (decode, int8, sparse attention, LAMB/Muon, distillation):
// on another device a clear refusal before any device pointer is read as host memory.
inline void require_cpu_kernel(const Exec& ex, const char* op) {
  DSV3_CHECK(ex.device == Device::CPU, op, " has no ", device_name(ex.device),
             " kernel yet (docs/cuda.md): run this on --device cpu");
}
// t has dtype `want` and at least `numel` elements.
inline void check_arg(const char* op, const char* name, const Tensor& t, DType want, size_t numel) {
  DSV3_CHECK(t, op, ": ", name, " is missing (internal error)");
  DSV3_CHECK(t.dtype == want, op, ": ", name, " is ", dtype_name(t.dtype), ", expected ",
             dtype_name(want), " (internal error)");
  DSV3_CHECK(t.numel >= numel, op, ": ", name, " has ", t.numel, " elements, needs ", numel,
             " (internal error)");
}
// Same for an optional argument (skipped when empty).
inline void check_opt(const char* op, const char* name, const Tensor& t, DType want, size_t numel) {
  if (t) check_arg(op, name, t, want, numel);
}

}  // namespace dsv3
