// The model's parameters as a forward pass reads them (M1-M5), apart from everything a training
// run adds (gradients, master weights, optimizer state: train/state.h) and from any pass's
// activations (model/workspace.h). One buffer of the compute dtype laid out by the parameter
// table, bound into per-layer views; read-only during forward and backward, so one ModelWeights
// serves any number of threads, workspaces and (later) server requests.
//
// Routing biases stay fp32 in every precision (as DeepSeek's and Hugging Face's code keep them):
// they steer top-k selection by steps of 1e-3 that bf16 would round away. With fp32 weights they
// live in the main buffer; otherwise in a small fp32 side buffer (ParamInfo::buffer_offset).
//
// Int8 models (I3, model/quant.h): with a QuantScheme the linear layers are int8 rows in a
// second buffer, bound in place of their float views, and data() holds only the tensors that
// stay in high precision (laid out by table() = high_precision_table). Passes read them through
// the same layer code (the GEMM entry points take int8 weights); they cannot be trained.
#pragma once
#include <vector>

#include "backend/backend.h"
#include "model/block.h"
#include "model/quant.h"

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
  // dtype: the compute dtype (activations, and the weights that are not int8). shard: the routed
  // experts this process holds (expert parallelism); default all of them. quant: int8 linear
  // layers (inference only, one process: not with a shard). parts: the layers a pipeline rank
  // holds (params.h StageParts); default the whole model. Passes may only run over them.
  ModelWeights(const ModelConfig& c, DType dtype, Device device = Device::CPU,
               ExpertShard shard = {}, QuantScheme quant = QuantScheme::None,
               StageParts parts = {});
  ModelWeights(const ModelWeights&) = delete;
  ModelWeights& operator=(const ModelWeights&) = delete;

  const ModelConfig& config() const { return c_; }
  const ParamTable& table() const { return table_; }  // the layout of data()
  DType dtype() const { return data_.dtype(); }
  QuantScheme quant() const { return quant_; }
  const Tensor& int8() const { return int8_.view(); }  // quant_layout(config()); empty if none
  Device device() const { return data_.device(); }
  const ModelParams& params() const { return view_; }
  // The whole compute-dtype buffer (table layout). With f32 weights it is also the buffer the
  // optimizer updates (the master weights are not duplicated).
  const Tensor& data() const { return data_.view(); }
  // The fp32 routing biases (compact), or empty when they live in data().
  const Tensor& buffers() const { return buffers_.view(); }
  size_t bytes() const {
    return data_.view().bytes() + buffers_.view().bytes() + int8_.view().bytes();
  }

  // Every tensor from fp32 values laid out by table() (build_param_table(config()) for the whole
  // model: a checkpoint, an HF import, init); an int8 model quantises its linear layers on the
  // way in.
  void load(const std::vector<float>& host);
  // An int8 model's tensors as a quantised file holds them (same scheme).
  void load_quantized(const QuantizedParams& q);
  // Every tensor as fp32 values in table() layout (16-bit weights widen exactly, int8 ones
  // dequantise).
  std::vector<float> to_host() const;
  // After an optimizer step that rewrote master (fp32, table layout) and, for 16-bit weights,
  // the trainable tensors of data(): brings the fp32 routing biases up to date.
  void refresh_buffers(const Exec& ex, const Tensor& master);

 private:
  void load_table(const std::vector<float>& host);  // data() and buffers() from table() layout
  std::vector<float> table_to_host() const;

  ModelConfig c_;
  QuantScheme quant_;
  ParamTable table_;
  Buffer data_, buffers_, int8_;
  ModelParams view_;
};

}  // namespace dsv3
