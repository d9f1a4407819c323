// ModelWeights from any model file (checkpoint/quantized.h): kept apart from the int8 file
// format so that the format's parser links without the model (fuzz/).
#include "checkpoint/quantized.h"

namespace dsv3 {

std::unique_ptr<ModelWeights> make_model_weights(const LoadedModel& m, DType dtype, Device device) {
  auto w = std::make_unique<ModelWeights>(m.config, dtype, device, ExpertShard{}, m.int8.scheme);
  if (m.int8.scheme != QuantScheme::None) w->load_quantized(m.int8);
  else w->load(m.params);
  return w;
}

std::unique_ptr<ModelWeights> load_model_weights(const std::string& path, DType dtype, Device device) {
  return make_model_weights(load_model_any(path, /*keep_int8=*/true), dtype, device);
}

}  // namespace dsv3
