// Diversity selection (D7, seed): k-means over document vectors, then a subset of the requested
// size that is both diverse (every cluster contributes) and representative (within a cluster,
// documents nearest its centroid come first). Selection is round-robin over clusters ordered by
// size: cluster 1's best, cluster 2's best, ..., then everyone's second best, ... until the
// size is reached; so small clusters (rare topics) are not drowned by big ones.
//
// Deterministic: k-means++ seeding from a fixed seed, assignments computed in parallel but
// centroids summed in document order, ties broken by index; every rank gets the same answer.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv3::curate {

struct KMeansConfig {
  int k = 64;
  int iterations = 20;
  uint64_t seed = 1;
};

struct KMeansResult {
  std::vector<float> centroids;   // (k, dim)
  std::vector<uint32_t> assign;   // (n) cluster of each point
  std::vector<float> dist2;       // (n) squared distance to its centroid
  int k = 0;
};

// x: (n, dim) row-major. k is clamped to n.
KMeansResult kmeans(const float* x, size_t n, int dim, const KMeansConfig& c);

// Indices (ascending) of `want` points chosen as described above (all of them if want >= n).
std::vector<uint32_t> select_diverse(const KMeansResult& r, size_t want);

}  // namespace dsv3::curate
