#include "ops/mla_kv.h"

#include <algorithm>
#include <cstddef>
#include <vector>

#include "core/profile.h"
#include "ops/cuda/ops_cuda.h"
#include "ops/dispatch.h"

namespace dsv3 {
namespace cpu {
namespace {

template <typename T>
void expand_forward(T* k, T* v, const T* kvb, const T* kv, MlaKvShape s) {
  const int dqk = s.nope + s.rope, kvbw = s.nope + s.dv, kvw = s.kv_lora + s.rope;
#pragma omp parallel for schedule(static) if (size_t(s.N) * s.H * dqk > 16384)
  for (int n = 0; n < s.N; n++) {
    const T* row = kvb + size_t(n) * s.H * kvbw;
    const T* kpe = kv + size_t(n) * kvw + s.kv_lora;
    for (int h = 0; h < s.H; h++) {
      T* kh = k + (size_t(n) * s.H + h) * dqk;
      std::copy_n(row + h * kvbw, s.nope, kh);
      std::copy_n(kpe, s.rope, kh + s.nope);
      std::copy_n(row + h * kvbw + s.nope, s.dv, v + (size_t(n) * s.H + h) * s.dv);
    }
  }
}

template <typename T>
void expand_backward(T* dkvb, T* dkv, const T* dk, const T* dv, MlaKvShape s) {
  using A = accum_t<T>;
  const int dqk = s.nope + s.rope, kvbw = s.nope + s.dv, kvw = s.kv_lora + s.rope;
#pragma omp parallel
  {
    thread_local std::vector<A> pe;
    if (pe.size() < size_t(s.rope)) pe.resize(s.rope);
#pragma omp for schedule(static)
    for (int n = 0; n < s.N; n++) {
      T* row = dkvb + size_t(n) * s.H * kvbw;
      T* dkvr = dkv + size_t(n) * kvw;
      std::fill_n(pe.data(), s.rope, A(0));
      for (int h = 0; h < s.H; h++) {
        const T* dkh = dk + (size_t(n) * s.H + h) * dqk;
        std::copy_n(dkh, s.nope, row + h * kvbw);
        std::copy_n(dv + (size_t(n) * s.H + h) * s.dv, s.dv, row + h * kvbw + s.nope);
        for (int r = 0; r < s.rope; r++) pe[r] += load(dkh[s.nope + r]);
      }
      for (int i = 0; i < s.kv_lora; i++) dkvr[i] = T(0.0f);
      for (int r = 0; r < s.rope; r++) dkvr[s.kv_lora + r] = store<T>(pe[r]);
    }
  }
}

}  // namespace
}  // namespace cpu

namespace {
void check_kv(const char* op, const Tensor& kvb, const Tensor& kv, const Tensor& k, const Tensor& v,
              MlaKvShape s) {
  const size_t N = size_t(s.N), H = size_t(s.H);
  const DType t = kvb.dtype;
  check_arg(op, "kvb", kvb, t, N * H * (s.nope + s.dv));
  check_arg(op, "kv", kv, t, N * (s.kv_lora + s.rope));
  check_arg(op, "k", k, t, N * H * (s.nope + s.rope));
  check_arg(op, "v", v, t, N * H * s.dv);
}
}  // namespace

void mla_kv_expand_forward(const Exec& ex, const Tensor& k, const Tensor& v, const Tensor& kvb,
                           const Tensor& kv, MlaKvShape s) {
  const char* op = "mla_kv_expand_forward";
  profile::Scope prof(op);
  check_device(ex, op, {{"k", k}, {"v", v}, {"kvb", kvb}, {"kv", kv}});
  check_kv(op, kvb, kv, k, v, s);
  if (ex.device == Device::CUDA) return cuda::mla_kv_expand_forward(ex, k, v, kvb, kv, s);
  dispatch_float(kvb.dtype, op, [&]<typename T>() {
    cpu::expand_forward<T>(k.as<T>(), v.as<T>(), kvb.as<T>(), kv.as<T>(), s);
  });
}

void mla_kv_expand_backward(const Exec& ex, const Tensor& dkvb, const Tensor& dkv,
                            const Tensor& dk, const Tensor& dv, MlaKvShape s) {
  const char* op = "mla_kv_expand_backward";
  profile::Scope prof(op);
  check_device(ex, op, {{"dkvb", dkvb}, {"dkv", dkv}, {"dk", dk}, {"dv", dv}});
  check_kv(op, dkvb, dkv, dk, dv, s);
  if (ex.device == Device::CUDA) return cuda::mla_kv_expand_backward(ex, dkvb, dkv, dk, dv, s);
  dispatch_float(dkvb.dtype, op, [&]<typename T>() {
    cpu::expand_backward<T>(dkvb.as<T>(), dkv.as<T>(), dk.as<T>(), dv.as<T>(), s);
  });
}

}  // namespace dsv3
