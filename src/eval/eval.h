// Validation loss over a token array (E1): non-overlapping batches from the start, the same
// batches every time, so numbers compare across runs and tools.
#pragma once
#include <cstdint>
#include <vector>

#include "core/fields.h"
#include "model/model.h"

namespace dsv3 {

// How often and how much a training run validates.
struct EvalConfig {
  long long eval_every = 50;  // 0 = only at the end
  int eval_batches = 8;
};
const std::vector<FieldSpec>& eval_fields();
void validate(const EvalConfig& e);

struct EvalResult {
  double loss = 0;      // mean next-token cross-entropy (nats)
  double mtp_loss = 0;  // mean over MTP modules
  int64_t tokens = 0;   // targets scored
  int batches = 0;
};

// Uses up to max_batches batches of d (0 = as many as fit). If the data is shorter than one
// batch, fewer rows are used; at least T+1 tokens are required. ws must hold d.
EvalResult evaluate(const ModelWeights& w, Workspace& ws, const std::vector<int32_t>& tokens,
                    Dims d, int max_batches);

}  // namespace dsv3
