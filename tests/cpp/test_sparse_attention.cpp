// Sparse attention (M6): window and LSH attention against dense attention with the equivalent
// mask (forward and backward, fp64 to rounding and fp32 to fp32 rounding), finite differences
// of the sparse op's backward, the LSH key lists against a brute-force construction, their
// determinism, and the model trained with each pattern through the CLI.
#include <omp.h>

#include <algorithm>
#include <functional>
#include <set>

#include "cli_util.h"
#include "ops/attention.h"
#include "ops/sparse_attention.h"
#include "test_util.h"

namespace dsv3 {
namespace {

using test::random_vec;
using test::rel_error;
using Vec = std::vector<double>;
using VecF = std::vector<float>;
template <typename V>
Tensor H(V& v) {
  return host_tensor(v);
}
VecF to_f(const Vec& v) { return VecF(v.begin(), v.end()); }
double dot(const Vec& a, const Vec& b) {
  double s = 0;
  for (size_t i = 0; i < a.size(); i++) s += a[i] * b[i];
  return s;
}

using Mask = std::function<bool(int b, int h, int i, int j)>;

// Dense attention restricted to `mask` (j <= i assumed by the mask), naive, in double: forward
// and the backward of L = <out, dout>.
struct DenseRef {
  Vec out, dq, dk, dv;
};
DenseRef masked_dense(const Vec& q, const Vec& k, const Vec& v, const Vec& dout,
                      const SparseAttentionShape& s, const Mask& allowed) {
  const int T = s.T, Hh = s.H, dqk = s.dqk, dvv = s.dv;
  auto Q = [&](int b, int t, int h) { return &q[((size_t(b) * T + t) * Hh + h) * dqk]; };
  auto Kp = [&](int b, int t, int h) { return &k[((size_t(b) * T + t) * Hh + h) * dqk]; };
  auto V = [&](int b, int t, int h) { return &v[((size_t(b) * T + t) * Hh + h) * dvv]; };
  DenseRef r;
  r.out.assign(v.size(), 0.0), r.dq.assign(q.size(), 0.0), r.dk.assign(q.size(), 0.0), r.dv.assign(v.size(), 0.0);
  for (int b = 0; b < s.B; b++)
    for (int h = 0; h < Hh; h++)
      for (int i = 0; i < T; i++) {
        Vec P(T, 0.0), dP(T, 0.0);
        double m = -1e300;
        for (int j = 0; j < T; j++)
          if (allowed(b, h, i, j)) {
            double x = 0;
            for (int d = 0; d < dqk; d++) x += Q(b, i, h)[d] * Kp(b, j, h)[d];
            P[j] = x * s.scale;
            m = std::max(m, P[j]);
          }
        double z = 0;
        for (int j = 0; j < T; j++) z += allowed(b, h, i, j) ? (P[j] = std::exp(P[j] - m)) : (P[j] = 0);
        for (int j = 0; j < T; j++) P[j] /= z;
        const double* go = &dout[((size_t(b) * T + i) * Hh + h) * dvv];
        double* o = &r.out[((size_t(b) * T + i) * Hh + h) * dvv];
        double sum = 0;
        for (int j = 0; j < T; j++) {
          for (int d = 0; d < dvv; d++) o[d] += P[j] * V(b, j, h)[d];
          for (int d = 0; d < dvv; d++) dP[j] += go[d] * V(b, j, h)[d];
          sum += P[j] * dP[j];
        }
        for (int j = 0; j < T; j++) {
          if (P[j] == 0) continue;
          const double ds = s.scale * P[j] * (dP[j] - sum);
          for (int d = 0; d < dqk; d++) {
            r.dq[((size_t(b) * T + i) * Hh + h) * dqk + d] += ds * Kp(b, j, h)[d];
            r.dk[((size_t(b) * T + j) * Hh + h) * dqk + d] += ds * Q(b, i, h)[d];
          }
          for (int d = 0; d < dvv; d++) r.dv[((size_t(b) * T + j) * Hh + h) * dvv + d] += P[j] * go[d];
        }
      }
  return r;
}

struct Inputs {
  Vec q, k, v, dout;
};
Inputs inputs(const SparseAttentionShape& s, uint64_t seed) {
  const size_t nq = size_t(s.B) * s.T * s.H * s.dqk, nv = size_t(s.B) * s.T * s.H * s.dv;
  return {random_vec(nq, seed), random_vec(nq, seed + 1), random_vec(nv, seed + 2), random_vec(nv, seed + 3)};
}

// The sparse op in double and float against the masked dense reference.
void expect_equals_masked_dense(const SparseAttentionShape& s, std::vector<int32_t> index, const Mask& mask,
                                uint64_t seed) {
  Inputs in = inputs(s, seed);
  const DenseRef ref = masked_dense(in.q, in.k, in.v, in.dout, s, mask);
  const size_t np = size_t(s.B) * s.H * s.T * s.K;
  Tensor idx = s.window ? Tensor{} : H(index);
  Vec out(in.v.size()), probs(np), dq(in.q.size(), 0.0), dk(in.q.size(), 0.0), dv(in.v.size(), 0.0);
  sparse_attention_forward(Exec{}, H(out), H(probs), H(in.q), H(in.k), H(in.v), idx, s);
  sparse_attention_backward(Exec{}, H(dq), H(dk), H(dv), H(in.dout), H(in.q), H(in.k), H(in.v), H(probs), idx, s);
  EXPECT_LT(rel_error(out, ref.out), 1e-13);
  EXPECT_LT(rel_error(dq, ref.dq), 1e-12);
  EXPECT_LT(rel_error(dk, ref.dk), 1e-12);
  EXPECT_LT(rel_error(dv, ref.dv), 1e-12);
  // rows of P sum to one over the listed keys
  for (size_t r = 0; r < size_t(s.B) * s.H * s.T; r++) {
    double sum = 0;
    for (int j = 0; j < s.K; j++) sum += probs[r * s.K + j];
    ASSERT_NEAR(sum, 1.0, 1e-12) << r;
  }
  VecF qf = to_f(in.q), kf = to_f(in.k), vf = to_f(in.v), gf = to_f(in.dout), of(out.size()), pf(np);
  VecF dqf(dq.size(), 0.f), dkf(dk.size(), 0.f), dvf(dv.size(), 0.f);
  sparse_attention_forward(Exec{}, H(of), H(pf), H(qf), H(kf), H(vf), idx, s);
  sparse_attention_backward(Exec{}, H(dqf), H(dkf), H(dvf), H(gf), H(qf), H(kf), H(vf), H(pf), idx, s);
  EXPECT_LT(rel_error(of, ref.out), 1e-5);
  EXPECT_LT(rel_error(dqf, ref.dq), 1e-5);
  EXPECT_LT(rel_error(dkf, ref.dk), 1e-5);
  EXPECT_LT(rel_error(dvf, ref.dv), 1e-5);
}

TEST(SparseAttention, WindowEqualsDenseWithTheWindowMask) {
  for (int W : {1, 5, 16}) {
    const SparseAttentionShape s{2, 37, 3, 10, 6, 0.37, W, W};
    expect_equals_masked_dense(s, {}, [&](int, int, int i, int j) { return j <= i && j > i - W; }, 100 + W);
  }
}

TEST(SparseAttention, WindowCoveringTheSequenceIsDenseAttention) {
  const SparseAttentionShape s{1, 29, 2, 8, 5, 0.4, 40, 40};
  const AttentionShape ds{1, 29, 2, 8, 5, 0.4};
  Inputs in = inputs(s, 7);
  Vec o1(in.v.size()), p1(size_t(2) * 29 * 40), o2(in.v.size()), p2(size_t(2) * 29 * 29);
  sparse_attention_forward(Exec{}, H(o1), H(p1), H(in.q), H(in.k), H(in.v), Tensor{}, s);
  attention_forward(Exec{}, H(o2), H(p2), H(in.q), H(in.k), H(in.v), ds);
  EXPECT_LT(rel_error(o1, o2), 1e-14);
  Vec a(in.q.size(), 0.0), b(in.q.size(), 0.0), c(in.v.size(), 0.0);
  Vec a2 = a, b2 = b, c2 = c;
  sparse_attention_backward(Exec{}, H(a), H(b), H(c), H(in.dout), H(in.q), H(in.k), H(in.v), H(p1), Tensor{}, s);
  attention_backward(Exec{}, H(a2), H(b2), H(c2), H(in.dout), H(in.q), H(in.k), H(in.v), H(o2), H(p2), ds);
  EXPECT_LT(rel_error(a, a2), 1e-13);
  EXPECT_LT(rel_error(b, b2), 1e-13);
  EXPECT_LT(rel_error(c, c2), 1e-13);
}

// Brute-force LSH key lists: buckets by argmax of [xR, -xR], std::sort by (bucket, position),
// chunks, previous chunk, causal, self, union over rounds.
std::vector<std::set<int>> naive_lsh(const Vec& q, const Vec& k, const std::vector<float>& rot, LshShape s,
                                     int b, int h) {
  const int half = s.buckets / 2;
  std::vector<std::set<int>> keys(size_t(s.T));
  for (int i = 0; i < s.T; i++) keys[size_t(i)].insert(i);
  auto bucket = [&](const double* x, int r) {
    std::vector<double> pr;
    for (int m = 0; m < half; m++) {
      double p = 0;
      for (int d = 0; d < s.dqk; d++)
        p += x[d] * double(rot[((size_t(h) * s.rounds + r) * s.dqk + d) * half + m]);
      pr.push_back(p);
    }
    for (int m = 0; m < half; m++) pr.push_back(-pr[size_t(m)]);
    return int(std::max_element(pr.begin(), pr.end()) - pr.begin());
  };
  for (int r = 0; r < s.rounds; r++) {
    std::vector<std::pair<int, int>> qs, ks;  // (bucket, position)
    for (int t = 0; t < s.T; t++) {
      const size_t o = ((size_t(b) * s.T + t) * s.H + h) * s.dqk;
      qs.push_back({bucket(&q[o], r), t});
      ks.push_back({bucket(&k[o], r), t});
    }
    std::sort(qs.begin(), qs.end());
    std::sort(ks.begin(), ks.end());
    for (int n = 0; n < s.T; n++) {
      const int c = n / s.chunk, i = qs[size_t(n)].second;
      for (int m = 0; m < s.T; m++)
        if ((m / s.chunk == c || m / s.chunk == c - 1) && ks[size_t(m)].second <= i) keys[size_t(i)].insert(ks[size_t(m)].second);
    }
  }
  return keys;
}

TEST(SparseAttention, LshIndexIsTheBucketConstructionAndDeterministic) {
  const LshShape ls{2, 53, 3, 12, 6, 2, 8};
  const SparseAttentionShape s{2, 53, 3, 12, 7, 0.3, ls.K(), 0};
  Inputs in = inputs(s, 300);
  std::vector<float> rot(size_t(ls.H) * ls.rounds * ls.dqk * (ls.buckets / 2));
  lsh_rotations(rot.data(), ls.H, ls.rounds, ls.dqk, ls.buckets, 42);
  std::vector<int32_t> index(size_t(ls.B) * ls.H * ls.T * ls.K()), buckets(size_t(ls.B) * ls.H * ls.rounds * 2 * ls.T);
  lsh_attention_index(Exec{}, H(index), H(buckets), H(in.q), H(in.k), H(rot), ls);
  for (int b = 0; b < ls.B; b++)
    for (int h = 0; h < ls.H; h++) {
      const auto want = naive_lsh(in.q, in.k, rot, ls, b, h);
      for (int i = 0; i < ls.T; i++) {
        const int32_t* row = &index[((size_t(b) * ls.H + h) * ls.T + i) * ls.K()];
        std::vector<int> got;
        for (int j = 0; j < ls.K(); j++)
          if (row[j] >= 0) got.push_back(row[j]);
          else for (int j2 = j; j2 < ls.K(); j2++) ASSERT_EQ(row[j2], -1);  // padding at the end only
        EXPECT_EQ(got, std::vector<int>(want[size_t(i)].begin(), want[size_t(i)].end())) << b << " " << h << " " << i;
      }
    }
  // the buckets spread over more than one value, and differ between heads
  std::set<int> used(buckets.begin(), buckets.begin() + ls.T);
  EXPECT_GT(used.size(), 2u);
  // deterministic: again, on one thread, gives the same lists; another seed other rotations
  std::vector<int32_t> again(index.size());
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  lsh_attention_index(Exec{}, H(again), Tensor{}, H(in.q), H(in.k), H(rot), ls);
  omp_set_num_threads(threads);
  EXPECT_EQ(again, index);
  std::vector<float> rot2(rot.size()), rot3(rot.size());
  lsh_rotations(rot2.data(), ls.H, ls.rounds, ls.dqk, ls.buckets, 42);
  lsh_rotations(rot3.data(), ls.H, ls.rounds, ls.dqk, ls.buckets, 43);
  EXPECT_EQ(rot, rot2);
  EXPECT_NE(rot, rot3);
  // and attention over these lists is dense attention with the LSH mask
  std::vector<std::set<int>> allowed_keys;
  for (int b = 0; b < ls.B; b++)
    for (int h = 0; h < ls.H; h++)
      for (int i = 0; i < ls.T; i++) {
        std::set<int> k;
        const int32_t* row = &index[((size_t(b) * ls.H + h) * ls.T + i) * ls.K()];
        for (int j = 0; j < ls.K(); j++)
          if (row[j] >= 0) k.insert(row[j]);
        allowed_keys.push_back(k);
      }
  expect_equals_masked_dense(s, index, [&](int b, int h, int i, int j) {
    return allowed_keys[(size_t(b) * ls.H + h) * ls.T + i].count(j) > 0;
  }, 300);
}

TEST(SparseAttention, BackwardMatchesFiniteDifferences) {
  // an explicit index with ragged rows; and a window
  for (int window : {0, 6}) {
    const int T = 19, K = window ? window : 7;
    const SparseAttentionShape s{1, T, 2, 5, 4, 0.6, K, window};
    std::vector<int32_t> index(size_t(2) * T * K, -1);
    for (int h = 0; h < 2; h++)
      for (int i = 0; i < T; i++) {
        std::set<int> ks = {i, i / 2, (i * 7 + h) % (i + 1), std::max(0, i - 3)};
        int j = 0;
        for (int x : ks) index[(size_t(h) * T + i) * K + j++] = x;
      }
    Tensor idx = window ? Tensor{} : H(index);
    Inputs in = inputs(s, 500 + window);
    Vec out(in.v.size()), P(size_t(2) * T * K), dq(in.q.size(), 0.0), dk(in.q.size(), 0.0), dv(in.v.size(), 0.0);
    sparse_attention_forward(Exec{}, H(out), H(P), H(in.q), H(in.k), H(in.v), idx, s);
    sparse_attention_backward(Exec{}, H(dq), H(dk), H(dv), H(in.dout), H(in.q), H(in.k), H(in.v), H(P), idx, s);
    Vec o(out.size()), p(P.size());
    auto L = [&] {
      sparse_attention_forward(Exec{}, H(o), H(p), H(in.q), H(in.k), H(in.v), idx, s);
      return dot(o, in.dout);
    };
    EXPECT_LT(rel_error(dq, test::finite_difference(L, in.q)), 1e-6) << window;
    EXPECT_LT(rel_error(dk, test::finite_difference(L, in.k)), 1e-6) << window;
    EXPECT_LT(rel_error(dv, test::finite_difference(L, in.v)), 1e-6) << window;
    // backward accumulates
    Vec dq2 = dq;
    Vec z1(dk.size(), 0.0), z2(dv.size(), 0.0);
    sparse_attention_backward(Exec{}, H(dq2), H(z1), H(z2), H(in.dout), H(in.q), H(in.k), H(in.v), H(P), idx, s);
    for (size_t i = 0; i < dq.size(); i++) EXPECT_NEAR(dq2[i], 2 * dq[i], 1e-12);
  }
}

// Block boundaries of the blocked window kernel (blocks of clamp(W, 16, 64) query rows): T not a
// multiple of the block, a window shorter than the block, equal to it, longer than it, longer
// than the sequence; against masked dense attention, and against the gather kernel.
TEST(SparseAttention, WindowBlockBoundaries) {
  for (auto [T, W] : std::vector<std::pair<int, int>>{{150, 70}, {150, 40}, {97, 64}, {50, 3}, {20, 33}}) {
    const SparseAttentionShape s{1, T, 2, 10, 6, 0.35, W, W};
    expect_equals_masked_dense(s, {}, [&](int, int, int i, int j) { return j <= i && j > i - W; }, 900 + T + W);
    // the gather kernel (one dot product per key) gives the same P and gradients to fp64 rounding
    Inputs in = inputs(s, 950 + W);
    const size_t np = size_t(s.H) * T * W;
    Vec o1(in.v.size()), o2(in.v.size()), p1(np), p2(np);
    cpu::sparse_attention_forward(o1.data(), p1.data(), in.q.data(), in.k.data(), in.v.data(), nullptr, s);
    cpu::sparse_attention_forward_gather(o2.data(), p2.data(), in.q.data(), in.k.data(), in.v.data(), nullptr, s);
    EXPECT_LT(rel_error(o1, o2), 1e-14) << T << " " << W;
    EXPECT_LT(rel_error(p1, p2), 1e-14) << T << " " << W;
  }
}

// ---- blocked LSH attention against the key lists of lsh_attention_index (which the test above
// checks against a brute-force construction) under masked dense attention
struct LshCase {
  LshShape ls;
  int dv;
};
void expect_lsh_equals_masked_dense(const LshCase& lc, uint64_t seed) {
  const LshShape ls = lc.ls;
  const LshAttentionShape as{ls.B, ls.T, ls.H, ls.dqk, lc.dv, 0.45, ls.buckets, ls.rounds, ls.chunk};
  const SparseAttentionShape s{ls.B, ls.T, ls.H, ls.dqk, lc.dv, 0.45, ls.K(), 0};
  Inputs in = inputs(s, seed);
  std::vector<float> rot(size_t(ls.H) * ls.rounds * ls.dqk * (ls.buckets / 2));
  lsh_rotations(rot.data(), ls.H, ls.rounds, ls.dqk, ls.buckets, seed);
  std::vector<int32_t> index(size_t(ls.B) * ls.H * ls.T * ls.K());
  lsh_attention_index(Exec{}, H(index), Tensor{}, H(in.q), H(in.k), H(rot), ls);
  std::vector<std::set<int>> allowed;
  for (size_t r = 0; r < size_t(ls.B) * ls.H * ls.T; r++) {
    std::set<int> k;
    for (int j = 0; j < ls.K(); j++)
      if (index[r * ls.K() + j] >= 0) k.insert(index[r * ls.K() + j]);
    allowed.push_back(k);
  }
  const DenseRef ref = masked_dense(in.q, in.k, in.v, in.dout, s, [&](int b, int h, int i, int j) {
    return allowed[(size_t(b) * ls.H + h) * ls.T + i].count(j) > 0;
  });
  const size_t np = size_t(ls.B) * ls.H * ls.T * as.slots(), no = size_t(ls.B) * ls.H * ls.rounds * 2 * ls.T;
  Vec out(in.v.size()), P(np), dq(in.q.size(), 0.0), dk(in.q.size(), 0.0), dv(in.v.size(), 0.0);
  std::vector<int32_t> order(no);
  lsh_attention_forward(Exec{}, H(out), H(P), H(order), H(in.q), H(in.k), H(in.v), H(rot), as);
  lsh_attention_backward(Exec{}, H(dq), H(dk), H(dv), H(in.dout), H(in.q), H(in.k), H(in.v), H(P), H(order), as);
  EXPECT_LT(rel_error(out, ref.out), 1e-13);
  EXPECT_LT(rel_error(dq, ref.dq), 1e-12);
  EXPECT_LT(rel_error(dk, ref.dk), 1e-12);
  EXPECT_LT(rel_error(dv, ref.dv), 1e-12);
  // the copies of a query's row (one per round) sum to one; order holds permutations
  for (int bh = 0; bh < ls.B * ls.H; bh++) {
    Vec rowsum(size_t(ls.T), 0.0);
    for (int r = 0; r < ls.rounds; r++) {
      const int32_t* qs = &order[(size_t(bh) * ls.rounds + r) * 2 * ls.T];
      std::vector<int32_t> a(qs, qs + ls.T), b(qs + ls.T, qs + 2 * ls.T);
      std::sort(a.begin(), a.end());
      std::sort(b.begin(), b.end());
      for (int t = 0; t < ls.T; t++) ASSERT_TRUE(a[size_t(t)] == t && b[size_t(t)] == t);
      for (int n = 0; n < ls.T; n++)
        for (int j = 0; j < 2 * ls.chunk + 1; j++)
          rowsum[size_t(qs[n])] += P[((size_t(bh) * ls.rounds + r) * ls.T + n) * (2 * ls.chunk + 1) + j];
    }
    for (int t = 0; t < ls.T; t++) ASSERT_NEAR(rowsum[size_t(t)], 1.0, 1e-12) << bh << " " << t;
  }
  // fp32 to fp32 rounding
  VecF qf = to_f(in.q), kf = to_f(in.k), vf = to_f(in.v), gf = to_f(in.dout), of(out.size()), pf(np);
  VecF dqf(dq.size(), 0.f), dkf(dk.size(), 0.f), dvf(dv.size(), 0.f);
  std::vector<int32_t> orderf(no);
  lsh_attention_forward(Exec{}, H(of), H(pf), H(orderf), H(qf), H(kf), H(vf), H(rot), as);
  lsh_attention_backward(Exec{}, H(dqf), H(dkf), H(dvf), H(gf), H(qf), H(kf), H(vf), H(pf), H(orderf), as);
  ASSERT_EQ(orderf, order) << "fp32 hashing put a token in another bucket than fp64";
  EXPECT_LT(rel_error(of, ref.out), 1e-5);
  EXPECT_LT(rel_error(dqf, ref.dq), 1e-5);
  EXPECT_LT(rel_error(dkf, ref.dk), 1e-5);
  EXPECT_LT(rel_error(dvf, ref.dv), 1e-5);
}

TEST(SparseAttention, BlockedLshEqualsDenseWithTheLshMask) {
  // LshShape {B, T, H, dqk, buckets, rounds, chunk}
  for (const LshCase& lc : std::vector<LshCase>{
           {{2, 53, 3, 12, 6, 1, 8}, 7},    // T not a multiple of the chunk
           {{1, 64, 2, 12, 4, 2, 16}, 5},   // two rounds: duplicate keys counted once
           {{1, 45, 2, 8, 8, 3, 4}, 6},     // three rounds, small chunks
           {{1, 30, 2, 8, 64, 1, 8}, 6},    // 64 buckets for 30 tokens: most buckets empty
           {{1, 21, 2, 8, 2, 2, 32}, 4},    // one chunk longer than the sequence
       })
    expect_lsh_equals_masked_dense(lc, 1000 + lc.ls.T);
}

TEST(SparseAttention, BlockedLshBackwardMatchesFiniteDifferencesAndIsDeterministic) {
  const LshAttentionShape as{1, 17, 2, 4, 3, 0.5, 4, 2, 4};
  const LshShape ls = as.lsh();
  const SparseAttentionShape s{1, 17, 2, 4, 3, 0.5, ls.K(), 0};
  Inputs in = inputs(s, 77);
  std::vector<float> rot(size_t(ls.H) * ls.rounds * ls.dqk * (ls.buckets / 2));
  lsh_rotations(rot.data(), ls.H, ls.rounds, ls.dqk, ls.buckets, 5);
  const size_t np = size_t(as.H) * as.T * as.slots();
  Vec out(in.v.size()), P(np), dq(in.q.size(), 0.0), dk(in.q.size(), 0.0), dv(in.v.size(), 0.0);
  std::vector<int32_t> order(size_t(as.H) * as.rounds * 2 * as.T), order2(order.size());
  lsh_attention_forward(Exec{}, H(out), H(P), H(order), H(in.q), H(in.k), H(in.v), H(rot), as);
  lsh_attention_backward(Exec{}, H(dq), H(dk), H(dv), H(in.dout), H(in.q), H(in.k), H(in.v), H(P), H(order), as);
  // the buckets are piecewise constant in q and k: a step of 1e-6 must not move any (checked)
  Vec o(out.size()), p(np);
  auto L = [&] {
    lsh_attention_forward(Exec{}, H(o), H(p), H(order2), H(in.q), H(in.k), H(in.v), H(rot), as);
    EXPECT_EQ(order2, order);
    return dot(o, in.dout);
  };
  EXPECT_LT(rel_error(dq, test::finite_difference(L, in.q)), 1e-6);
  EXPECT_LT(rel_error(dk, test::finite_difference(L, in.k)), 1e-6);
  EXPECT_LT(rel_error(dv, test::finite_difference(L, in.v)), 1e-6);
  // fp32 on one thread gives the same bits as on all of them (B H = 2 heads run in parallel)
  VecF qf = to_f(in.q), kf = to_f(in.k), vf = to_f(in.v), gf = to_f(in.dout);
  auto run = [&] {
    VecF of(out.size()), pf(np), a(dq.size(), 0.f), b(dk.size(), 0.f), c(dv.size(), 0.f);
    std::vector<int32_t> ord(order.size());
    lsh_attention_forward(Exec{}, H(of), H(pf), H(ord), H(qf), H(kf), H(vf), H(rot), as);
    lsh_attention_backward(Exec{}, H(a), H(b), H(c), H(gf), H(qf), H(kf), H(vf), H(pf), H(ord), as);
    return std::vector<VecF>{of, pf, a, b, c};
  };
  const auto many = run();
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const auto one = run();
  omp_set_num_threads(threads);
  EXPECT_EQ(many, one);
}

// ---- the model with each pattern
const std::string kSmall =
    "train --preset debug --batch 4 --seq_len 32 --eval_every 0 --sample_tokens 0 --peak_gflops 100 ";

std::vector<double> losses(const std::string& dir) {
  std::vector<double> v;
  for (const auto& j : test::read_metrics(dir + "/metrics.jsonl", "train")) v.push_back(j["loss"]);
  return v;
}

TEST(SparseAttention, ModelTrainsWithEachPattern) {
  auto d = test::temp_dir("sparse_model");
  auto r = test::run_cli(kSmall + "--steps 6 --out " + (d / "dense").string());
  ASSERT_EQ(r.code, 0) << r.out;
  // a window as long as the sequence is dense attention: the same losses to fp32 rounding
  r = test::run_cli(kSmall + "--steps 6 --attention window --window 32 --out " + (d / "w32").string());
  ASSERT_EQ(r.code, 0) << r.out;
  auto a = losses((d / "dense").string()), b = losses((d / "w32").string());
  ASSERT_EQ(a.size(), 6u);
  ASSERT_EQ(b.size(), 6u);
  for (int i = 0; i < 6; i++) EXPECT_NEAR(a[i], b[i], 1e-4 * a[i]) << i;
  // the KV-cache decoder is dense-only: sampling a window model takes the recompute engine (the
  // training forward), asking for the cached one or serving it is refused by name
  r = test::run_cli("sample --model " + (d / "w32").string() + " --tokens 4 --prompt ab");
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("window attention: generating with --engine recompute"), std::string::npos) << r.out;
  r = test::run_cli("sample --model " + (d / "w32").string() + " --tokens 4 --prompt ab --engine cached");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("implements dense attention; this model was trained with window"),
            std::string::npos) << r.out;
  // short windows and LSH train, deterministically, and resume exactly
  for (const std::string& pat : {std::string("--attention window --window 4"),
                                 std::string("--attention lsh --lsh_buckets 4 --lsh_chunk 4 --lsh_rounds 2")}) {
    const std::string name = pat.find("lsh") != std::string::npos ? "lsh" : "w4";
    r = test::run_cli(kSmall + "--steps 30 --save_every 15 --keep 3 " + pat + " --out " + (d / name).string());
    ASSERT_EQ(r.code, 0) << r.out;
    auto l = losses((d / name).string());
    ASSERT_EQ(l.size(), 30u);
    EXPECT_LT(l.back(), l.front() - 0.5) << name;
    std::filesystem::create_directories(d / (name + "_r"));
    std::filesystem::copy_file(d / name / "ckpt_00000015.dsv3", d / (name + "_r") / "ckpt_00000015.dsv3");
    r = test::run_cli("train --resume " + (d / (name + "_r")).string() + " --out " + (d / (name + "_r")).string());
    ASSERT_EQ(r.code, 0) << r.out;
    auto lr = losses((d / (name + "_r")).string());
    ASSERT_EQ(lr.size(), 15u);
    for (int i = 0; i < 15; i++) EXPECT_EQ(lr[size_t(i)], l[size_t(15 + i)]) << name << " step " << 16 + i;
  }
  // bad input
  r = test::run_cli(kSmall + "--steps 2 --attention window --window 0 --out " + (d / "x").string());
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("window must be in [1,"), std::string::npos) << r.out;
  r = test::run_cli(kSmall + "--steps 2 --attention sparse --out " + (d / "x").string());
  EXPECT_NE(r.out.find("unknown attention 'sparse'"), std::string::npos) << r.out;
  r = test::run_cli(kSmall + "--steps 2 --window 8 --out " + (d / "x").string());
  EXPECT_NE(r.out.find("--window does not apply"), std::string::npos) << r.out;
  r = test::run_cli(kSmall + "--steps 2 --attention lsh --lsh_buckets 3 --out " + (d / "x").string());
  EXPECT_NE(r.out.find("lsh_buckets must be even"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace dsv3
