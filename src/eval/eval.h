// Validation loss over a token array (E1): non-overlapping batches from the start, the same
// batches every time, so numbers compare across runs and tools.
#pragma once
#include <cstdint>
#include <functional>
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
// One part of that evaluation (distributed runs split it over the data-parallel ranks): batches
// part, part + parts, ... of the ones evaluate() uses, as sums (loss and mtp_loss summed over
// the batches, not averaged). min_passes: run at least this many forward passes, repeating the
// first batch without counting it (the ranks of an expert-parallel group must run as many).
EvalResult evaluate_part(const ModelWeights& w, Workspace& ws, const std::vector<int32_t>& tokens,
                         Dims d, int max_batches, int part, int parts, int min_passes = 0);
// The same with the forward pass given: `run` returns a batch's report (a pipeline stage's part
// of it, train/pipeline.h).
using EvalForward = std::function<LossReport(const MicroBatch&)>;
EvalResult evaluate_part(const EvalForward& run, const std::vector<int32_t>& tokens, Dims d,
                         int max_batches, int part, int parts, int min_passes = 0);
// Batches evaluate() runs on these tokens: what evaluate_part's callers split.
int eval_batches_of(const std::vector<int32_t>& tokens, Dims d, int max_batches);

}  // namespace dsv3
