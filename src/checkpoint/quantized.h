// dsv3's int8 model file (I3), written by `dsv3 quantize`, read by eval, sample and everything
// that loads a model through load_model_any / load_model_weights.
//
//   offset 0   "DSV3INT8"                 magic, 8 bytes
//          8   u32 format version         1
//         12   u32 header crc32           CRC-32 of the JSON header bytes
//         16   u64 header length N
//         24   N bytes of JSON header:
//                {"model": {model_fields() as JSON}, "scheme": "w8a8" | "w8a16",
//                 "high": [{"name","shape","offset"}...]   (high_precision_table: fp32 elements),
//                 "int8": [{"name","rows","cols","offset"}...] (quant_layout: bytes),
//                 "sections": {"high": [off, len], "int8": [off, len]}, "source": "...",
//                 "crc32": CRC-32 of the payload}
//              zero padding to a multiple of 64 bytes: the payload starts there
//   payload    "high": the high-precision tensors, fp32 little-endian; "int8": the int8 rows
//              (ops/quant.h); each 64-byte aligned, offsets in bytes from the payload start.
// The same frame as checkpoints (core/io.h check_frame): every byte is covered by the magic,
// version, header CRC, payload CRC or the exact file size; the stored layouts must equal the
// ones this build derives from the config.
#pragma once
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "checkpoint/checkpoint.h"
#include "model/weights.h"

namespace dsv3 {

constexpr uint32_t kInt8ModelVersion = 1;

// Atomic. `source` names what was quantised (kept in the header for people).
void save_int8_model(const std::string& path, const ModelConfig& c, const QuantizedParams& q,
                     const std::string& source);

struct Int8Model {
  ModelConfig config;
  QuantizedParams params;
  std::string source;
};
// Every problem (truncation, a foreign file, corruption, a layout this build does not derive)
// is an Error naming the file.
Int8Model load_int8_model(const std::string& path);

// ModelWeights for any model path load_model_any takes (int8 files included: they stay int8,
// with their scheme), computing in `dtype`.
std::unique_ptr<ModelWeights> load_model_weights(const std::string& path, DType dtype,
                                                 Device device = Device::CPU);
// The same from an already loaded model.
std::unique_ptr<ModelWeights> make_model_weights(const LoadedModel& m, DType dtype,
                                                 Device device = Device::CPU);

}  // namespace dsv3
