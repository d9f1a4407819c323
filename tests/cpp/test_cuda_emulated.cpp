// dsv3's CUDA kernels (src/ops/cuda/kernels), run on the CPU by the SIMT emulator
// (tests/cpp/cuda_emu), against the fp64 CPU oracle: the same cases, inputs and tolerances as the
// cross-backend op harness (test_op_harness.cpp), through the same run functions and launch
// plans the GPU build uses. This is how a build without a GPU executes every line of every
// kernel: index arithmetic, shared-memory staging (poisoned with NaN before each block),
// barriers, warp collectives, the mma.sync fragment layouts, the tile tables, the error flags.
// It is not a GPU run (no memory model, no hardware tensor cores, no timing): docs/cuda.md keeps
// "verified on GPU: no" until scripts/gpu_check.sh has run on one.
#include <algorithm>
#include <cstring>
#include <vector>

#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/cuda/kernels/attention.cuh"
#include "ops/cuda/kernels/cross_entropy.cuh"
#include "ops/cuda/kernels/elementwise.cuh"
#include "ops/cuda/kernels/embedding.cuh"
#include "ops/cuda/kernels/grouped_gemm.cuh"
#include "ops/cuda/kernels/mla_kv.cuh"
#include "ops/cuda/kernels/moe.cuh"
#include "ops/cuda/kernels/optimizer.cuh"
#include "ops/cuda/kernels/rmsnorm.cuh"
#include "ops/cuda/kernels/rope.cuh"
#include "ops/cuda/kernels/swiglu.cuh"
#include "ops/embedding.h"
#include "ops/gemm_cpu.h"
#include "ops/mla_kv.h"
#include "ops/moe.h"
#include "ops/optimizer.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "test_util.h"

namespace dsv3::test {
namespace {

using Vec = std::vector<double>;
namespace cu = ::dsv3::cuda;

// The launcher the run functions take, over host memory. Scratch is poisoned (0xFF: NaN) so a
// kernel that reads scratch nobody wrote shows it.
struct EmuLaunch {
  mutable std::vector<std::vector<char>> scratch_bufs;
  mutable int err = 0;
  template <typename... P, typename... A>
  void operator()(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, A&&... args) const {
    ASSERT_LE(smem, cu::kMaxSmemPerBlock) << "a block asks for more shared memory than sm_90 has";
    emu::launch(kernel, grid, block, smem, std::forward<A>(args)...);
  }
  // The GPU's scratch is valid until the next scratch() call: the previous one is poisoned here
  // (kept allocated, so a stale pointer reads NaN instead of crashing).
  void* scratch(size_t bytes) const {
    if (!scratch_bufs.empty()) std::fill(scratch_bufs.back().begin(), scratch_bufs.back().end(), char(0xFF));
    scratch_bufs.emplace_back(bytes + 16, char(0xFF));
    return scratch_bufs.back().data();
  }
  void zero(void* p, size_t bytes) const { std::memset(p, 0, bytes); }
  void to_device(void* d, const void* s, size_t bytes) const { std::memcpy(d, s, bytes); }
  void to_host(void* d, const void* s, size_t bytes) const { std::memcpy(d, s, bytes); }
  int* error_flag() const { return &err; }
};

template <typename T>
std::vector<T> as(const Vec& v) {
  std::vector<T> out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = T(float(v[i]));
  return out;
}
template <typename T>
Vec back(const std::vector<T>& v) {
  Vec out(v.size());
  for (size_t i = 0; i < v.size(); i++) out[i] = double(float(v[i]));
  return out;
}
// v rounded through T: what both sides read.
template <typename T>
Vec rounded(const Vec& v) {
  return back(as<T>(v));
}
Vec rnd(size_t n, uint64_t seed, double scale = 1.0, double shift = 0.0) {
  Vec v = random_vec(n, seed, scale);
  for (auto& x : v) x += shift;
  return v;
}

// The op harness's tolerances: 2 units of roundoff for 16-bit results, f32 to fp32 rounding.
template <typename T>
double tol(double f32 = 1e-5) {
  if constexpr (std::is_same_v<T, bf16_t>) return 2 * 0x1p-8;
  else if constexpr (std::is_same_v<T, f16_t>) return 2 * 0x1p-11;
  else return f32;
}
template <typename T>
const char* name() {
  if constexpr (std::is_same_v<T, bf16_t>) return "bf16";
  else if constexpr (std::is_same_v<T, f16_t>) return "f16";
  else return "f32";
}

#define EXPECT_CLOSE(got, want, t) \
  EXPECT_LT(rel_error(got, want), t) << name<T>() << ": " #got " (tolerance " << (t) << ")"

template <typename T>
class Emulated : public ::testing::Test {};
using Dtypes = ::testing::Types<float, bf16_t, f16_t>;
TYPED_TEST_SUITE(Emulated, Dtypes);

TYPED_TEST(Emulated, Embedding) {
  using T = TypeParam;
  const int V = 13, N = 70, C = 24;
  std::vector<int32_t> ids(N);
  for (int n = 0; n < N; n++) ids[n] = (n * 7 + n / 5) % V;
  const Vec table = rounded<T>(rnd(size_t(V) * C, 1)), dout = rounded<T>(rnd(size_t(N) * C, 2));
  const Vec dtable0 = rounded<float>(rnd(size_t(V) * C, 3));
  Vec want(size_t(N) * C), want_dt = dtable0;
  cpu::embedding_forward<double>(want.data(), ids.data(), table.data(), N, C);
  cpu::embedding_backward<double>(want_dt.data(), dout.data(), ids.data(), N, C);
  EmuLaunch L;
  std::vector<T> tt = as<T>(table), out(size_t(N) * C, T(NAN)), dt = as<T>(dout);
  std::vector<float> dtable = as<float>(dtable0);
  cu::embedding_forward_run(L, out.data(), ids.data(), tt.data(), N, C, V);
  cu::embedding_backward_run(L, dtable.data(), dt.data(), ids.data(), N, C, V);
  EXPECT_EQ(back(out), want) << "a gather copies exactly";
  EXPECT_CLOSE(back(dtable), want_dt, 1e-6);
  EXPECT_EQ(L.err, 0);
  ids[5] = V;  // out of range: reported through the error flag, row zeroed
  cu::embedding_forward_run(L, out.data(), ids.data(), tt.data(), N, C, V);
  EXPECT_EQ(L.err, int(cu::DeviceError::TokenIdOutOfRange));
  EXPECT_EQ(float(out[5 * C]), 0.0f);
}

TYPED_TEST(Emulated, RmsNormStridedRows) {
  using T = TypeParam;
  const int N = 37, C = 50, xs = 64, os = 56;
  const Vec x = rounded<T>(rnd(size_t(N) * xs, 4)), w = rounded<T>(rnd(C, 5, 0.2, 1.0));
  const Vec out0 = rounded<T>(rnd(size_t(N) * os, 6)), dout = rounded<T>(rnd(size_t(N) * os, 7));
  const Vec dx0 = rounded<T>(rnd(size_t(N) * xs, 8)), dw0 = rounded<float>(rnd(C, 9));
  Vec out = out0, rstd(N), dx = dx0, dw = dw0;
  const RmsNormShape s{N, C, xs, os};
  cpu::rmsnorm_forward<double>(out.data(), rstd.data(), x.data(), w.data(), s, 1e-6f);
  cpu::rmsnorm_backward<double>(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), s);
  EmuLaunch L;
  std::vector<T> xt = as<T>(x), wt = as<T>(w), ot = as<T>(out0), dot = as<T>(dout), dxt = as<T>(dx0);
  std::vector<float> rs(N, NAN), dwt = as<float>(dw0);
  cu::rmsnorm_forward_run(L, ot.data(), rs.data(), xt.data(), wt.data(), N, C, xs, os, 1e-6f);
  cu::rmsnorm_backward_run(L, dxt.data(), dwt.data(), dot.data(), xt.data(), wt.data(), rs.data(), N,
                           C, xs, os);
  EXPECT_CLOSE(back(ot), out, tol<T>());
  EXPECT_CLOSE(back(rs), rstd, 1e-5);
  EXPECT_CLOSE(back(dxt), dx, tol<T>());
  EXPECT_CLOSE(back(dwt), dw, 1e-5);
}

TYPED_TEST(Emulated, RopeYarn) {
  using T = TypeParam;
  RopeParams p;
  p.dim = 16, p.factor = 4.0, p.original_max_pos = 8, p.mscale = 0.707;
  const int Tn = 20, N = 40, H = 3;
  const RopeLayout l{N, Tn, H, H * 24, 24, 8, p.dim};
  Vec cos(size_t(Tn) * 8), sin(size_t(Tn) * 8);
  cpu::rope_tables<double>(cos.data(), sin.data(), Tn, p);
  std::vector<float> cf(cos.size()), sf(sin.size());
  cpu::rope_tables<float>(cf.data(), sf.data(), Tn, p);  // what the CUDA entry point uploads
  Vec x = rounded<T>(rnd(size_t(N) * H * 24, 10)), g = rounded<T>(rnd(size_t(N) * H * 24, 11));
  std::vector<T> xt = as<T>(x), gt = as<T>(g);
  cpu::rope_forward<double>(x.data(), cos.data(), sin.data(), l);
  cpu::rope_backward<double>(g.data(), cos.data(), sin.data(), l);
  EmuLaunch L;
  const cu::RopeGeom geom{N, Tn, H, H * 24, 24, 8, p.dim};
  cu::rope_run(L, xt.data(), cf.data(), sf.data(), geom, 1.0f);
  cu::rope_run(L, gt.data(), cf.data(), sf.data(), geom, -1.0f);
  EXPECT_CLOSE(back(xt), x, tol<T>());
  EXPECT_CLOSE(back(gt), g, tol<T>());
}

// Attention through a given plan, against the CPU oracle (which also gives P; the GPU keeps lse).
template <typename T>
void check_attention(AttentionShape s, const cu::AttentionPlan& plan, double f32_tol) {
  const size_t N = size_t(s.B) * s.T;
  const Vec q = rounded<T>(rnd(N * s.H * s.dqk, 12)), k = rounded<T>(rnd(N * s.H * s.dqk, 13));
  const Vec v = rounded<T>(rnd(N * s.H * s.dv, 14)), dout = rounded<T>(rnd(N * s.H * s.dv, 15));
  const Vec dq0 = rounded<T>(rnd(N * s.H * s.dqk, 16)), dk0 = rounded<T>(rnd(N * s.H * s.dqk, 17));
  const Vec dv0 = rounded<T>(rnd(N * s.H * s.dv, 18));
  Vec out(N * s.H * s.dv), probs(size_t(s.B) * s.H * s.T * s.T), dq = dq0, dk = dk0, dv = dv0;
  cpu::attention_forward<double>(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
  cpu::attention_backward<double>(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(),
                                  v.data(), probs.data(), s);
  EmuLaunch L;
  std::vector<T> qt = as<T>(q), kt = as<T>(k), vt = as<T>(v), dot = as<T>(dout);
  std::vector<T> ot(out.size(), T(NAN)), dqt = as<T>(dq0), dkt = as<T>(dk0), dvt = as<T>(dv0);
  std::vector<float> lse(size_t(s.B) * s.H * s.T, NAN);
  const cu::AttnGeom g{s.B, s.T, s.H, s.dqk, s.dv, float(s.scale)};
  cu::attention_forward_run(L, ot.data(), lse.data(), qt.data(), kt.data(), vt.data(), g, plan);
  cu::attention_backward_run(L, dqt.data(), dkt.data(), dvt.data(), dot.data(), qt.data(), kt.data(),
                             vt.data(), ot.data(), lse.data(), g, plan);
  EXPECT_CLOSE(back(ot), out, tol<T>(f32_tol));
  EXPECT_CLOSE(back(dqt), dq, tol<T>(f32_tol));
  EXPECT_CLOSE(back(dkt), dk, tol<T>(f32_tol));
  EXPECT_CLOSE(back(dvt), dv, tol<T>(f32_tol));
  // lse = log sum_j exp(s_ij) of the scaled causal scores, from the oracle's own inputs
  Vec want_lse(lse.size());
  for (int b = 0; b < s.B; b++)
    for (int h = 0; h < s.H; h++)
      for (int i = 0; i < s.T; i++) {
        double m = -INFINITY, z = 0;
        std::vector<double> sc(size_t(i) + 1);
        for (int j = 0; j <= i; j++) {
          double d = 0;
          for (int c = 0; c < s.dqk; c++)
            d += q[((size_t(b) * s.T + i) * s.H + h) * s.dqk + c] * k[((size_t(b) * s.T + j) * s.H + h) * s.dqk + c];
          sc[size_t(j)] = d * s.scale;
          m = std::max(m, sc[size_t(j)]);
        }
        for (double x : sc) z += std::exp(x - m);
        want_lse[(size_t(b) * s.H + h) * s.T + i] = m + std::log(z);
      }
  EXPECT_CLOSE(back(lse), want_lse, 1e-5);
}

TYPED_TEST(Emulated, AttentionSmallHeadsEveryPlan) {
  using T = TypeParam;
  const AttentionShape s{2, 70, 3, 12, 8, 1.0 / std::sqrt(12.0)};
  const AttentionShape one_head{2, 70, 1, 12, 8, 1.0 / std::sqrt(12.0)};  // the generic kernel's
  // shuffles are the emulator's slowest part: one head keeps the batch and every tile edge
  const bool half = !std::is_same_v<T, float>;
  const cu::AttentionPlan p = cu::plan_attention(s.dqk, s.dv, half, false);
  EXPECT_EQ(p.kind, half ? cu::AttentionPlan::TensorCore : cu::AttentionPlan::Generic);
  check_attention<T>(half ? s : one_head, p, 2e-5);
  if (half) check_attention<T>(one_head, cu::plan_attention(s.dqk, s.dv, true, true), 2e-5);
}

// V3's MLA widths on the tensor-core kernel (f32 takes the generic kernel, checked above).
template <typename T>
void check_mla_heads() {
  const AttentionShape s{1, 70, 2, 192, 128, 1.0 / std::sqrt(192.0)};
  const cu::AttentionPlan p = cu::plan_attention(s.dqk, s.dv, true, false);
  ASSERT_EQ(p.kind, cu::AttentionPlan::TensorCore);
  ASSERT_EQ(p.dqk_pad, 192);
  check_attention<T>(s, p, 2e-5);
}
TEST(EmulatedAttention, MlaHeads192x128Bf16) { check_mla_heads<bf16_t>(); }
TEST(EmulatedAttention, MlaHeads192x128F16) { check_mla_heads<f16_t>(); }

TYPED_TEST(Emulated, SwiGlu) {
  using T = TypeParam;
  const int N = 33, D = 40;
  const Vec h = rounded<T>(rnd(size_t(N) * 2 * D, 19, 2.0)), dout = rounded<T>(rnd(size_t(N) * D, 20));
  const Vec dh0 = rounded<T>(rnd(size_t(N) * 2 * D, 21));
  Vec out(size_t(N) * D), dh = dh0, dh_over(dh0.size());
  cpu::swiglu_forward<double>(out.data(), h.data(), N, D);
  cpu::swiglu_backward<double>(dh.data(), dout.data(), h.data(), N, D, true);
  cpu::swiglu_backward<double>(dh_over.data(), dout.data(), h.data(), N, D, false);
  EmuLaunch L;
  std::vector<T> ht = as<T>(h), ot(out.size(), T(NAN)), dt = as<T>(dout), dht = as<T>(dh0);
  std::vector<T> dho(dh0.size(), T(NAN));
  cu::swiglu_forward_run(L, ot.data(), ht.data(), N, D);
  cu::swiglu_backward_run(L, dht.data(), dt.data(), ht.data(), N, D, true);
  cu::swiglu_backward_run(L, dho.data(), dt.data(), ht.data(), N, D, false);
  EXPECT_CLOSE(back(ot), out, tol<T>());
  EXPECT_CLOSE(back(dht), dh, tol<T>());
  EXPECT_CLOSE(back(dho), dh_over, tol<T>());
}

TYPED_TEST(Emulated, CrossEntropy) {
  using T = TypeParam;
  const int N = 30, V = 300;
  std::vector<int32_t> tg(N);
  for (int n = 0; n < N; n++) tg[n] = n % 7 == 3 ? -1 : (n * 37) % V;
  const Vec logits = rounded<float>(rnd(size_t(N) * V, 22, 3.0)), scale = rounded<float>(rnd(N, 23, 0.1, 0.5));
  Vec losses(N), dl(size_t(N) * V);
  cpu::cross_entropy_forward<double>(losses.data(), logits.data(), tg.data(), N, V);
  cpu::cross_entropy_backward<double, double>(dl.data(), logits.data(), tg.data(), scale.data(), N, V);
  EmuLaunch L;
  std::vector<float> lf = as<float>(logits), sf = as<float>(scale), lo(N, NAN);
  std::vector<T> dt(dl.size(), T(NAN));
  cu::cross_entropy_forward_run(L, lo.data(), lf.data(), tg.data(), N, V);
  cu::cross_entropy_backward_run(L, dt.data(), lf.data(), tg.data(), sf.data(), N, V);
  EXPECT_CLOSE(back(lo), losses, 1e-5);
  EXPECT_CLOSE(back(dt), dl, tol<T>());
  if (std::is_same_v<T, float>) {  // in place over the logits
    cu::cross_entropy_backward_run(L, lf.data(), static_cast<const float*>(lf.data()), tg.data(),
                                   sf.data(), N, V);
    EXPECT_CLOSE(back(lf), dl, 1e-5);
  }
}

// The harness's grouped case: 4 experts, one of them empty, weights a padded stride apart.
TYPED_TEST(Emulated, GroupedGemmOneLaunchForAllExperts) {
  using T = TypeParam;
  const int E = 4, in = 24, out = 40;
  const size_t stride = size_t(out) * in + 48;
  const std::vector<int32_t> off = {0, 17, 17, 40, 61};
  const int rows = off[E];
  const Vec x = rounded<T>(rnd(size_t(rows) * in, 30)), w = rounded<T>(rnd((E - 1) * stride + size_t(out) * in, 31, 0.2));
  const Vec dy = rounded<T>(rnd(size_t(rows) * out, 32)), dx0 = rounded<T>(rnd(size_t(rows) * in, 33));
  const Vec dw0 = rounded<float>(rnd(w.size(), 34));
  Vec y(size_t(rows) * out), dx = dx0, dw = dw0;
  for (int e = 0; e < E; e++) {
    const int r0 = off[e], r = off[e + 1] - off[e];
    if (r == 0) continue;
    cpu::gemm(false, true, r, out, in, 1.0f, x.data() + size_t(r0) * in, in, w.data() + e * stride, in,
              0.0f, y.data() + size_t(r0) * out, out, DType::F64, DType::F64);
    cpu::gemm(false, false, r, in, out, 1.0f, dy.data() + size_t(r0) * out, out, w.data() + e * stride,
              in, 1.0f, dx.data() + size_t(r0) * in, in, DType::F64, DType::F64);
    cpu::gemm(true, false, out, in, r, 1.0f, dy.data() + size_t(r0) * out, out,
              x.data() + size_t(r0) * in, in, 1.0f, dw.data() + e * stride, in, DType::F64, DType::F64);
  }
  EmuLaunch L;
  std::vector<T> xt = as<T>(x), wt = as<T>(w), dyt = as<T>(dy), dxt = as<T>(dx0);
  std::vector<T> yt(y.size(), T(NAN));
  std::vector<float> y32(y.size(), NAN), dwt = as<float>(dw0);
  const size_t cap = size_t(rows) + 3;  // buffers may hold more rows than are routed
  xt.resize(cap * in, T(0.0f));
  cu::grouped_forward_run(L, yt.data(), xt.data(), wt.data(), off.data(), E, in, out, stride, cap);
  cu::grouped_forward_run(L, y32.data(), xt.data(), wt.data(), off.data(), E, in, out, stride, cap);
  cu::grouped_backward_run(L, dxt.data(), dwt.data(), dyt.data(), xt.data(), wt.data(), off.data(), E,
                           in, out, stride, cap, true);
  EXPECT_CLOSE(back(yt), y, tol<T>());
  EXPECT_CLOSE(back(y32), y, tol<float>());
  EXPECT_CLOSE(back(dxt), dx, tol<T>());
  EXPECT_CLOSE(back(dwt), dw, 1e-5);
  // weights past the experts' rows stay as they were (the padding of the stride)
  for (int e = 0; e < E - 1; e++)
    for (size_t i = size_t(out) * in; i < stride; i++) ASSERT_EQ(dwt[e * stride + i], float(dw0[e * stride + i]));
  EXPECT_EQ(L.err, 0);
  const std::vector<int32_t> bad = {0, 17, 12, 40, 61};  // decreasing: reported, nothing written
  std::vector<T> y2(y.size(), T(7.0f));
  cu::grouped_forward_run(L, y2.data(), xt.data(), wt.data(), bad.data(), E, in, out, stride, cap);
  EXPECT_EQ(L.err, int(cu::DeviceError::OffsetsInvalid));
  EXPECT_EQ(float(y2[0]), 7.0f);
}

TEST(EmulatedRouter, SigmoidGroupsBiasBalanceAndSoftmax) {
  for (const bool sigmoid : {true, false}) {
    SCOPED_TRACE(sigmoid ? "sigmoid, groups, bias, sequence balance" : "softmax, batch balance");
    RouterShape s = sigmoid ? RouterShape{48, 16, 4, 4, 2, 12, true, true, 2.5, 0.05}
                            : RouterShape{40, 8, 2, 1, 1, 40, false, false, 1.0, 0.01};
    const size_t NE = size_t(s.N) * s.E, NK = size_t(s.N) * s.K;
    const Vec lg = rounded<float>(rnd(NE, sigmoid ? 35 : 38, 2.0));
    std::vector<float> bias(s.E);
    for (int i = 0; i < s.E; i++) bias[i] = 0.01f * float(i % 5) - 0.02f;
    const float* bp = sigmoid ? bias.data() : nullptr;
    std::vector<int32_t> idx(NK);
    Vec gates(NK), scores(NE);
    std::vector<int64_t> loads(s.E, 0);
    double entropy = 0;
    const double bal = cpu::router_forward<double>(idx.data(), gates.data(), scores.data(),
                                                   loads.data(), lg.data(), bp, s, &entropy);
    const Vec dg = rounded<float>(rnd(NK, 36)), dl0 = rounded<float>(rnd(NE, 37));
    Vec dl = dl0;
    cpu::router_backward<double>(dl.data(), dg.data(), 1.7, scores.data(), idx.data(), s);

    EmuLaunch L;
    const cu::RouterGeom g{s.N, s.E, s.K, s.groups, s.topk_groups, s.segment, s.sigmoid,
                           s.norm_topk, s.route_scale, s.balance_alpha};
    std::vector<float> lf = as<float>(lg), gf(NK, NAN), sf(NE, NAN), dgf = as<float>(dg), dlf = as<float>(dl0);
    std::vector<int32_t> idxg(NK, -7);
    std::vector<int64_t> loadg(s.E, 99);
    double stats[2] = {NAN, NAN};
    cu::router_forward_run(L, idxg.data(), gf.data(), sf.data(), loadg.data(), stats, lf.data(), bp, g);
    cu::router_backward_run(L, dlf.data(), dgf.data(), 1.7, sf.data(), idxg.data(), g);
    EXPECT_EQ(idxg, idx);
    EXPECT_EQ(loadg, loads);
    EXPECT_LT(rel_error(back(gf), gates), 1e-5);
    EXPECT_LT(rel_error(back(sf), scores), 1e-5);
    EXPECT_NEAR(stats[0], bal, 1e-5 * std::abs(bal) + 1e-12);
    EXPECT_NEAR(stats[1], entropy, 1e-5 * entropy);
    EXPECT_LT(rel_error(back(dlf), dl), 1e-5);
  }
}

TYPED_TEST(Emulated, MoePermutationGatherCombineScatter) {
  using T = TypeParam;
  const int N = 130, K = 3, E = 7, C = 20, NK = N * K;  // N*K > one permutation chunk
  std::vector<int32_t> id(NK);
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++) id[n * K + k] = (n * 3 + k * 2 + n / 4) % E;
  std::vector<int32_t> st(NK), so(NK), off(E + 1);
  cpu::moe_permutation(st.data(), so.data(), off.data(), id.data(), N, K, E);
  EmuLaunch L;
  std::vector<int32_t> stg(NK, -1), sog(NK, -1), offg(E + 1, -1);
  cu::moe_permutation_run(L, stg.data(), sog.data(), offg.data(), id.data(), N, K, E);
  EXPECT_EQ(stg, st);
  EXPECT_EQ(sog, so);
  EXPECT_EQ(offg, off);
  EXPECT_EQ(L.err, 0);

  const Vec x = rounded<T>(rnd(size_t(N) * C, 40)), outp = rounded<T>(rnd(size_t(NK) * C, 41));
  const Vec gates = rounded<float>(rnd(NK, 42, 0.3, 0.5)), y0 = rounded<T>(rnd(size_t(N) * C, 43));
  const Vec dy = rounded<T>(rnd(size_t(N) * C, 44)), dx0 = rounded<T>(rnd(size_t(N) * C, 45));
  Vec xp(size_t(NK) * C), y = y0, doutp(size_t(NK) * C), dgates(NK), dx = dx0;
  cpu::moe_gather<double>(xp.data(), x.data(), st.data(), NK, C);
  cpu::moe_combine<double>(y.data(), outp.data(), gates.data(), so.data(), N, K, C, true);
  cpu::moe_combine_backward<double>(doutp.data(), dgates.data(), dy.data(), outp.data(), gates.data(),
                                    so.data(), N, K, C);
  cpu::moe_scatter_add<double>(dx.data(), outp.data(), so.data(), N, K, C);
  std::vector<T> xt = as<T>(x), xpt(xp.size(), T(NAN)), ot = as<T>(outp), yt = as<T>(y0);
  std::vector<T> dyt = as<T>(dy), dopt(doutp.size(), T(NAN)), dxt = as<T>(dx0);
  std::vector<float> gf = as<float>(gates), dgf(NK, NAN);
  cu::moe_gather_run(L, xpt.data(), xt.data(), stg.data(), NK, C);
  cu::moe_combine_run(L, yt.data(), ot.data(), gf.data(), sog.data(), N, K, C, true);
  cu::moe_combine_backward_run(L, dopt.data(), dgf.data(), dyt.data(), ot.data(), gf.data(),
                               sog.data(), N, K, C);
  cu::moe_scatter_add_run(L, dxt.data(), ot.data(), sog.data(), N, K, C);
  EXPECT_EQ(back(xpt), xp);
  EXPECT_CLOSE(back(yt), y, tol<T>());
  EXPECT_CLOSE(back(dopt), doutp, tol<T>());
  EXPECT_CLOSE(back(dgf), dgates, 1e-5);
  EXPECT_CLOSE(back(dxt), dx, tol<T>());

  id[11] = E;  // an expert index out of range is reported
  cu::moe_permutation_run(L, stg.data(), sog.data(), offg.data(), id.data(), N, K, E);
  EXPECT_EQ(L.err, int(cu::DeviceError::ExpertIndexOutOfRange));
}

TYPED_TEST(Emulated, MlaKvExpand) {
  using T = TypeParam;
  const cu::MlaKvGeom g{25, 3, 8, 6, 10, 12};
  const MlaKvShape s{25, 3, 8, 6, 10, 12};
  const size_t N = s.N;
  const Vec kvb = rounded<T>(rnd(N * s.H * (s.nope + s.dv), 46)), kv = rounded<T>(rnd(N * (s.kv_lora + s.rope), 47));
  const Vec dk = rounded<T>(rnd(N * s.H * (s.nope + s.rope), 48)), dv = rounded<T>(rnd(N * s.H * s.dv, 49));
  const Vec dkv0 = rounded<T>(rnd(kv.size(), 50));
  // The CPU kernels of this op are file-local: check through the entry points in fp64.
  Buffer bkvb(Device::CPU, DType::F64, kvb.size()), bkv(Device::CPU, DType::F64, kv.size());
  Buffer bk(Device::CPU, DType::F64, dk.size()), bv(Device::CPU, DType::F64, dv.size());
  Buffer bdk(Device::CPU, DType::F64, dk.size()), bdv(Device::CPU, DType::F64, dv.size());
  Buffer bdkvb(Device::CPU, DType::F64, kvb.size()), bdkv(Device::CPU, DType::F64, kv.size());
  std::copy(kvb.begin(), kvb.end(), bkvb.view().as<double>());
  std::copy(kv.begin(), kv.end(), bkv.view().as<double>());
  std::copy(dk.begin(), dk.end(), bdk.view().as<double>());
  std::copy(dv.begin(), dv.end(), bdv.view().as<double>());
  std::copy(dkv0.begin(), dkv0.end(), bdkv.view().as<double>());
  mla_kv_expand_forward(Exec{}, bk.view(), bv.view(), bkvb.view(), bkv.view(), s);
  mla_kv_expand_backward(Exec{}, bdkvb.view(), bdkv.view(), bdk.view(), bdv.view(), s);
  auto vec = [](const Buffer& b) { return Vec(b.view().as<double>(), b.view().as<double>() + b.numel()); };
  EmuLaunch L;
  std::vector<T> kvbt = as<T>(kvb), kvt = as<T>(kv), kt(dk.size(), T(NAN)), vt(dv.size(), T(NAN));
  std::vector<T> dkt = as<T>(dk), dvt = as<T>(dv), dkvbt(kvb.size(), T(NAN)), dkvt = as<T>(dkv0);
  cu::mla_kv_expand_forward_run(L, kt.data(), vt.data(), kvbt.data(), kvt.data(), g);
  cu::mla_kv_expand_backward_run(L, dkvbt.data(), dkvt.data(), dkt.data(), dvt.data(), g);
  EXPECT_EQ(back(kt), vec(bk));
  EXPECT_EQ(back(vt), vec(bv));
  EXPECT_EQ(back(dkvbt), vec(bdkvb));
  EXPECT_CLOSE(back(dkvt), vec(bdkv), tol<T>());
}

TYPED_TEST(Emulated, ElementwiseAddConvertScale) {
  using T = TypeParam;
  const Vec y0 = rounded<T>(rnd(500, 51)), x0 = rounded<T>(rnd(500, 52)), a = rounded<float>(rnd(500, 53));
  Vec y(500), x(500), c(500);
  for (int i = 0; i < 500; i++) y[i] = y0[i] + x0[i], x[i] = x0[i] * double(0.37f), c[i] = a[i];
  EmuLaunch L;
  std::vector<T> yt = as<T>(y0), xt = as<T>(x0), ct(500, T(NAN));
  std::vector<float> af = as<float>(a);
  cu::add_run(L, yt.data(), static_cast<const T*>(xt.data()), 500);
  cu::scale_run(L, xt.data(), 0.37f, 500);
  cu::convert_run(L, ct.data(), af.data(), 500);
  EXPECT_CLOSE(back(yt), y, tol<T>());
  EXPECT_CLOSE(back(xt), x, tol<T>());
  EXPECT_CLOSE(back(ct), c, tol<T>());
}

TYPED_TEST(Emulated, AdamwMultiTensorSumSquaresRoutingBias) {
  using T = TypeParam;
  const size_t n = 40000;  // spans longer than one kAdamBlock
  const std::vector<ParamSpan> spans = {{0, 1000, true}, {1024, 20000, false}, {22000, 18000, true}};
  const Vec p0 = rounded<float>(rnd(n, 54, 0.1)), g = rounded<float>(rnd(n, 55, 0.01));
  const Vec m0 = rounded<float>(rnd(n, 56, 0.001));
  Vec v0 = rounded<float>(rnd(n, 57, 0.001));
  for (auto& x : v0) x = double(float(x * x));
  const AdamwHyper h{1e-3, 0.9, 0.95, 1e-8, 0.1, 7, 0.5};
  // oracle: the entry point in fp64 on the CPU
  auto buf = [](const Vec& v) {
    Buffer b(Device::CPU, DType::F64, v.size());
    std::copy(v.begin(), v.end(), b.view().as<double>());
    return b;
  };
  Buffer bp = buf(p0), bg = buf(g), bm = buf(m0), bv = buf(v0);
  adamw_update(Exec{}, bp.view(), bg.view(), bm.view(), bv.view(), Tensor{}, spans, h);
  const double ss = sum_squares(Exec{}, bg.view(), spans);
  auto vec = [](const Buffer& b) { return Vec(b.view().as<double>(), b.view().as<double>() + b.numel()); };

  EmuLaunch L;
  std::vector<float> pf = as<float>(p0), gf = as<float>(g), mf = as<float>(m0), vf = as<float>(v0);
  std::vector<T> compute(n, T(NAN));
  const auto ab = cu::span_blocks(std::span<const ParamSpan>(spans), cu::kAdamBlock);
  const float bc1 = float(1.0 - std::pow(h.beta1, double(h.step)));
  const cu::AdamwScalars sc{float(h.beta1), float(h.beta2), float(h.eps),
                            float(std::sqrt(1.0 - std::pow(h.beta2, double(h.step)))),
                            float(h.lr) / bc1, float(1.0 - h.lr * h.weight_decay),
                            float(h.grad_scale), h.grad_scale != 1.0};
  cu::adamw_run(L, pf.data(), gf.data(), mf.data(), vf.data(), compute.data(), ab.data(), ab.size(), sc);
  const auto sb = cu::span_blocks(std::span<const ParamSpan>(spans), cu::kSumBlock);
  const double ssg = cu::sum_squares_run(L, gf.data(), sb.data(), sb.size());
  // only the spans are touched: compare there (norm-wise: fp32 rounding of p * decay dominates)
  const Vec want_p = vec(bp), got_p = back(pf), got_c = back(compute);
  Vec wp, gp, gc;
  for (const auto& s : spans)
    for (size_t i = s.offset; i < s.offset + s.numel; i++)
      wp.push_back(want_p[i]), gp.push_back(got_p[i]), gc.push_back(got_c[i]);
  EXPECT_LT(rel_error(gp, wp), 1e-6) << "master weights";
  EXPECT_CLOSE(gc, wp, tol<T>(1e-6));
  EXPECT_LT(rel_error(back(mf), vec(bm)), 1e-6);
  EXPECT_LT(rel_error(back(vf), vec(bv)), 1e-6);
  EXPECT_NEAR(ssg, ss, 1e-12 * ss);
  EXPECT_EQ(std::isnan(float(compute[1010])), true) << "outside the spans nothing is written";

  std::vector<int64_t> loads = {5, 9, 7, 7, 0, 14};
  std::vector<float> bias = {0.1f, -0.2f, 0.0f, 0.3f, 0.05f, 0.0f}, want = bias;
  Buffer bl(Device::CPU, DType::I64, loads.size());
  std::copy(loads.begin(), loads.end(), bl.view().as<int64_t>());
  routing_bias_update(Exec{}, host_tensor(want), bl.view(), 1e-3);
  cu::routing_bias_run(L, bias.data(), loads.data(), int(loads.size()), 1e-3);
  EXPECT_EQ(bias, want);
}

TEST(CudaEmulator, ReportsADeadlockInsteadOfHanging) {
  // half the block waits at __syncthreads, the other half returns: CUDA leaves it undefined, the
  // emulator names it (threads that return count as arrived, as on sm_70+, so use a warp sync)
  struct K {
    static void kernel(int* x) {
      if (threadIdx.x < 16) __syncwarp();
      else __syncthreads();
      x[threadIdx.x] = 1;
    }
  };
  std::vector<int> x(32);
  EXPECT_THROW(emu::launch(K::kernel, dim3(1), dim3(32), 0, x.data()), Error);
}

TEST(CudaEmulator, UnwrittenSharedMemoryReadsAsNan) {
  struct K {
    static void kernel(float* out) {
      DSV3_DYNAMIC_SMEM(smem);
      float* s = reinterpret_cast<float*>(smem);
      if (threadIdx.x == 0) s[0] = 1.0f;
      __syncthreads();
      out[threadIdx.x] = s[threadIdx.x];
    }
  };
  std::vector<float> out(4);
  emu::launch(K::kernel, dim3(1), dim3(4), 4 * sizeof(float), out.data());
  EXPECT_EQ(out[0], 1.0f);
  EXPECT_TRUE(std::isnan(out[1]) && std::isnan(out[3]));
}

}  // namespace
}  // namespace dsv3::test
