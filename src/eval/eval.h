// Validation loss over a token array (E1): non-overlapping batches from the start, the same
// batches every time, so numbers compare across runs and tools.
#pragma once
#include <cstdint>
#include <vector>

#include "model/model.h"

namespace dsv3 {

struct EvalResult {
  double loss = 0;      // mean next-token cross-entropy (nats)
  double mtp_loss = 0;  // mean over MTP modules
  int64_t tokens = 0;   // targets scored
  int batches = 0;
};

// Uses up to max_batches batches of d (0 = as many as fit). If the data is shorter than one
// batch, fewer rows are used; at least T+1 tokens are required.
EvalResult evaluate(Model& model, const std::vector<int32_t>& tokens, Dims d, int max_batches);

}  // namespace dsv3
