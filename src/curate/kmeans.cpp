#include "curate/kmeans.h"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <numeric>

#include "core/rng.h"

namespace dsv3::curate {

namespace {

float dist2(const float* a, const float* b, int dim) {
  float s = 0;
  for (int i = 0; i < dim; i++) {
    const float d = a[i] - b[i];
    s += d * d;
  }
  return s;
}

}  // namespace

KMeansResult kmeans(const float* x, size_t n, int dim, const KMeansConfig& c) {
  KMeansResult r;
  if (n == 0) return r;
  const int k = int(std::min<size_t>(size_t(std::max(c.k, 1)), n));
  r.k = k;
  r.centroids.assign(size_t(k) * size_t(dim), 0.0f);
  r.assign.assign(n, 0);
  r.dist2.assign(n, 0.0f);
  // k-means++ (Arthur & Vassilvitskii 2007): each new centre drawn with probability
  // proportional to the squared distance to the nearest centre so far.
  Rng rng(c.seed ^ 0x6b6d65616e73ull);
  std::vector<float> best(n, std::numeric_limits<float>::max());
  size_t first = size_t(rng.below(n));
  std::copy(x + first * size_t(dim), x + (first + 1) * size_t(dim), r.centroids.begin());
  for (int j = 1; j <= k; j++) {
    const float* cj = &r.centroids[size_t(j - 1) * size_t(dim)];
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) best[i] = std::min(best[i], dist2(x + i * size_t(dim), cj, dim));
    double total = 0;  // summed in order: a parallel reduction would depend on the thread count
    for (size_t i = 0; i < n; i++) total += best[i];
    if (j == k) break;
    size_t pick = 0;
    if (total > 0) {
      double u = double(rng.uniform()) * total, acc = 0;
      pick = n - 1;
      for (size_t i = 0; i < n; i++) {
        acc += best[i];
        if (acc > u) {
          pick = i;
          break;
        }
      }
    } else {
      pick = size_t(rng.below(n));  // all points coincide with centres
    }
    std::copy(x + pick * size_t(dim), x + (pick + 1) * size_t(dim),
              r.centroids.begin() + std::ptrdiff_t(size_t(j) * size_t(dim)));
  }
  std::vector<double> sum(size_t(k) * size_t(dim));
  std::vector<size_t> count(static_cast<size_t>(k));
  for (int it = 0; it < std::max(c.iterations, 1); it++) {
    size_t changed = 0;
#pragma omp parallel for reduction(+ : changed) schedule(static)
    for (size_t i = 0; i < n; i++) {
      uint32_t arg = 0;
      float bd = std::numeric_limits<float>::max();
      for (int j = 0; j < k; j++) {
        const float d = dist2(x + i * size_t(dim), &r.centroids[size_t(j) * size_t(dim)], dim);
        if (d < bd) {
          bd = d;
          arg = uint32_t(j);
        }
      }
      changed += (it == 0 || r.assign[i] != arg);
      r.assign[i] = arg;
      r.dist2[i] = bd;
    }
    if (it > 0 && changed == 0) break;
    std::fill(sum.begin(), sum.end(), 0.0);
    std::fill(count.begin(), count.end(), 0);
    for (size_t i = 0; i < n; i++) {  // in index order: the same sums on every rank
      const size_t j = r.assign[i];
      count[j]++;
      for (int d = 0; d < dim; d++) sum[j * size_t(dim) + size_t(d)] += x[i * size_t(dim) + size_t(d)];
    }
    for (int j = 0; j < k; j++) {
      float* cj = &r.centroids[size_t(j) * size_t(dim)];
      if (count[size_t(j)] == 0) {
        // an empty cluster takes over the point farthest from its centre
        const size_t far = size_t(std::max_element(r.dist2.begin(), r.dist2.end()) - r.dist2.begin());
        std::copy(x + far * size_t(dim), x + (far + 1) * size_t(dim), cj);
        r.dist2[far] = 0;
        continue;
      }
      for (int d = 0; d < dim; d++)
        cj[d] = float(sum[size_t(j) * size_t(dim) + size_t(d)] / double(count[size_t(j)]));
    }
  }
  // final assignment against the final centroids
#pragma omp parallel for schedule(static)
  for (size_t i = 0; i < n; i++) {
    uint32_t arg = 0;
    float bd = std::numeric_limits<float>::max();
    for (int j = 0; j < k; j++) {
      const float d = dist2(x + i * size_t(dim), &r.centroids[size_t(j) * size_t(dim)], dim);
      if (d < bd) {
        bd = d;
        arg = uint32_t(j);
      }
    }
    r.assign[i] = arg;
    r.dist2[i] = bd;
  }
  return r;
}

std::vector<uint32_t> select_diverse(const KMeansResult& r, size_t want) {
  const size_t n = r.assign.size();
  std::vector<uint32_t> out;
  if (want >= n) {
    out.resize(n);
    std::iota(out.begin(), out.end(), 0u);
    return out;
  }
  std::vector<std::vector<uint32_t>> members(size_t(r.k));
  for (size_t i = 0; i < n; i++) members[r.assign[i]].push_back(uint32_t(i));
  for (auto& m : members)
    std::sort(m.begin(), m.end(), [&](uint32_t a, uint32_t b) {
      return r.dist2[a] != r.dist2[b] ? r.dist2[a] < r.dist2[b] : a < b;
    });
  std::vector<uint32_t> order(size_t(r.k));
  std::iota(order.begin(), order.end(), 0u);
  std::stable_sort(order.begin(), order.end(), [&](uint32_t a, uint32_t b) {
    return members[a].size() > members[b].size();
  });
  for (size_t round = 0; out.size() < want; round++)
    for (uint32_t j : order) {
      if (round < members[j].size()) out.push_back(members[j][round]);
      if (out.size() == want) break;
    }
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace dsv3::curate
