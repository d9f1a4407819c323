// Int8 models (I3): which tensors `dsv3 quantize` turns into int8, where their rows live, and how
// a ModelWeights binds them so that every pass reads them through the ordinary layer code.
//
// Quantised: every linear layer of the blocks (attention projections, dense FFN, routed and
// shared experts) and of the MTP modules (their blocks and eh_proj), per output channel,
// symmetric (ops/quant.h). High precision (the compute dtype; fp32 on disk): the embedding, the
// output head, the routers (mlp.gate, and their fp32 routing biases) and every norm, as DeepSeek's
// own FP8 recipe and llama.cpp's quantisers keep them.
//
// Layout: the int8 matrices ("units") follow each other in parameter-table order, each 64-byte
// aligned; an FFN's gate_proj and up_proj form one unit (w13: 2D rows), as in the float layout.
// The experts of a layer are therefore equally spaced, which grouped_linear_forward needs.
// The compute-dtype buffer of an int8 model is laid out by high_precision_table(): the full
// parameter table with every quantised tensor kept by name and shape but given no storage.
#pragma once
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "model/params.h"

namespace dsv3 {

struct ModelParams;

enum class QuantScheme : uint8_t { None, W8A8, W8A16 };
const char* quant_scheme_name(QuantScheme s);  // "none" | "w8a8" | "w8a16"
QuantScheme parse_quant_scheme(const std::string& s);
DType quant_dtype(QuantScheme s);  // W8A8 / W8A16 (the int8 weights' dtype: ops/gemm.h)

bool is_quantized_param(const ParamInfo& p);

struct QuantUnit {
  std::string name;  // table name of its first tensor (a gate_proj stands for gate + up)
  int rows = 0, cols = 0;
  size_t offset = 0;  // bytes into the int8 buffer
};
struct QuantLayout {
  std::vector<QuantUnit> units;
  size_t bytes = 0;
  std::unordered_map<std::string, size_t> index;  // unit name -> position in units
  const QuantUnit& at(const std::string& name) const;
};
QuantLayout quant_layout(const ModelConfig& c);
ParamTable high_precision_table(const ModelConfig& c);

// A quantised model as files and ModelWeights hold it.
struct QuantizedParams {
  QuantScheme scheme = QuantScheme::None;
  std::vector<float> high;    // high_precision_table(c) layout, fp32
  std::vector<uint8_t> int8;  // quant_layout(c).bytes
};
// From fp32 values in the full table layout.
QuantizedParams quantize_params(const ModelConfig& c, QuantScheme s, const std::vector<float>& full);
// Back to the full table layout (int8 weights dequantised: s * q).
std::vector<float> dequantize_params(const ModelConfig& c, const QuantizedParams& q);
// Inf or NaN scales (a file written from a diverged model): an Error naming the tensor.
void check_quantized(const ModelConfig& c, const QuantizedParams& q, const std::string& where);

// Points every quantised linear of p (bound over high_precision_table, where they are empty)
// at its rows in `int8` (dtype W8A8 or W8A16).
void bind_quantized(ModelParams& p, const ModelConfig& c, const QuantLayout& l, const Tensor& int8);

}  // namespace dsv3
