// CPU op kernels: every backward against central finite differences in double, the fp32 kernels
// against the double ones, forwards against naive formulas, and the contract details the README
// states (accumulation, in-place cross-entropy, ignored targets, causal zeros, determinism).
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

#include "ops/attention.h"
#include "ops/cross_entropy.h"
#include "ops/embedding.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/rope.h"
#include "ops/swiglu.h"
#include "ops/vocab_parallel.h"
#include "test_util.h"

namespace dsv3 {
namespace {

using test::finite_difference;
using test::random_vec;
using test::rel_error;
using Vec = std::vector<double>;
using VecF = std::vector<float>;
template <typename V>
Tensor H(V& v) {  // a host view of a test vector
  return host_tensor(v);
}

// Finite differences in double with h = 1e-6: the central-difference truncation error is
// O(h^2 |f'''|) ~ 1e-12 and the rounding error O(eps |L| / h) ~ 1e-16 * 10 / 1e-6 = 1e-9, both
// far below 1e-6 relative to O(1) gradients, while any wrong term in a backward formula shows up
// as an O(1e-2..1) relative error.
constexpr double kFdTol = 1e-6;
// fp32 vs fp64 kernels: fp32 unit roundoff is 6e-8; the reductions here sum at most a few hundred
// terms, so honest fp32 kernels land around 1e-7, and 1e-5 still catches any real discrepancy.
constexpr double kF32Tol = 1e-5;

VecF to_f(const Vec& v) { return VecF(v.begin(), v.end()); }

double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

// The scalar L = f() is a function of x; `analytic` is the backward's dL/dx.
void expect_grad(const char* what, const std::function<double()>& f, Vec& x,
                 const Vec& analytic) {
  Vec fd = finite_difference(f, x, 1e-6);
  EXPECT_LT(rel_error(analytic, fd), kFdTol) << what;
}

// Runs fn once with one thread and once with two, and expects bit-identical outputs.
template <typename Fn>
void expect_same_with_1_and_2_threads(Fn fn) {
  int keep = omp_get_max_threads();
  omp_set_num_threads(1);
  VecF a = fn();
  omp_set_num_threads(2);
  VecF b = fn();
  omp_set_num_threads(keep);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(std::memcmp(a.data(), b.data(), a.size() * sizeof(float)), 0);
}

// ---------------------------------------------------------------------------------------------
// Embedding

TEST(Embedding, ForwardBackwardAccumulateFloat) {
  const int Vocab = 6, N = 9, C = 5;
  const std::vector<int32_t> ids = {3, 0, 3, 5, 1, 3, 0, 2, 5};  // repeats exercise the scatter
  Vec table = random_vec(size_t(Vocab) * C, 1), R = random_vec(size_t(N) * C, 2);

  Vec out(size_t(N) * C);
  cpu::embedding_forward(out.data(), ids.data(), table.data(), N, C);
  for (int n = 0; n < N; n++)
    for (int c = 0; c < C; c++) EXPECT_EQ(out[n * C + c], table[ids[n] * C + c]);

  Vec dtable(table.size(), 0.0);
  cpu::embedding_backward(dtable.data(), R.data(), ids.data(), N, C);
  auto L = [&] {
    cpu::embedding_forward(out.data(), ids.data(), table.data(), N, C);
    return dot(out, R);
  };
  expect_grad("dtable", L, table, dtable);
  for (int c = 0; c < C; c++) EXPECT_EQ(dtable[4 * C + c], 0.0);  // id 4 never appears

  Vec twice(table.size(), 0.0);
  cpu::embedding_backward(twice.data(), R.data(), ids.data(), N, C);
  cpu::embedding_backward(twice.data(), R.data(), ids.data(), N, C);
  for (size_t i = 0; i < twice.size(); i++) EXPECT_NEAR(twice[i], 2 * dtable[i], 1e-12);

  VecF tf = to_f(table), Rf = to_f(R), outf(out.size()), dtf(table.size(), 0.f);
  embedding_forward(Exec{}, H(outf), H(ids), H(tf), N, C);
  embedding_backward(Exec{}, H(dtf), H(Rf), H(ids), N, C);
  cpu::embedding_forward(out.data(), ids.data(), table.data(), N, C);
  EXPECT_LT(rel_error(outf, out), kF32Tol);
  EXPECT_LT(rel_error(dtf, dtable), kF32Tol);
}

TEST(Embedding, BackwardDeterministicAcrossThreads) {
  const int Vocab = 7, N = 600, C = 100;  // N*C above the parallel threshold
  std::vector<int32_t> ids(N);
  for (int n = 0; n < N; n++) ids[n] = (n * 5 + n / 3) % Vocab;
  VecF dout = to_f(random_vec(size_t(N) * C, 3));
  expect_same_with_1_and_2_threads([&] {
    VecF d(size_t(Vocab) * C, 0.f);
    cpu::embedding_backward(d.data(), dout.data(), ids.data(), N, C);
    return d;
  });
}

// ---------------------------------------------------------------------------------------------
// RMSNorm (strided rows, as for the MLA latent slice)

TEST(RmsNorm, StridedForwardBackwardFloat) {
  const RmsNormShape s{5, 7, 11, 9};  // N, C, x_stride > C, out_stride > C
  const float eps = 1e-5f;
  Vec x = random_vec(size_t(s.N) * s.x_stride, 10), w = random_vec(s.C, 11, 0.5);
  for (auto& v : w) v += 1.0;
  Vec R = random_vec(size_t(s.N) * s.out_stride, 12);
  const double sentinel = 42.0;

  Vec out(size_t(s.N) * s.out_stride, sentinel), rstd(s.N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), s, eps);
  for (int n = 0; n < s.N; n++) {
    double ss = 0;
    for (int c = 0; c < s.C; c++) ss += x[n * s.x_stride + c] * x[n * s.x_stride + c];
    double r = 1 / std::sqrt(ss / s.C + double(eps));
    EXPECT_NEAR(rstd[n], r, 1e-12 * r);
    for (int c = 0; c < s.C; c++)
      EXPECT_NEAR(out[n * s.out_stride + c], x[n * s.x_stride + c] * r * w[c], 1e-12);
    for (int c = s.C; c < s.out_stride; c++) EXPECT_EQ(out[n * s.out_stride + c], sentinel);
  }

  Vec dx(x.size(), 0.0), dw(w.size(), 0.0);
  cpu::rmsnorm_backward(dx.data(), dw.data(), R.data(), x.data(), w.data(), rstd.data(), s);
  auto L = [&] {
    Vec o(out.size(), sentinel), r(s.N);
    cpu::rmsnorm_forward(o.data(), r.data(), x.data(), w.data(), s, eps);
    return dot(o, R);
  };
  expect_grad("dx", L, x, dx);  // includes the columns past C: gradient 0, dx untouched
  expect_grad("dw", L, w, dw);

  Vec dx2(x.size(), 0.0), dw2(w.size(), 0.0);
  for (int rep = 0; rep < 2; rep++)
    cpu::rmsnorm_backward(dx2.data(), dw2.data(), R.data(), x.data(), w.data(), rstd.data(), s);
  for (size_t i = 0; i < dx.size(); i++) EXPECT_NEAR(dx2[i], 2 * dx[i], 1e-12);
  for (size_t i = 0; i < dw.size(); i++) EXPECT_NEAR(dw2[i], 2 * dw[i], 1e-12);

  VecF xf = to_f(x), wf = to_f(w), Rf = to_f(R), of(out.size(), float(sentinel)), rf(s.N);
  VecF dxf(x.size(), 0.f), dwf(w.size(), 0.f);
  rmsnorm_forward(Exec{}, H(of), H(rf), H(xf), H(wf), s, eps);
  rmsnorm_backward(Exec{}, H(dxf), H(dwf), H(Rf), H(xf), H(wf), H(rf), s);
  EXPECT_LT(rel_error(of, out), kF32Tol);
  EXPECT_LT(rel_error(rf, rstd), kF32Tol);
  EXPECT_LT(rel_error(dxf, dx), kF32Tol);
  EXPECT_LT(rel_error(dwf, dw), kF32Tol);
}

TEST(RmsNorm, BackwardDeterministicAcrossThreads) {
  const RmsNormShape s{300, 80, 96, 80};
  VecF x = to_f(random_vec(size_t(s.N) * s.x_stride, 13)), w = to_f(random_vec(s.C, 14));
  VecF g = to_f(random_vec(size_t(s.N) * s.out_stride, 15)), out(g.size()), rstd(s.N);
  cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), s, 1e-6f);
  expect_same_with_1_and_2_threads([&] {
    VecF dx(x.size(), 0.f), dw(s.C, 0.f);
    cpu::rmsnorm_backward(dx.data(), dw.data(), g.data(), x.data(), w.data(), rstd.data(), s);
    dx.insert(dx.end(), dw.begin(), dw.end());
    return dx;
  });
}

// ---------------------------------------------------------------------------------------------
// RoPE

TEST(Rope, FrequenciesPlainAndYarnByHand) {
  RopeParams p;
  p.dim = 16;
  p.theta = 10000.0;
  Vec f(8);
  rope_frequencies(f.data(), p);
  for (int i = 0; i < 8; i++) EXPECT_NEAR(f[i], std::pow(10000.0, -i / 8.0), 1e-15);
  EXPECT_EQ(rope_softmax_scale_multiplier(p), 1.0);

  p.factor = 40;
  p.original_max_pos = 4096;
  p.beta_fast = 32;
  p.beta_slow = 1;
  p.mscale = 1.0;
  // By hand: correction dim(r) = 16 ln(4096 / (2 pi r)) / (2 ln 10000).
  //   r = 32: 16 * ln(20.372) / 18.4207 = 16 * 3.01418 / 18.4207 = 2.618 -> floor 2
  //   r = 1:  16 * ln(651.90) / 18.4207 = 16 * 6.47990 / 18.4207 = 5.628 -> ceil 6
  // ramp (i - 2) / 4 clamped: 0 0 0 .25 .5 .75 1 1; smooth = 1 - ramp; the blended frequency is
  // f * smooth + f / 40 * (1 - smooth).
  EXPECT_NEAR(16 * std::log(4096 / (2 * M_PI * 32)) / (2 * std::log(10000.0)), 2.618, 1e-3);
  EXPECT_NEAR(16 * std::log(4096 / (2 * M_PI * 1)) / (2 * std::log(10000.0)), 5.628, 1e-3);
  const double smooth[8] = {1, 1, 1, 0.75, 0.5, 0.25, 0, 0};
  rope_frequencies(f.data(), p);
  for (int i = 0; i < 8; i++) {
    double base = std::pow(10000.0, -i / 8.0);
    EXPECT_NEAR(f[i], base * smooth[i] + base / 40 * (1 - smooth[i]), 1e-15) << i;
  }
  // mscale = 0.1 ln 40 + 1 = 1.368888; multiplier = mscale^2.
  EXPECT_NEAR(rope_softmax_scale_multiplier(p), 1.8738552, 1e-6);
  p.mscale = 0.707;
  double m = 0.1 * 0.707 * std::log(40.0) + 1;
  EXPECT_NEAR(rope_softmax_scale_multiplier(p), m * m, 1e-15);

  // Tables hold cos/sin of pos * freq.
  const int seq = 5;
  Vec cs(seq * 8), sn(seq * 8);
  cpu::rope_tables(cs.data(), sn.data(), seq, p);
  for (int t = 0; t < seq; t++)
    for (int i = 0; i < 8; i++) {
      EXPECT_NEAR(cs[t * 8 + i], std::cos(t * f[i]), 1e-15);
      EXPECT_NEAR(sn[t * 8 + i], std::sin(t * f[i]), 1e-15);
    }
}

struct RopeCase {
  RopeParams p;
  RopeLayout l;
  Vec cos, sin;
  RopeCase(double factor) {
    p.dim = 8;
    p.factor = factor;
    p.original_max_pos = 64;
    // 2 sequences of 3 tokens; 2 heads of 10 with the rotary slice at offset 2; 3 spare columns.
    l = RopeLayout{6, 3, 2, 23, 10, 2, 8};
    cos.resize(3 * 4);
    sin.resize(3 * 4);
    cpu::rope_tables(cos.data(), sin.data(), 3, p);
  }
};

TEST(Rope, ForwardBackwardFloatYarnOnAndOff) {
  for (double factor : {1.0, 40.0}) {
    RopeCase rc(factor);
    const RopeLayout& l = rc.l;
    Vec x = random_vec(size_t(l.N) * l.row_stride, 20), R = random_vec(x.size(), 21);
    Vec f(4);
    rope_frequencies(f.data(), rc.p);

    Vec y = x;
    cpu::rope_forward(y.data(), rc.cos.data(), rc.sin.data(), l);
    Vec expect = x;  // naive: rotate each pair of each head's slice by (n % T) * f[i]
    for (int n = 0; n < l.N; n++)
      for (int h = 0; h < l.heads; h++)
        for (int i = 0; i < 4; i++) {
          size_t at = size_t(n) * l.row_stride + h * l.head_stride + l.offset + 2 * i;
          double a = (n % l.T) * f[i];
          expect[at] = x[at] * std::cos(a) - x[at + 1] * std::sin(a);
          expect[at + 1] = x[at] * std::sin(a) + x[at + 1] * std::cos(a);
        }
    EXPECT_LT(rel_error(y, expect), 1e-14) << factor;

    Vec dx = R;  // backward works in place on the gradient
    cpu::rope_backward(dx.data(), rc.cos.data(), rc.sin.data(), l);
    auto L = [&] {
      Vec t = x;
      cpu::rope_forward(t.data(), rc.cos.data(), rc.sin.data(), l);
      return dot(t, R);
    };
    expect_grad("rope dx", L, x, dx);

    Vec back = y;  // backward(forward(x)) = x: the rotation is orthogonal
    cpu::rope_backward(back.data(), rc.cos.data(), rc.sin.data(), l);
    EXPECT_LT(rel_error(back, x), 1e-14);

    VecF cf = to_f(rc.cos), sf = to_f(rc.sin), yf = to_f(x), df = to_f(R);
    rope_forward(Exec{}, H(yf), H(cf), H(sf), l);
    rope_backward(Exec{}, H(df), H(cf), H(sf), l);
    EXPECT_LT(rel_error(yf, y), kF32Tol);
    EXPECT_LT(rel_error(df, dx), kF32Tol);
    rope_backward(Exec{}, H(yf), H(cf), H(sf), l);
    EXPECT_LT(rel_error(yf, x), kF32Tol);
  }
}

// ---------------------------------------------------------------------------------------------
// SwiGLU

TEST(SwiGlu, ForwardBackwardAccumulateFloat) {
  const int N = 4, D = 6;
  Vec h = random_vec(size_t(N) * 2 * D, 30, 2.0), R = random_vec(size_t(N) * D, 31);
  Vec out(size_t(N) * D);
  cpu::swiglu_forward(out.data(), h.data(), N, D);
  for (int n = 0; n < N; n++)
    for (int d = 0; d < D; d++) {
      double g = h[n * 2 * D + d], u = h[n * 2 * D + D + d];
      EXPECT_NEAR(out[n * D + d], g / (1 + std::exp(-g)) * u, 1e-14);
    }

  Vec dh(h.size(), 0.0);
  cpu::swiglu_backward(dh.data(), R.data(), h.data(), N, D, true);
  auto L = [&] {
    cpu::swiglu_forward(out.data(), h.data(), N, D);
    return dot(out, R);
  };
  expect_grad("dh", L, h, dh);

  Vec dh2(h.size(), 0.0);
  cpu::swiglu_backward(dh2.data(), R.data(), h.data(), N, D, true);
  cpu::swiglu_backward(dh2.data(), R.data(), h.data(), N, D, true);
  for (size_t i = 0; i < dh.size(); i++) EXPECT_NEAR(dh2[i], 2 * dh[i], 1e-12);
  Vec dh3(h.size(), 123.0);  // Write::Overwrite ignores what was there
  cpu::swiglu_backward(dh3.data(), R.data(), h.data(), N, D, false);
  EXPECT_EQ(dh3, dh);

  VecF hf = to_f(h), Rf = to_f(R), of(out.size()), dhf(h.size(), 0.f);
  swiglu_forward(Exec{}, H(of), H(hf), N, D);
  swiglu_backward(Exec{}, H(dhf), H(Rf), H(hf), N, D);
  cpu::swiglu_forward(out.data(), h.data(), N, D);
  EXPECT_LT(rel_error(of, out), kF32Tol);
  EXPECT_LT(rel_error(dhf, dh), kF32Tol);
}

TEST(SwiGlu, LargeGatesStayFinite) {
  VecF h = {-200.f, 200.f, -90.f, 3.f, 1.f, 1.f}, out(3), dh(6, 0.f), g = {1.f, 1.f, 1.f};
  swiglu_forward(Exec{}, H(out), H(h), 1, 3);
  swiglu_backward(Exec{}, H(dh), H(g), H(h), 1, 3);
  for (float v : out) EXPECT_TRUE(std::isfinite(v));
  for (float v : dh) EXPECT_TRUE(std::isfinite(v));
  EXPECT_NEAR(out[1], 200.f, 1e-3);
  EXPECT_NEAR(dh[1], 1.f, 1e-6);  // d silu / dg -> 1 for large g
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

TEST(CrossEntropy, ForwardBackwardIgnoreInPlaceFloat) {
  const int N = 6, V = 11;
  const std::vector<int32_t> tg = {3, -1, 0, 10, -1, 5};
  const double dloss = 0.7;
  Vec x = random_vec(size_t(N) * V, 40, 2.0);

  Vec loss(N, -1.0);
  cpu::cross_entropy_forward(loss.data(), x.data(), tg.data(), N, V);
  for (int n = 0; n < N; n++) {
    if (tg[n] < 0) {
      EXPECT_EQ(loss[n], 0.0);
      continue;
    }
    double z = 0;
    for (int j = 0; j < V; j++) z += std::exp(x[n * V + j]);
    EXPECT_NEAR(loss[n], std::log(z) - x[n * V + tg[n]], 1e-13);
  }

  Vec dx(x.size(), 123.0);  // overwritten, not accumulated
  cpu::cross_entropy_backward(dx.data(), x.data(), tg.data(), Vec(N, dloss).data(), N, V);
  auto L = [&] {
    cpu::cross_entropy_forward(loss.data(), x.data(), tg.data(), N, V);
    double s = 0;
    for (double l : loss) s += dloss * l;
    return s;
  };
  expect_grad("dlogits", L, x, dx);
  for (int n : {1, 4})
    for (int j = 0; j < V; j++) EXPECT_EQ(dx[n * V + j], 0.0);

  VecF xf = to_f(x), lf(N), df(x.size(), -5.f), rowf(N, float(dloss));
  cross_entropy_forward(Exec{}, H(lf), H(xf), H(tg), N, V);
  cross_entropy_backward(Exec{}, H(df), H(xf), H(tg), H(rowf), N, V);
  cpu::cross_entropy_forward(loss.data(), x.data(), tg.data(), N, V);
  EXPECT_LT(rel_error(lf, loss), kF32Tol);
  EXPECT_LT(rel_error(df, dx), kF32Tol);

  VecF inplace = xf;  // dlogits aliasing logits gives the same bits as out of place
  cross_entropy_backward(Exec{}, H(inplace), H(inplace), H(tg), H(rowf), N, V);
  EXPECT_EQ(std::memcmp(inplace.data(), df.data(), df.size() * sizeof(float)), 0);
}

TEST(CrossEntropy, LargeLogitsAreStable) {
  // Max subtraction: shifting a row by a constant changes nothing, even where exp would overflow.
  const int N = 3, V = 50;
  const std::vector<int32_t> tg = {7, 0, 49};
  VecF x = to_f(random_vec(size_t(N) * V, 41)), xs = x, l(N), ls(N), d(x.size()), ds(x.size());
  VecF ones_f(N, 1.f);
  for (auto& v : xs) v += 1000.f;
  cross_entropy_forward(Exec{}, H(l), H(x), H(tg), N, V);
  cross_entropy_forward(Exec{}, H(ls), H(xs), H(tg), N, V);
  cross_entropy_backward(Exec{}, H(d), H(x), H(tg), H(ones_f), N, V);
  cross_entropy_backward(Exec{}, H(ds), H(xs), H(tg), H(ones_f), N, V);
  EXPECT_LT(rel_error(ls, l), 1e-4);  // the shift costs float ulps of 1000 in each logit
  EXPECT_LT(rel_error(ds, d), 1e-3);
}

TEST(CrossEntropy, SoftmaxAccurateOverWideRange) {
  // Rows (0, -a) for a in [0, 80]: the fp32 softmax probability exp(-a) / (1 + exp(-a)) must keep
  // fp32 relative accuracy (a few ulps) all the way down to e^-80, so the vectorised exp is
  // exact enough everywhere a softmax can land.
  const int N = 801, V = 2;
  std::vector<int32_t> tg(N, 0);
  Vec x(size_t(N) * V), d(x.size());
  for (int n = 0; n < N; n++) x[n * V + 1] = -0.1 * n;
  VecF xf = to_f(x), df(x.size()), ones_f(N, 1.f);
  cpu::cross_entropy_backward(d.data(), x.data(), tg.data(), Vec(N, 1.0).data(), N, V);
  cross_entropy_backward(Exec{}, H(df), H(xf), H(tg), H(ones_f), N, V);
  for (int n = 0; n < N; n++) {
    double ref = std::exp(double(xf[n * V + 1])) / (1 + std::exp(double(xf[n * V + 1])));
    EXPECT_NEAR(df[n * V + 1], ref, 5e-7 * ref) << n;
    EXPECT_NEAR(d[n * V + 1], std::exp(x[n * V + 1]) / (1 + std::exp(x[n * V + 1])), 1e-15);
  }
}

// ---------------------------------------------------------------------------------------------
// Attention

// Naive causal attention in double, for the forward.
void naive_attention(Vec& out, Vec& probs, const Vec& q, const Vec& k, const Vec& v,
                     AttentionShape s) {
  out.assign(size_t(s.B) * s.T * s.H * s.dv, 0.0);
  probs.assign(size_t(s.B) * s.H * s.T * s.T, 0.0);
  for (int b = 0; b < s.B; b++)
    for (int h = 0; h < s.H; h++)
      for (int i = 0; i < s.T; i++) {
        double* p = &probs[((size_t(b) * s.H + h) * s.T + i) * s.T];
        for (int j = 0; j <= i; j++) {
          double dotqk = 0;
          for (int d = 0; d < s.dqk; d++)
            dotqk += q[((size_t(b) * s.T + i) * s.H + h) * s.dqk + d] *
                     k[((size_t(b) * s.T + j) * s.H + h) * s.dqk + d];
          p[j] = std::exp(dotqk * s.scale);  // inputs are small: no max needed here
        }
        double z = 0;
        for (int j = 0; j <= i; j++) z += p[j];
        for (int j = 0; j <= i; j++) p[j] /= z;
        for (int d = 0; d < s.dv; d++) {
          double acc = 0;
          for (int j = 0; j <= i; j++)
            acc += p[j] * v[((size_t(b) * s.T + j) * s.H + h) * s.dv + d];
          out[((size_t(b) * s.T + i) * s.H + h) * s.dv + d] = acc;
        }
      }
}

void expect_causal_probs(const VecF& probs, AttentionShape s, double sum_tol) {
  for (int bh = 0; bh < s.B * s.H; bh++)
    for (int i = 0; i < s.T; i++) {
      const float* p = &probs[(size_t(bh) * s.T + i) * s.T];
      double sum = 0;
      for (int j = 0; j <= i; j++) sum += p[j];
      EXPECT_NEAR(sum, 1.0, sum_tol);
      for (int j = i + 1; j < s.T; j++) ASSERT_EQ(p[j], 0.f) << bh << " " << i << " " << j;
    }
}

// T = 37 spans two query blocks with a partial one, so the block-causal path is exercised.
TEST(Attention, ForwardBackwardAccumulateFloat) {
  const AttentionShape s{2, 37, 2, 6, 4, 0.45};
  const size_t nq = size_t(s.B) * s.T * s.H * s.dqk, nv = size_t(s.B) * s.T * s.H * s.dv;
  const size_t np = size_t(s.B) * s.H * s.T * s.T;
  Vec q = random_vec(nq, 50), k = random_vec(nq, 51), v = random_vec(nv, 52);
  Vec R = random_vec(nv, 53);

  Vec out(nv), probs(np, NAN), ref_out, ref_probs;
  cpu::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
  naive_attention(ref_out, ref_probs, q, k, v, s);
  EXPECT_LT(rel_error(out, ref_out), 1e-13);
  EXPECT_LT(rel_error(probs, ref_probs), 1e-13);
  for (int bh = 0; bh < s.B * s.H; bh++)
    for (int i = 0; i < s.T; i++)
      for (int j = i + 1; j < s.T; j++) ASSERT_EQ(probs[(size_t(bh) * s.T + i) * s.T + j], 0.0);

  Vec dq(nq, 0.0), dk(nq, 0.0), dv(nv, 0.0);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(),
                          probs.data(), s);
  Vec o(nv), p(np);
  auto L = [&] {
    cpu::attention_forward(o.data(), p.data(), q.data(), k.data(), v.data(), s);
    return dot(o, R);
  };
  expect_grad("dq", L, q, dq);
  expect_grad("dk", L, k, dk);
  expect_grad("dv", L, v, dv);

  Vec dq2(nq, 0.0), dk2(nq, 0.0), dv2(nv, 0.0);
  for (int rep = 0; rep < 2; rep++)
    cpu::attention_backward(dq2.data(), dk2.data(), dv2.data(), R.data(), q.data(), k.data(),
                            v.data(), probs.data(), s);
  for (size_t i = 0; i < nq; i++) EXPECT_NEAR(dq2[i], 2 * dq[i], 1e-12);
  for (size_t i = 0; i < nq; i++) EXPECT_NEAR(dk2[i], 2 * dk[i], 1e-12);
  for (size_t i = 0; i < nv; i++) EXPECT_NEAR(dv2[i], 2 * dv[i], 1e-12);

  VecF qf = to_f(q), kf = to_f(k), vf = to_f(v), Rf = to_f(R), of(nv), pf(np, NAN);
  VecF dqf(nq, 0.f), dkf(nq, 0.f), dvf(nv, 0.f);
  attention_forward(Exec{}, H(of), H(pf), H(qf), H(kf), H(vf), s);
  attention_backward(Exec{}, H(dqf), H(dkf), H(dvf), H(Rf), H(qf), H(kf),
                     H(vf), H(of), H(pf), s);
  EXPECT_LT(rel_error(of, out), kF32Tol);
  EXPECT_LT(rel_error(pf, probs), kF32Tol);
  EXPECT_LT(rel_error(dqf, dq), kF32Tol);
  EXPECT_LT(rel_error(dkf, dk), kF32Tol);
  EXPECT_LT(rel_error(dvf, dv), kF32Tol);
  expect_causal_probs(pf, s, 1e-5);
}

// Several blocks, large scores (max subtraction matters: exp(300) overflows float), and a T that
// is a multiple of the block: fp32 against fp64, causal zeros and normalised rows.
TEST(Attention, LongerSequenceLargeScoresFloat) {
  const AttentionShape s{1, 128, 3, 16, 8, 1.0};
  const size_t nq = size_t(s.B) * s.T * s.H * s.dqk, nv = size_t(s.B) * s.T * s.H * s.dv;
  const size_t np = size_t(s.B) * s.H * s.T * s.T;
  Vec q = random_vec(nq, 60, 4.0), k = random_vec(nq, 61, 4.0), v = random_vec(nv, 62);
  Vec R = random_vec(nv, 63);
  Vec out(nv), probs(np), dq(nq, 0.0), dk(nq, 0.0), dv(nv, 0.0);
  cpu::attention_forward(out.data(), probs.data(), q.data(), k.data(), v.data(), s);
  cpu::attention_backward(dq.data(), dk.data(), dv.data(), R.data(), q.data(), k.data(), v.data(),
                          probs.data(), s);
  VecF qf = to_f(q), kf = to_f(k), vf = to_f(v), Rf = to_f(R), of(nv), pf(np, NAN);
  VecF dqf(nq, 0.f), dkf(nq, 0.f), dvf(nv, 0.f);
  attention_forward(Exec{}, H(of), H(pf), H(qf), H(kf), H(vf), s);
  attention_backward(Exec{}, H(dqf), H(dkf), H(dvf), H(Rf), H(qf), H(kf),
                     H(vf), H(of), H(pf), s);
  expect_causal_probs(pf, s, 1e-5);
  // Scores of size ~250 amplify fp32 input rounding (relative 6e-8 of 250 = 1.5e-5 in a logit),
  // so the tolerance here is looser than kF32Tol.
  EXPECT_LT(rel_error(of, out), 1e-4);
  EXPECT_LT(rel_error(pf, probs), 1e-4);
  EXPECT_LT(rel_error(dqf, dq), 1e-4);
  EXPECT_LT(rel_error(dkf, dk), 1e-4);
  EXPECT_LT(rel_error(dvf, dv), 1e-4);
}

// Linear (the BLAS wrapper every projection uses): y = x w^T, backward accumulates dx and dw.
TEST(Linear, BackwardMatchesFiniteDifferencesDouble) {
  const int N = 5, in = 4, out = 3;
  std::vector<double> x = test::random_vec(N * in, 71), w = test::random_vec(out * in, 72),
                      R = test::random_vec(N * out, 73), y(N * out);
  const Exec ex;
  auto f = [&] {
    linear_forward(ex, H(y), H(x), H(w), N, in, out);
    double v = 0;
    for (int i = 0; i < N * out; i++) v += y[i] * R[i];
    return v;
  };
  std::vector<double> dx(N * in, 0.0), dw(out * in, 0.0);
  linear_backward(ex, H(dx), H(dw), H(R), H(x), H(w), N, in, out);
  // f is bilinear: central differences are exact up to rounding (~1e-16/h).
  EXPECT_LT(test::rel_error(dx, test::finite_difference(f, x)), 1e-8);
  EXPECT_LT(test::rel_error(dw, test::finite_difference(f, w)), 1e-8);
  std::vector<double> dx2 = dx;
  linear_backward(ex, H(dx2), Tensor{}, H(R), H(x), H(w), N, in, out);
  for (int i = 0; i < N * in; i++) EXPECT_DOUBLE_EQ(dx2[i], 2 * dx[i]);  // accumulates
  std::vector<double> dx3(N * in, 77.0);
  linear_backward(ex, H(dx3), Tensor{}, H(R), H(x), H(w), N, in, out, Write::Overwrite);
  for (int i = 0; i < N * in; i++) EXPECT_NEAR(dx3[i], dx[i], 1e-15);  // overwrites
  f();  // y at the unperturbed x
  std::vector<double> y2 = y;
  linear_forward(ex, H(y2), H(x), H(w), N, in, out, Write::Accumulate);
  for (int i = 0; i < N * out; i++) EXPECT_NEAR(y2[i], 2 * y[i], 1e-12);
}


// ---------------------------------------------------------------------------------------------
// Vocabulary-parallel cross-entropy and embedding (tensor parallelism): three shards of the
// vocabulary, their reductions done here as the tp ranks do them, give the whole ops' results.

TEST(VocabParallel, ShardsReproduceTheWholeCrossEntropyAndEmbedding) {
  const int N = 6, P = 3, Vs = 4, V = P * Vs, C = 5;
  const std::vector<int32_t> tg = {3, -1, 0, 11, 7, 4};
  Vec x = random_vec(size_t(N) * V, 41, 3.0), row = random_vec(N, 42, 1.0);
  Vec loss(N), dx(x.size());
  cpu::cross_entropy_forward(loss.data(), x.data(), tg.data(), N, V);
  cpu::cross_entropy_backward(dx.data(), x.data(), tg.data(), row.data(), N, V);
  std::vector<Vec> shard(P, Vec(size_t(N) * Vs)), stats(P, Vec(3 * size_t(N)));
  for (int r = 0; r < P; r++)
    for (int n = 0; n < N; n++)
      for (int j = 0; j < Vs; j++) shard[r][n * Vs + j] = x[n * V + r * Vs + j];
  for (int r = 0; r < P; r++) cpu::ce_shard_max(stats[r].data(), shard[r].data(), N, Vs);
  for (int n = 0; n < N; n++) {  // all-reduce max
    double m = stats[0][n];
    for (int r = 1; r < P; r++) m = std::max(m, stats[r][n]);
    for (int r = 0; r < P; r++) stats[r][n] = m;
  }
  for (int r = 0; r < P; r++) cpu::ce_shard_sums(stats[r].data(), shard[r].data(), tg.data(), r * Vs, N, Vs);
  for (int i = N; i < 3 * N; i++) {  // all-reduce sum of the exponentials and target logits
    double s = 0;
    for (int r = 0; r < P; r++) s += stats[r][i];
    for (int r = 0; r < P; r++) stats[r][i] = s;
  }
  for (int r = 0; r < P; r++) {
    Vec l(N, -1.0), d(size_t(N) * Vs, 9.0);
    cpu::ce_shard_loss(l.data(), stats[r].data(), tg.data(), N);
    for (int n = 0; n < N; n++) EXPECT_NEAR(l[n], loss[n], 1e-12) << r << " " << n;
    cpu::ce_shard_backward(d.data(), shard[r].data(), stats[r].data(), tg.data(), row.data(),
                           r * Vs, N, Vs);
    for (int n = 0; n < N; n++)
      for (int j = 0; j < Vs; j++) EXPECT_NEAR(d[n * Vs + j], dx[n * V + r * Vs + j], 1e-12);
  }
  // embedding: each shard's rows, zero elsewhere, sum to the whole lookup; the backward lands
  // each token's gradient in its shard only
  const std::vector<int32_t> ids = {0, 11, 4, 4, 7, 3};
  Vec table = random_vec(size_t(V) * C, 43, 1.0), whole(size_t(N) * C), sum(size_t(N) * C, 0.0);
  Vec dout = random_vec(size_t(N) * C, 44, 1.0), dwhole(size_t(V) * C, 0.0);
  cpu::embedding_forward(whole.data(), ids.data(), table.data(), N, C);
  cpu::embedding_backward(dwhole.data(), dout.data(), ids.data(), N, C);
  for (int r = 0; r < P; r++) {
    Vec out(size_t(N) * C), dt(size_t(Vs) * C, 0.0);
    cpu::embedding_shard_forward(out.data(), ids.data(), table.data() + size_t(r) * Vs * C, r * Vs, Vs, N, C);
    for (size_t i = 0; i < out.size(); i++) sum[i] += out[i];
    cpu::embedding_shard_backward(dt.data(), dout.data(), ids.data(), r * Vs, Vs, N, C);
    for (size_t i = 0; i < dt.size(); i++) EXPECT_EQ(dt[i], dwhole[size_t(r) * Vs * C + i]);
  }
  EXPECT_EQ(sum, whole);
}

}  // namespace
}  // namespace dsv3
