// The cross-backend op harness (STYLE.md points 2 and 5; ggml's test-backend-ops): every op entry
// point, forward and backward, runs on every backend this build can reach in every compute dtype
// (f32, bf16, f16) and is compared with the same entry point run on the CPU in fp64, the oracle.
// The oracle's own backwards are checked against finite differences in test_ops.cpp and
// test_moe_ops.cpp; this file checks that every backend and dtype computes what the oracle does.
//
// Both sides get identical inputs: every floating input is rounded to the case's storage dtype
// first (16-bit activations, fp32 logits and master weights), then the oracle reads those values
// in fp64. What remains is each side's arithmetic: fp32 accumulation and, for 16-bit dtypes, the
// rounding of stored results (and of the intermediates the op stores, e.g. attention's P).
//
// Error metric: ||got - oracle|| / ||oracle|| per output (scale-free). Tolerances, in units of the
// dtype's unit roundoff u (the relative spacing of its numbers: 2^-24 f32, 2^-8 bf16, 2^-11 f16):
//   - a 16-bit result rounded once has a scale-free error of about 0.45u (measured: 0.40-0.46u
//     for every single-rounding output here); chains of stored intermediates (attention: P, then
//     P v) reach 0.56u. The bound is 2u: 7.8e-3 for bf16, 9.8e-4 for f16. Any real error (a
//     wrong term, a missing conversion, a wrong stride) is O(1). DSV3_HARNESS_VERBOSE=1 prints
//     every error.
//   - f32 results come from fp32 sums of up to a few thousand terms: ~sqrt(K) * 2^-24 ~ 1e-6;
//     the bound is 1e-5 (2e-5 where scores of size ~10 feed a softmax).
// Discrete outputs (router choices, permutations) must agree exactly: inputs are drawn so that no
// choice is within rounding of a tie.
//
// Outputs an op overwrites are poisoned before each run (NaN, or -1 / a large count for
// integers), so an element a kernel forgets to write fails the comparison; NaN never passes.
// On a CUDA build with a visible GPU every case also runs on CUDA, with no change here
// (scripts/gpu_check.sh runs this binary there). The state attention saves for backward is
// backend-specific (ops/attention.h): P is compared where the backend keeps it.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/elementwise.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/mla_kv.h"
#include "ops/moe.h"
#include "ops/optimizer.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/sparse_attention.h"
#include "ops/swiglu.h"
#include "test_util.h"

namespace dsv3 {
namespace {

using Vec = std::vector<double>;
using Outputs = std::map<std::string, Vec>;

double unit_roundoff(DType t) {
  switch (t) {
    case DType::BF16: return 0x1p-8;
    case DType::F16: return 0x1p-11;
    default: return 0x1p-24;
  }
}

// One run of a case: the device and compute dtype it runs on, and the dtype its inputs are
// rounded through (the case's dtype, also for the fp64 oracle).
class Env {
 public:
  Env(Device dev, DType t, DType round) : ex{dev}, t(t), acc(accum_dtype(t)), round_(round) {}
  const Exec ex;
  const DType t;    // compute (storage) dtype of activations and weights
  const DType acc;  // accumulation dtype: fp32, or fp64 for the oracle

  Tensor act(const Vec& v) { return make(v, t, round_); }  // compute-dtype input
  Tensor accum(const Vec& v) {                             // accumulation-dtype input
    return make(v, acc, round_ == DType::F64 ? DType::F64 : DType::F32);
  }
  Tensor i32(const std::vector<int32_t>& v) {
    bufs_.emplace_back(ex.device, DType::I32, v.size());
    backend::copy(ex, bufs_.back().view(), host_tensor(v));
    return bufs_.back().view();
  }
  Tensor zeros(DType dt, size_t n) {
    bufs_.emplace_back(ex.device, dt, n);
    return bufs_.back().view();
  }
  // An output the op must overwrite entirely: filled with NaN (floats) or junk (integers).
  Tensor poisoned(DType dt, size_t n) {
    bufs_.emplace_back(ex.device, dt, n);
    const Tensor t = bufs_.back().view();
    if (is_float(dt)) {
      Buffer host(Device::CPU, DType::F64, n), stage(Device::CPU, dt, n);
      std::fill_n(host.view().as<double>(), n, std::nan(""));
      convert(Exec{}, stage.view(), host.view());
      backend::copy(ex, t, stage.view());
    } else {
      Buffer stage(Device::CPU, dt, n);
      std::memset(stage.view().data, 0x5a, stage.view().bytes());  // 0x5a5a...: no valid index
      backend::copy(ex, t, stage.view());
    }
    return t;
  }
  Vec get(const Tensor& x) {
    Buffer host(Device::CPU, DType::F64, x.numel);
    if (x.device == Device::CPU) {
      convert(Exec{}, host.view(), x);
    } else {
      Buffer stage(Device::CPU, x.dtype, x.numel);
      backend::copy(ex, stage.view(), x);
      convert(Exec{}, host.view(), stage.view());
    }
    const double* p = host.view().as<double>();
    return Vec(p, p + x.numel);
  }
  std::vector<int64_t> get_int(const Tensor& x) {
    std::vector<int64_t> out(x.numel);
    if (x.dtype == DType::I64) {
      backend::copy(ex, host_tensor(out), x);
    } else {
      std::vector<int32_t> i(x.numel);
      backend::copy(ex, host_tensor(i), x);
      std::copy(i.begin(), i.end(), out.begin());
    }
    return out;
  }

 private:
  Tensor make(const Vec& v, DType storage, DType round) {
    Buffer rounded(Device::CPU, round, v.size()), host(Device::CPU, storage, v.size());
    convert(Exec{}, rounded.view(), host_tensor(v));
    convert(Exec{}, host.view(), rounded.view());
    bufs_.emplace_back(ex.device, storage, v.size());
    backend::copy(ex, bufs_.back().view(), host.view());
    return bufs_.back().view();
  }
  DType round_;
  std::vector<Buffer> bufs_;
};

Vec rnd(size_t n, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Vec v = test::random_vec(n, seed, scale);
  for (auto& x : v) x += shift;
  return v;
}

struct Case {
  std::string name;
  std::function<Outputs(Env&)> run;
  double f32_tol = 1e-5;   // relative, for f32 results
  double u_factor = 2.0;   // 16-bit tolerance in units of u
  std::vector<std::string> exact = {};  // integer outputs that must match exactly
  std::vector<std::string> backend_specific = {};  // compared only where the backend returns it
  bool cpu_only = false;  // no CUDA kernel yet (window/LSH attention): the CPU oracle only
};

// Attention forward and backward; inputs from seeds seed .. seed + 6. The state forward saves
// is backend-specific (ops/attention.h): compared where the backend keeps P (the CPU).
Outputs attention_case(Env& e, AttentionShape s, uint64_t seed) {
  const size_t N = size_t(s.B) * s.T;
  Tensor q = e.act(rnd(N * s.H * s.dqk, seed)), k = e.act(rnd(N * s.H * s.dqk, seed + 1));
  Tensor v = e.act(rnd(N * s.H * s.dv, seed + 2)), out = e.poisoned(e.t, N * s.H * s.dv);
  const AttentionSaved sv = attention_saved(e.ex.device, e.t, s);
  Tensor saved = e.poisoned(sv.dtype, sv.numel);
  attention_forward(e.ex, out, saved, q, k, v, s);
  Tensor dout = e.act(rnd(N * s.H * s.dv, seed + 3));
  Tensor dq = e.act(rnd(N * s.H * s.dqk, seed + 4)), dk = e.act(rnd(N * s.H * s.dqk, seed + 5));
  Tensor dv = e.act(rnd(N * s.H * s.dv, seed + 6));
  attention_backward(e.ex, dq, dk, dv, dout, q, k, v, out, saved, s);
  Outputs o{{"out", e.get(out)}, {"dq", e.get(dq)}, {"dk", e.get(dk)}, {"dv", e.get(dv)}};
  if (e.ex.device == Device::CPU) o["probs"] = e.get(saved);
  return o;
}

// ---- the cases: every op family, forward and backward ----------------------------------------

std::vector<Case> cases() {
  std::vector<Case> cs;
  cs.push_back({"embedding", [](Env& e) {
                  const int V = 13, N = 70, C = 24;
                  std::vector<int32_t> ids(N);
                  for (int n = 0; n < N; n++) ids[n] = (n * 7 + n / 5) % V;
                  Tensor table = e.act(rnd(size_t(V) * C, 1)), idt = e.i32(ids);
                  Tensor out = e.poisoned(e.t, size_t(N) * C);
                  embedding_forward(e.ex, out, idt, table, N, C);
                  Tensor dout = e.act(rnd(size_t(N) * C, 2)), dtable = e.accum(rnd(size_t(V) * C, 3));
                  embedding_backward(e.ex, dtable, dout, idt, N, C);
                  return Outputs{{"out", e.get(out)}, {"dtable", e.get(dtable)}};
                }});
  cs.push_back({"rmsnorm (strided rows)", [](Env& e) {
                  const RmsNormShape s{37, 50, 64, 56};
                  Tensor x = e.act(rnd(size_t(s.N) * s.x_stride, 4)), w = e.act(rnd(s.C, 5, 0.2, 1.0));
                  Tensor out = e.act(rnd(size_t(s.N) * s.out_stride, 6)), rstd = e.poisoned(e.acc, s.N);
                  rmsnorm_forward(e.ex, out, rstd, x, w, s, 1e-6f);
                  Tensor dout = e.act(rnd(size_t(s.N) * s.out_stride, 7));
                  Tensor dx = e.act(rnd(size_t(s.N) * s.x_stride, 8)), dw = e.accum(rnd(s.C, 9));
                  rmsnorm_backward(e.ex, dx, dw, dout, x, w, rstd, s);
                  return Outputs{{"out", e.get(out)}, {"rstd", e.get(rstd)}, {"dx", e.get(dx)},
                                 {"dw", e.get(dw)}};
                }});
  cs.push_back({"rope + YaRN tables", [](Env& e) {
                  RopeParams p;
                  p.dim = 16, p.factor = 4.0, p.original_max_pos = 8, p.mscale = 0.707;
                  const int T = 20, N = 40, H = 3;
                  const RopeLayout l{N, T, H, H * 24, 24, 8, p.dim};
                  Tensor cos = e.poisoned(e.acc, size_t(T) * p.dim / 2), sin = e.poisoned(e.acc, size_t(T) * p.dim / 2);
                  rope_tables(e.ex, cos, sin, T, p);
                  Tensor x = e.act(rnd(size_t(N) * H * 24, 10)), g = e.act(rnd(size_t(N) * H * 24, 11));
                  rope_forward(e.ex, x, cos, sin, l);
                  rope_backward(e.ex, g, cos, sin, l);
                  return Outputs{{"cos", e.get(cos)}, {"sin", e.get(sin)}, {"x", e.get(x)}, {"dx", e.get(g)}};
                }});
  cs.push_back({"attention (causal, dqk != dv)",
                [](Env& e) { return attention_case(e, {2, 70, 3, 12, 8, 1.0 / std::sqrt(12.0)}, 12); },
                2e-5, 2.0, {}, {"probs"}});
  // V3's MLA head widths (q/k 192, v 128): CUDA's tensor-core kernel at its real instantiation
  cs.push_back({"attention (MLA widths 192 / 128, 2 tiles)",
                [](Env& e) { return attention_case(e, {1, 70, 2, 192, 128, 1.0 / std::sqrt(192.0)}, 60); },
                2e-5, 2.0, {}, {"probs"}});
  // sparse attention (M6): a window, and explicit key lists (ragged rows, -1 padding)
  for (int window : {9, 0}) {
    cs.push_back({window ? "sparse attention (window)" : "sparse attention (key lists)", [window](Env& e) {
                    const int T = 45, K = window ? window : 6;
                    const SparseAttentionShape s{2, T, 3, 12, 8, 1.0 / std::sqrt(12.0), K, window};
                    const size_t N = size_t(s.B) * s.T;
                    std::vector<int32_t> index(size_t(s.B) * s.H * T * K, -1);
                    for (int bh = 0; bh < s.B * s.H; bh++)
                      for (int i = 0; i < T; i++) {
                        std::vector<int> ks = {i / 3, i / 2, (i * 5 + bh) % (i + 1), i};
                        std::sort(ks.begin(), ks.end());
                        ks.erase(std::unique(ks.begin(), ks.end()), ks.end());
                        for (size_t j = 0; j < ks.size(); j++) index[(size_t(bh) * T + i) * K + j] = ks[j];
                      }
                    Tensor idx = window ? Tensor{} : e.i32(index);
                    Tensor q = e.act(rnd(N * s.H * s.dqk, 40)), k = e.act(rnd(N * s.H * s.dqk, 41));
                    Tensor v = e.act(rnd(N * s.H * s.dv, 42)), out = e.zeros(e.t, N * s.H * s.dv);
                    Tensor probs = e.zeros(e.t, N * s.H * K);
                    sparse_attention_forward(e.ex, out, probs, q, k, v, idx, s);
                    Tensor dout = e.act(rnd(N * s.H * s.dv, 43));
                    Tensor dq = e.act(rnd(N * s.H * s.dqk, 44)), dk = e.act(rnd(N * s.H * s.dqk, 45));
                    Tensor dv = e.act(rnd(N * s.H * s.dv, 46));
                    sparse_attention_backward(e.ex, dq, dk, dv, dout, q, k, v, probs, idx, s);
                    return Outputs{{"out", e.get(out)}, {"probs", e.get(probs)}, {"dq", e.get(dq)},
                                   {"dk", e.get(dk)}, {"dv", e.get(dv)}};
                  },
                  2e-5, 2.0, {}, {}, /*cpu_only=*/true});
  }
  // blocked LSH attention (M6): two rounds, T not a multiple of the chunk; the sorted orders
  // must agree exactly (the hash runs on the same rounded q and k in every dtype)
  cs.push_back({"lsh attention (blocked)", [](Env& e) {
                  const LshAttentionShape s{2, 45, 3, 12, 8, 1.0 / std::sqrt(12.0), 4, 2, 8};
                  const size_t N = size_t(s.B) * s.T;
                  std::vector<float> r(size_t(s.H) * s.rounds * s.dqk * (s.buckets / 2));
                  lsh_rotations(r.data(), s.H, s.rounds, s.dqk, s.buckets, 3);
                  Buffer rot(e.ex.device, DType::F32, r.size());
                  backend::copy(e.ex, rot.view(), host_tensor(r));
                  Tensor q = e.act(rnd(N * s.H * s.dqk, 47)), k = e.act(rnd(N * s.H * s.dqk, 48));
                  Tensor v = e.act(rnd(N * s.H * s.dv, 49)), out = e.poisoned(e.t, N * s.H * s.dv);
                  Tensor probs = e.poisoned(e.t, N * s.H * s.slots()), order = e.poisoned(DType::I32, N * s.H * s.rounds * 2);
                  lsh_attention_forward(e.ex, out, probs, order, q, k, v, rot.view(), s);
                  Tensor dout = e.act(rnd(N * s.H * s.dv, 50));
                  Tensor dq = e.act(rnd(N * s.H * s.dqk, 51)), dk = e.act(rnd(N * s.H * s.dqk, 52));
                  Tensor dv = e.act(rnd(N * s.H * s.dv, 53));
                  lsh_attention_backward(e.ex, dq, dk, dv, dout, q, k, v, probs, order, s);
                  Outputs o{{"out", e.get(out)}, {"probs", e.get(probs)}, {"dq", e.get(dq)},
                            {"dk", e.get(dk)}, {"dv", e.get(dv)}};
                  auto oi = e.get_int(order);
                  o["order"] = Vec(oi.begin(), oi.end());
                  return o;
                },
                2e-5, 2.0, {"order"}, {}, /*cpu_only=*/true});
  cs.push_back({"swiglu", [](Env& e) {
                  const int N = 33, D = 40;
                  Tensor h = e.act(rnd(size_t(N) * 2 * D, 19, 2.0)), out = e.poisoned(e.t, size_t(N) * D);
                  swiglu_forward(e.ex, out, h, N, D);
                  Tensor dout = e.act(rnd(size_t(N) * D, 20)), dh = e.act(rnd(size_t(N) * 2 * D, 21));
                  swiglu_backward(e.ex, dh, dout, h, N, D);
                  return Outputs{{"out", e.get(out)}, {"dh", e.get(dh)}};
                }});
  cs.push_back({"cross-entropy (fp32 logits in every precision)", [](Env& e) {
                  const int N = 30, V = 300;
                  std::vector<int32_t> tg(N);
                  for (int n = 0; n < N; n++) tg[n] = n % 7 == 3 ? -1 : (n * 37) % V;
                  Tensor logits = e.accum(rnd(size_t(N) * V, 22, 3.0)), t = e.i32(tg);
                  Tensor losses = e.poisoned(e.acc, N), scale = e.accum(rnd(N, 23, 0.1, 0.5));
                  cross_entropy_forward(e.ex, losses, logits, t, N, V);
                  Tensor d = e.poisoned(e.acc, size_t(N) * V);
                  cross_entropy_backward(e.ex, d, logits, t, scale, N, V);
                  Tensor dt = e.poisoned(e.t, size_t(N) * V);  // written in the compute dtype
                  cross_entropy_backward(e.ex, dt, logits, t, scale, N, V);
                  return Outputs{{"losses", e.get(losses)}, {"dlogits", e.get(d)},
                                 {"dlogits in T", e.get(dt)}};
                }});
  cs.push_back({"linear (output in T and in fp32)", [](Env& e) {
                  const int N = 45, in = 70, out = 38;
                  Tensor x = e.act(rnd(size_t(N) * in, 24)), w = e.act(rnd(size_t(out) * in, 25, 0.1));
                  Tensor y = e.poisoned(e.t, size_t(N) * out), y32 = e.accum(rnd(size_t(N) * out, 26));
                  linear_forward(e.ex, y, x, w, N, in, out);
                  linear_forward(e.ex, y32, x, w, N, in, out, Write::Accumulate);
                  Tensor dy = e.act(rnd(size_t(N) * out, 27)), dx = e.act(rnd(size_t(N) * in, 28));
                  Tensor dw = e.accum(rnd(size_t(out) * in, 29));
                  linear_backward(e.ex, dx, dw, dy, x, w, N, in, out);
                  return Outputs{{"y", e.get(y)}, {"y32 (accumulated)", e.get(y32)},
                                 {"dx", e.get(dx)}, {"dw", e.get(dw)}};
                }});
  cs.push_back({"grouped linear (experts, strided weights, an empty expert)", [](Env& e) {
                  const int E = 4, in = 24, out = 40;
                  const GroupedShape s{E, in, out, size_t(out) * in + 48};  // padded stride
                  const std::vector<int32_t> off = {0, 17, 17, 40, 61};
                  const int rows = off[E];
                  Tensor o = e.i32(off), x = e.act(rnd(size_t(rows) * in, 30));
                  Tensor w = e.act(rnd((E - 1) * s.w_stride + size_t(out) * in, 31, 0.2));
                  Tensor y = e.poisoned(e.t, size_t(rows) * out);
                  grouped_linear_forward(e.ex, y, x, w, o, s);
                  Tensor dy = e.act(rnd(size_t(rows) * out, 32)), dx = e.act(rnd(size_t(rows) * in, 33));
                  Tensor dw = e.accum(rnd(w.numel, 34));
                  grouped_linear_backward(e.ex, dx, dw, dy, x, w, o, s);
                  return Outputs{{"y", e.get(y)}, {"dx", e.get(dx)}, {"dw", e.get(dw)}};
                }});
  cs.push_back({"router (sigmoid, groups, bias, balance loss)", [](Env& e) {
                  RouterShape s{48, 16, 4, 4, 2, 12, true, true, 2.5, 0.05};
                  const size_t NE = size_t(s.N) * s.E, NK = size_t(s.N) * s.K;
                  Vec lg = rnd(NE, 35, 2.0);
                  Tensor logits = e.accum(lg), scores = e.poisoned(e.acc, NE), gates = e.poisoned(e.acc, NK);
                  Tensor idx = e.poisoned(DType::I32, NK), loads = e.poisoned(DType::I64, s.E);
                  Tensor stats = e.poisoned(DType::F64, 2);
                  std::vector<float> b(s.E);
                  for (int i = 0; i < s.E; i++) b[i] = 0.01f * float(i % 5) - 0.02f;
                  Buffer bias(e.ex.device, DType::F32, s.E);
                  backend::copy(e.ex, bias.view(), host_tensor(b));
                  router_forward(e.ex, {idx, gates, scores, loads, stats}, logits, bias.view(), s);
                  Tensor dgates = e.accum(rnd(NK, 36)), dlogits = e.accum(rnd(NE, 37));
                  router_backward(e.ex, dlogits, dgates, 1.7, scores, idx, s);
                  Outputs o{{"scores", e.get(scores)}, {"gates", e.get(gates)}, {"stats", e.get(stats)},
                            {"dlogits", e.get(dlogits)}};
                  auto ii = e.get_int(idx), ll = e.get_int(loads);
                  o["idx"] = Vec(ii.begin(), ii.end());
                  o["loads"] = Vec(ll.begin(), ll.end());
                  return o;
                },
                1e-5, 2.0, {"idx", "loads"}});
  cs.push_back({"router (softmax, batch balance)", [](Env& e) {
                  RouterShape s{40, 8, 2, 1, 1, 40, false, false, 1.0, 0.01};
                  const size_t NE = size_t(s.N) * s.E, NK = size_t(s.N) * s.K;
                  Tensor logits = e.accum(rnd(NE, 38, 2.0)), scores = e.poisoned(e.acc, NE);
                  Tensor gates = e.poisoned(e.acc, NK), idx = e.poisoned(DType::I32, NK);
                  Tensor loads = e.poisoned(DType::I64, s.E), stats = e.poisoned(DType::F64, 2);
                  router_forward(e.ex, {idx, gates, scores, loads, stats}, logits, Tensor{}, s);
                  Tensor dgates = e.accum(rnd(NK, 39)), dlogits = e.zeros(e.acc, NE);  // accumulated into
                  router_backward(e.ex, dlogits, dgates, 0.9, scores, idx, s);
                  Outputs o{{"gates", e.get(gates)}, {"stats", e.get(stats)}, {"dlogits", e.get(dlogits)}};
                  auto ii = e.get_int(idx);
                  o["idx"] = Vec(ii.begin(), ii.end());
                  return o;
                },
                1e-5, 2.0, {"idx"}});
  cs.push_back({"moe permutation, gather, combine, scatter", [](Env& e) {
                  const int N = 30, K = 3, E = 7, C = 20, NK = N * K;
                  std::vector<int32_t> id(NK);
                  for (int n = 0; n < N; n++)
                    for (int k = 0; k < K; k++) id[n * K + k] = (n * 3 + k * 2 + n / 4) % E;
                  Tensor idx = e.i32(id), slot_token = e.poisoned(DType::I32, NK);
                  Tensor slot_of = e.poisoned(DType::I32, NK), offsets = e.poisoned(DType::I32, E + 1);
                  moe_permutation(e.ex, slot_token, slot_of, offsets, idx, N, K, E);
                  Tensor x = e.act(rnd(size_t(N) * C, 40)), xp = e.poisoned(e.t, size_t(NK) * C);
                  moe_gather(e.ex, xp, x, slot_token, NK, C);
                  Tensor outp = e.act(rnd(size_t(NK) * C, 41)), gates = e.accum(rnd(NK, 42, 0.3, 0.5));
                  Tensor y = e.act(rnd(size_t(N) * C, 43));
                  moe_combine(e.ex, y, outp, gates, slot_of, N, K, C, /*accumulate=*/true);
                  Tensor dy = e.act(rnd(size_t(N) * C, 44)), doutp = e.poisoned(e.t, size_t(NK) * C);
                  Tensor dgates = e.poisoned(e.acc, NK);
                  moe_combine_backward(e.ex, doutp, dgates, dy, outp, gates, slot_of, N, K, C);
                  Tensor dx = e.act(rnd(size_t(N) * C, 45));
                  moe_scatter_add(e.ex, dx, outp, slot_of, N, K, C);
                  Outputs o{{"xp", e.get(xp)}, {"y", e.get(y)}, {"doutp", e.get(doutp)},
                            {"dgates", e.get(dgates)}, {"dx", e.get(dx)}};
                  for (const auto& [n, t] : {std::pair{"slot_token", slot_token}, {"slot_of", slot_of},
                                             {"offsets", offsets}}) {
                    auto v = e.get_int(t);
                    o[n] = Vec(v.begin(), v.end());
                  }
                  return o;
                },
                1e-5, 2.0, {"slot_token", "slot_of", "offsets"}});
  cs.push_back({"mla key/value expansion", [](Env& e) {
                  const MlaKvShape s{25, 3, 8, 6, 10, 12};
                  const size_t N = s.N;
                  Tensor kvb = e.act(rnd(N * s.H * (s.nope + s.dv), 46)), kv = e.act(rnd(N * (s.kv_lora + s.rope), 47));
                  Tensor k = e.poisoned(e.t, N * s.H * (s.nope + s.rope)), v = e.poisoned(e.t, N * s.H * s.dv);
                  mla_kv_expand_forward(e.ex, k, v, kvb, kv, s);
                  Tensor dk = e.act(rnd(k.numel, 48)), dv = e.act(rnd(v.numel, 49));
                  Tensor dkvb = e.poisoned(e.t, kvb.numel), dkv = e.act(rnd(kv.numel, 50));
                  mla_kv_expand_backward(e.ex, dkvb, dkv, dk, dv, s);
                  return Outputs{{"k", e.get(k)}, {"v", e.get(v)}, {"dkvb", e.get(dkvb)}, {"dkv", e.get(dkv)}};
                }});
  cs.push_back({"elementwise add, convert, scale", [](Env& e) {
                  Tensor y = e.act(rnd(500, 51)), x = e.act(rnd(500, 52));
                  add_inplace(e.ex, y, x);
                  scale_inplace(e.ex, x, 0.37);
                  Tensor a = e.accum(rnd(500, 53)), c = e.poisoned(e.t, 500);
                  convert(e.ex, c, a);
                  return Outputs{{"y+x", e.get(y)}, {"0.37x", e.get(x)}, {"convert", e.get(c)}};
                }});
  cs.push_back({"adamw + compute copy, sum of squares", [](Env& e) {
                  const size_t n = 3000;
                  const std::vector<ParamSpan> spans = {{0, 1000, true}, {1024, 900, false}, {2000, 1000, true}};
                  Tensor p = e.accum(rnd(n, 54, 0.1)), g = e.accum(rnd(n, 55, 0.01));
                  Tensor m = e.accum(rnd(n, 56, 0.001)), v = e.accum(rnd(n, 57, 0.001));
                  for (auto* t : {&v}) {  // second moments are non-negative
                    Vec vv = e.get(*t);
                    for (auto& x : vv) x = x * x;
                    *t = e.accum(vv);
                  }
                  Tensor compute = e.zeros(e.t, n);  // the gaps between spans are not written
                  adamw_update(e.ex, p, g, m, v, e.t == e.acc ? Tensor{} : compute, spans,
                               {1e-3, 0.9, 0.95, 1e-8, 0.1, 7});
                  const double ss = sum_squares(e.ex, g, spans);
                  Outputs o{{"master", e.get(p)}, {"m", e.get(m)}, {"v", e.get(v)}, {"sumsq", {ss}}};
                  if (e.t != e.acc) o["compute copy"] = e.get(compute);
                  return o;
                }});
  return cs;
}

std::vector<Device> backends() {
  std::vector<Device> d = {Device::CPU};
  if (backend::available(Device::CUDA)) d.push_back(Device::CUDA);
  return d;
}

void check_case(const Case& c, Device dev, DType t) {
  Env oracle_env(Device::CPU, DType::F64, t);
  const Outputs want = c.run(oracle_env);
  Env env(dev, t, t);
  const Outputs got = c.run(env);
  const double tol = t == DType::F32 ? c.f32_tol : c.u_factor * unit_roundoff(t);
  for (const auto& [name, w] : want) {
    const bool optional = name == "compute copy" ||
                          std::find(c.backend_specific.begin(), c.backend_specific.end(), name) !=
                              c.backend_specific.end();
    if (optional && !got.count(name)) continue;
    ASSERT_TRUE(got.count(name)) << c.name << ": " << name << " missing";
    const Vec& g = got.at(name);
    ASSERT_EQ(g.size(), w.size()) << c.name << ": " << name;
    if (std::find(c.exact.begin(), c.exact.end(), name) != c.exact.end()) {
      EXPECT_EQ(g, w) << c.name << " on " << device_name(dev) << " " << dtype_name(t) << ": " << name;
      continue;
    }
    const double err = test::rel_error(g, w);
    if (std::getenv("DSV3_HARNESS_VERBOSE"))
      std::printf("  %-5s %-4s %-58s %-18s %.3g (tol %.3g)\n", device_name(dev), dtype_name(t),
                  c.name.c_str(), name.c_str(), err, tol);
    EXPECT_LT(err, tol) << c.name << " on " << device_name(dev) << " " << dtype_name(t) << ": "
                        << name << " relative error " << err << " (tolerance " << tol << ")";
  }
}

class OpHarness : public ::testing::TestWithParam<DType> {};

TEST_P(OpHarness, EveryOpForwardBackwardOnEveryBackendAgainstFp64) {
  const DType t = GetParam();
  for (Device dev : backends())
    for (const Case& c : cases()) {
      SCOPED_TRACE(c.name);
      if (c.cpu_only && dev != Device::CPU) {
        std::printf("%s on %s: no kernel on this backend (the op refuses it), not compared\n",
                    c.name.c_str(), device_name(dev));
        continue;
      }
      check_case(c, dev, t);
    }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, OpHarness, ::testing::Values(DType::F32, DType::BF16, DType::F16),
                         [](const auto& info) { return std::string(dtype_name(info.param)); });

TEST(OpHarness, ReportsWhichBackendsRan) {
  std::string ran;
  for (Device d : backends()) ran += std::string(device_name(d)) + " ";
  std::printf("op harness backends: %s(cuda: %s)\n", ran.c_str(),
              backend::describe(Device::CUDA).c_str());
  // Without a GPU the CUDA kernels are checked by test_cuda_emulated (the SIMT emulator) and on
  // a GPU by scripts/gpu_check.sh; this line says which backends this run compared.
  EXPECT_EQ(backends().front(), Device::CPU);
  if (!backend::available(Device::CUDA))
    std::printf("CUDA backend not compared here: %s\n", backend::describe(Device::CUDA).c_str());
}

}  // namespace
}  // namespace dsv3
