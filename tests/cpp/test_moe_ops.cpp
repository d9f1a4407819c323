// MoE op family: router gradients (gates and balance loss) against finite differences in double,
// routing decisions against a brute-force re-derivation, and the permutation/combine adjoints.
#include <algorithm>
#include <numeric>

#include "ops/moe.h"
#include "test_util.h"

namespace dsv3::test {
namespace {

RouterShape shape(bool sigmoid, int groups, int topk_groups, bool norm, double alpha) {
  RouterShape s;
  s.N = 12, s.E = 8, s.K = 3, s.groups = groups, s.topk_groups = topk_groups, s.segment = 4;
  s.sigmoid = sigmoid, s.norm_topk = norm, s.route_scale = 2.5, s.balance_alpha = alpha;
  return s;
}

// Scalar: sum(gates * R) + cb * balance_loss, whose gradient w.r.t. the logits router_backward
// must give. Selection is piecewise constant; with random logits no choice sits within h of a
// tie, so central differences see only the smooth part.
void check_router_gradient(RouterShape s, bool with_bias) {
  const size_t NE = size_t(s.N) * s.E, NK = size_t(s.N) * s.K;
  std::vector<double> logits = random_vec(NE, 11), R = random_vec(NK, 12);
  std::vector<float> bias(s.E);
  for (int e = 0; e < s.E; e++) bias[e] = with_bias ? 0.05f * float(e % 3) : 0.0f;
  const double cb = 3.0;
  std::vector<int32_t> idx(NK);
  std::vector<double> gates(NK), scores(NE);
  std::vector<int64_t> loads(s.E);
  auto f = [&] {
    std::fill(loads.begin(), loads.end(), 0);
    double bal = cpu::router_forward<double>(idx.data(), gates.data(), scores.data(), loads.data(),
                                             logits.data(), with_bias ? bias.data() : nullptr, s, nullptr);
    double v = cb * bal;
    for (size_t i = 0; i < NK; i++) v += gates[i] * R[i];
    return v;
  };
  f();
  const std::vector<int32_t> idx0 = idx;
  std::vector<double> dlogits(NE, 0.0);
  cpu::router_backward<double>(dlogits.data(), R.data(), cb, scores.data(), idx.data(), s);
  std::vector<double> fd = finite_difference(f, logits, 1e-6);
  f();
  ASSERT_EQ(idx, idx0) << "a finite-difference step flipped a routing choice";
  // h = 1e-6 in double: truncation ~h^2 * f''' and rounding ~1e-16/h; 1e-7 leaves margin.
  EXPECT_LT(rel_error(dlogits, fd), 1e-7);
  // float kernel agrees with double
  std::vector<float> lf(logits.begin(), logits.end()), gf(NK), sf(NE);
  std::vector<int32_t> idxf(NK);
  std::fill(loads.begin(), loads.end(), 0);
  cpu::router_forward<float>(idxf.data(), gf.data(), sf.data(), loads.data(), lf.data(),
                             with_bias ? bias.data() : nullptr, s, nullptr);
  EXPECT_EQ(idxf, idx0);
  EXPECT_LT(rel_error(gf, gates), 1e-6);
}

TEST(Router, SigmoidGroupLimitedGradient) { check_router_gradient(shape(true, 4, 2, true, 1e-1), true); }
TEST(Router, SigmoidNoGroupsGradient) { check_router_gradient(shape(true, 1, 1, true, 1e-1), false); }
TEST(Router, SoftmaxGradient) { check_router_gradient(shape(false, 1, 1, false, 1e-1), false); }
TEST(Router, SoftmaxNormTopkGroupsGradient) { check_router_gradient(shape(false, 2, 1, true, 0.2), false); }
TEST(Router, BatchScopeGradient) {
  RouterShape s = shape(true, 1, 1, true, 0.3);
  s.segment = s.N;
  check_router_gradient(s, true);
}

// Re-derive the routing by brute force: enumerate group subsets, pick the best per the rules of
// docs/model.md, and compare choices and gates.
TEST(Router, ChoicesMatchBruteForce) {
  RouterShape s = shape(true, 4, 2, true, 0.0);
  std::vector<double> logits = random_vec(size_t(s.N) * s.E, 21);
  std::vector<float> bias = {0.3f, -0.2f, 0.f, 0.1f, 0.f, 0.f, -0.4f, 0.2f};
  std::vector<int32_t> idx(size_t(s.N) * s.K);
  std::vector<double> gates(idx.size()), scores(logits.size());
  std::vector<int64_t> loads(s.E, 0);
  cpu::router_forward<double>(idx.data(), gates.data(), scores.data(), loads.data(), logits.data(),
                              bias.data(), s, nullptr);
  for (int n = 0; n < s.N; n++) {
    std::vector<double> sc(s.E), sel(s.E);
    for (int e = 0; e < s.E; e++) {
      sc[e] = 1 / (1 + std::exp(-logits[n * s.E + e]));
      sel[e] = sc[e] + bias[e];
    }
    // group score = top-2 sum in each group of 2 experts = both
    std::vector<double> g(4);
    for (int i = 0; i < 4; i++) g[i] = sel[2 * i] + sel[2 * i + 1];
    std::vector<int> go(4);
    std::iota(go.begin(), go.end(), 0);
    std::sort(go.begin(), go.end(), [&](int a, int b) { return g[a] > g[b]; });
    std::vector<int> cand;
    for (int e = 0; e < s.E; e++)
      if (e / 2 == go[0] || e / 2 == go[1]) cand.push_back(e);
    std::sort(cand.begin(), cand.end(), [&](int a, int b) { return sel[a] > sel[b]; });
    double sum = 0;
    for (int k = 0; k < s.K; k++) sum += sc[cand[k]];
    for (int k = 0; k < s.K; k++) {
      EXPECT_EQ(idx[n * s.K + k], cand[k]) << "token " << n;
      EXPECT_NEAR(gates[n * s.K + k], 2.5 * sc[cand[k]] / sum, 1e-12);
    }
  }
  int64_t total = 0;
  for (auto l : loads) total += l;
  EXPECT_EQ(total, int64_t(s.N) * s.K);
}

// The balance loss equals its definition computed naively.
TEST(Router, BalanceLossValue) {
  RouterShape s = shape(true, 1, 1, true, 0.01);
  std::vector<double> logits = random_vec(size_t(s.N) * s.E, 31);
  std::vector<int32_t> idx(size_t(s.N) * s.K);
  std::vector<double> gates(idx.size()), scores(logits.size());
  std::vector<int64_t> loads(s.E, 0);
  double bal = cpu::router_forward<double>(idx.data(), gates.data(), scores.data(), loads.data(),
                                           logits.data(), nullptr, s, nullptr);
  double want = 0;
  for (int seg = 0; seg < s.N / s.segment; seg++) {
    for (int e = 0; e < s.E; e++) {
      double cnt = 0, P = 0;
      for (int n = seg * s.segment; n < (seg + 1) * s.segment; n++) {
        for (int k = 0; k < s.K; k++) cnt += idx[n * s.K + k] == e;
        double z = 0;
        for (int j = 0; j < s.E; j++) z += scores[n * s.E + j];
        P += scores[n * s.E + e] / z;
      }
      want += double(s.E) / (s.K * s.segment) * cnt * P / s.segment;
    }
  }
  want = 0.01 * want / (s.N / s.segment);
  EXPECT_NEAR(bal, want, 1e-15);
}

TEST(MoeDispatch, PermutationIsStableCountingSort) {
  const int N = 7, K = 2, E = 4;
  std::vector<int32_t> idx = {3, 0, 1, 3, 0, 2, 3, 1, 2, 0, 1, 2, 0, 3};
  std::vector<int32_t> slot_token(N * K), slot_of(N * K), off(E + 1);
  cpu::moe_permutation(slot_token.data(), slot_of.data(), off.data(), idx.data(), N, K, E);
  EXPECT_EQ(off, (std::vector<int32_t>{0, 4, 7, 10, 14}));
  for (int n = 0; n < N; n++)
    for (int k = 0; k < K; k++) {
      const int s = slot_of[n * K + k];
      EXPECT_EQ(slot_token[s], n);
      EXPECT_GE(s, off[idx[n * K + k]]);
      EXPECT_LT(s, off[idx[n * K + k] + 1]);
    }
  for (int e = 0; e < E; e++)  // token order kept inside each expert
    for (int s = off[e] + 1; s < off[e + 1]; s++) EXPECT_LT(slot_token[s - 1], slot_token[s]);
}

TEST(MoeDispatch, CombineGradientAndGatherScatterAdjoint) {
  const int N = 5, K = 2, C = 3, E = 3;
  std::vector<int32_t> idx = {0, 2, 1, 0, 2, 1, 0, 1, 2, 0};
  std::vector<int32_t> slot_token(N * K), slot_of(N * K), off(E + 1);
  cpu::moe_permutation(slot_token.data(), slot_of.data(), off.data(), idx.data(), N, K, E);
  std::vector<double> outp = random_vec(N * K * C, 41), gates = random_vec(N * K, 42),
                      R = random_vec(N * C, 43), y(N * C);
  auto f = [&] {
    cpu::moe_combine<double>(y.data(), outp.data(), gates.data(), slot_of.data(), N, K, C, false);
    double v = 0;
    for (int i = 0; i < N * C; i++) v += y[i] * R[i];
    return v;
  };
  std::vector<double> doutp(N * K * C), dgates(N * K);
  cpu::moe_combine_backward<double>(doutp.data(), dgates.data(), R.data(), outp.data(),
                                    gates.data(), slot_of.data(), N, K, C);
  EXPECT_LT(rel_error(doutp, finite_difference(f, outp)), 1e-8);
  EXPECT_LT(rel_error(dgates, finite_difference(f, gates)), 1e-8);
  // <gather(x), z> == <x, scatter_add(z)>
  std::vector<double> x = random_vec(N * C, 44), z = random_vec(N * K * C, 45), xp(N * K * C),
                      sx(N * C, 0.0);
  cpu::moe_gather<double>(xp.data(), x.data(), slot_token.data(), N * K, C);
  cpu::moe_scatter_add<double>(sx.data(), z.data(), slot_of.data(), N, K, C);
  double lhs = 0, rhs = 0;
  for (int i = 0; i < N * K * C; i++) lhs += xp[i] * z[i];
  for (int i = 0; i < N * C; i++) rhs += x[i] * sx[i];
  EXPECT_NEAR(lhs, rhs, 1e-12);
}

}  // namespace
}  // namespace dsv3::test
