// The model's parameters as a forward pass reads them (M1-M5), apart from everything a training
// run adds (gradients, master weights, optimizer state: train/state.h) and from any pass's
// activations (model/workspace.h). One buffer of the compute dtype laid out by the parameter
// table, bound into per-layer views; read-only during forward and backward, so one ModelWeights
// serves any number of threads, workspaces and (later) server requests.
//
// Routing biases stay fp32 in every precision (as DeepSeek's and Hugging Face's code keep them):
// they steer top-k selection by steps of 1e-3 that bf16 would round away. With fp32 weights they
// live in the main buffer; otherwise in a small fp32 side buffer (ParamInfo::buffer_offset).
#pragma once
#include <vector>

#include "backend/backend.h"
#include "model/block.h"

namespace dsv3 {

struct MtpParams {
  Tensor enorm, hnorm;  // (C)
  Tensor eh_proj;       // (C, 2C)
  BlockParams block;
  Tensor head_norm;     // (C) shared_head.norm
};

// Per-layer views of one parameter-table buffer: the weights (compute dtype) or the gradients
// (accumulation dtype) bind the same way.
struct ModelParams {
  Tensor embed;  // (V, C)
  std::vector<BlockParams> blocks;
  std::vector<MtpParams> mtp;
  Tensor norm;   // (C)
  Tensor head;   // (V, C)
};
// buffers: where Buffer-kind tensors live (compact fp32), or empty when they are in base.
ModelParams bind_model(const ModelConfig& c, const ParamTable& t, const Tensor& base,
                       const Tensor& buffers = {});

class ModelWeights {
 public:
  // shard: the routed experts this process holds (expert parallelism); default all of them.
  ModelWeights(const ModelConfig& c, DType dtype, Device device = Device::CPU,
               ExpertShard shard = {});
  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  const ModelConfig& config() const { return c_; }
  const ParamTable& table() const { return table_; }
  DType dtype() const { return data_.dtype(); }
  Device device() const { return data_.device(); }
  const ModelParams& params() const { return view_; }
  // The whole compute-dtype buffer (table layout). With f32 weights it is also the buffer the
  // optimizer updates (the master weights are not duplicated).
  const Tensor& data() const { return data_.view(); }
  // The fp32 routing biases (compact), or empty when they live in data().
  const Tensor& buffers() const { return buffers_.view(); }
  size_t bytes() const { return data_.view().bytes() + buffers_.view().bytes(); }

  // Every tensor from fp32 values laid out by table() (a checkpoint, an HF import, init).
  void load(const std::vector<float>& host);
  // Every tensor as fp32 values in table() layout (16-bit weights widen exactly).
  std::vector<float> to_host() const;
  // After an optimizer step that rewrote master (fp32, table layout) and, for 16-bit weights,
  // the trainable tensors of data(): brings the fp32 routing biases up to date.
  void refresh_buffers(const Exec& ex, const Tensor& master);

 private:
  ModelConfig c_;
  ParamTable table_;
  Buffer data_, buffers_;
  ModelParams view_;
};

}  // namespace dsv3
