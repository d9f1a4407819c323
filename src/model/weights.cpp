#include "model/weights.h"

#include "ops/elementwise.h"

namespace dsv3 {

ModelParams bind_model(const ModelConfig& c, const ParamTable& t, const Tensor& base,
                       const Tensor& buffers) {
  auto at = [&](const std::string& name) {
    const ParamInfo& i = t.at(name);
    return base.slice(i.offset, i.numel);
  };
  // A pipeline rank's table (StageParts) holds part of the model: what it lacks stays empty
  // (blocks and mtp keep their sizes, so layer indices stay global).
  const StageParts& parts = t.parts;
  ModelParams w;
  if (t.find("model.embed_tokens.weight")) w.embed = at("model.embed_tokens.weight");
  w.blocks.resize(size_t(c.layers));
  for (int l = 0; l < c.layers; l++)
    if (parts.holds_block(l)) w.blocks[size_t(l)] = bind_block(t, base, buffers, l, c.is_moe_layer(l), c);
  if (!t.find("lm_head.weight")) return w;
  for (int k = 1; k <= c.mtp_depth; k++) {
    const int hf = c.layers + k - 1;
    const std::string p = "model.layers." + std::to_string(hf);
    MtpParams m;
    m.enorm = at(p + ".enorm.weight");
    m.hnorm = at(p + ".hnorm.weight");
    m.eh_proj = at(p + ".eh_proj.weight");
    m.block = bind_block(t, base, buffers, hf, c.experts > 0, c);
    m.head_norm = at(p + ".shared_head.norm.weight");
    w.mtp.push_back(m);
  }
  w.norm = at("model.norm.weight");
  w.head = at("lm_head.weight");
  return w;
}

ModelWeights::ModelWeights(const ModelConfig& c, DType dtype, Device device, ExpertShard shard,
                           QuantScheme quant, StageParts parts)
    : c_(c), quant_(quant) {
  validate(c_);
  DSV3_CHECK(quant == QuantScheme::None || (shard.whole(c) && parts.whole),
             "int8 weights hold every expert and layer (one process); expert and pipeline "
             "parallelism need float weights");
  table_ = quant == QuantScheme::None ? build_param_table(c, shard, parts) : high_precision_table(c);
  DSV3_CHECK(dtype == DType::F32 || dtype == DType::BF16 || dtype == DType::F16 ||
                 dtype == DType::F64,
             "weights must be f32, bf16, f16 or f64, not ", dtype_name(dtype));
  data_ = Buffer(device, dtype, table_.total);
  const bool own_buffers = dtype != DType::F32;  // the router reads fp32 biases
  if (own_buffers && table_.buffers_total > 0)
    buffers_ = Buffer(device, DType::F32, table_.buffers_total);
  view_ = bind_model(c_, table_, data_.view(), own_buffers ? buffers_.view() : Tensor{});
  if (quant == QuantScheme::None) return;
  DSV3_CHECK(dtype != DType::F64, "int8 weights compute in f32, bf16 or f16, not f64");
  const QuantLayout l = quant_layout(c_);
  int8_ = Buffer(device, quant_dtype(quant), l.bytes);
  bind_quantized(view_, c_, l, int8_.view());
}

void ModelWeights::load(const std::vector<float>& host) {
  if (quant_ != QuantScheme::None) return load_quantized(quantize_params(c_, quant_, host));
  load_table(host);
}

void ModelWeights::load_quantized(const QuantizedParams& q) {
  DSV3_CHECK(q.scheme == quant_, "int8 weights are ", quant_scheme_name(q.scheme), ", the model ",
             quant_scheme_name(quant_), " (internal error)");
  DSV3_CHECK(q.int8.size() == int8_.numel(), "int8 model has ", q.int8.size(),
             " int8 bytes, the config needs ", int8_.numel(), " (internal error)");
  load_table(q.high);
  backend::copy(Exec{device()}, int8_.view(),
                Tensor(const_cast<uint8_t*>(q.int8.data()), q.int8.size(), int8_.dtype()));
}

std::vector<float> ModelWeights::to_host() const {
  if (quant_ == QuantScheme::None) return table_to_host();
  QuantizedParams q;
  q.scheme = quant_;
  q.high = table_to_host();
  q.int8.resize(int8_.numel());
  backend::copy(Exec{device()}, Tensor(q.int8.data(), q.int8.size(), int8_.dtype()), int8_.view());
  return dequantize_params(c_, q);
}

void ModelWeights::load_table(const std::vector<float>& host) {
  DSV3_CHECK(host.size() == table_.total, "weights have ", host.size(), " values, the model ",
             table_.total);
  const Exec ex{device()};
  const Tensor src = host_tensor(host);
  if (device() == Device::CPU) {
    convert(ex, data_.view(), src);
  } else {
    Buffer stage(device(), DType::F32, table_.total);
    backend::copy(ex, stage.view(), src);
    convert(ex, data_.view(), stage.view());
  }
  if (buffers_)
    for (const auto& p : table_.list)
      if (p.kind == ParamKind::Buffer)
        backend::copy(ex, buffers_.view().slice(p.buffer_offset, p.numel), src.slice(p.offset, p.numel));
}

std::vector<float> ModelWeights::table_to_host() const {
  std::vector<float> out(table_.total);
  const Exec ex{device()};
  const Tensor dst = host_tensor(out);
  if (device() == Device::CPU) {
    convert(ex, dst, data_.view());
  } else {
    Buffer stage(Device::CPU, dtype(), table_.total);
    backend::copy(ex, stage.view(), data_.view());
    convert(Exec{}, dst, stage.view());
  }
  if (buffers_)
    for (const auto& p : table_.list)
      if (p.kind == ParamKind::Buffer) {
        std::vector<float> b(p.numel);
        backend::copy(ex, host_tensor(b), buffers_.view().slice(p.buffer_offset, p.numel));
        std::copy(b.begin(), b.end(), out.begin() + p.offset);
      }
  return out;
}

void ModelWeights::refresh_buffers(const Exec& ex, const Tensor& master) {
  if (!buffers_) return;
  for (const auto& p : table_.list)
    if (p.kind == ParamKind::Buffer)
      backend::copy(ex, buffers_.view().slice(p.buffer_offset, p.numel), master.slice(p.offset, p.numel));
}

}  // namespace dsv3
