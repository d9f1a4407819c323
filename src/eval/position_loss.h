// Long-context validation (issue 12, context extension): the mean next-token loss by position in
// the sequence, over the same non-overlapping batches as evaluate() (eval/eval.h). A model that
// uses its extended context has a loss that keeps falling over the later buckets.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace dsv3 {

// Bucket k of n holds the targets at positions t with t * n / T == k, i.e. [k T/n, (k+1) T/n)
// when n divides T; n is clamped to [1, T]. Uses up to max_batches batches (0 = all that fit).
std::vector<double> loss_by_position(const ModelWeights& w, Workspace& ws,
                                     const std::vector<int32_t>& tokens, Dims d, int max_batches,
                                     int buckets);

}  // namespace dsv3
