// SFT data and loss (post/sft.cpp), for `dsv3 finetune --method sft` and its tests.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/model.h"
#include "post/data.h"

namespace dsv3 {

struct SftData {
  JsonlReport report;
  PackedRows train, eval;  // eval: the file's last eval_fraction of conversations
};
SftData load_sft_data(const std::string& path, const TextCodec& codec, int T,
                      double eval_fraction, uint64_t seed, int32_t pad_id);

// 0..rows-1 in the order of epoch `epoch` (a function of seed and epoch: resumable).
std::vector<int64_t> epoch_order(int64_t rows, uint64_t seed, int64_t epoch);

// Mean cross-entropy over the weighted targets of all rows (forward only), `batch` rows a pass.
double masked_loss(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                   const PackedRows& rows, int batch);

}  // namespace dsv3
