#include "train/state.h"

#include "ops/elementwise.h"
#include "ops/quant.h"

namespace dsv3 {

namespace {
std::vector<float> to_host(const Exec& ex, const Tensor& t) {
  std::vector<float> out(t.numel);
  backend::copy(ex, host_tensor(out), t);
  return out;
}
}  // namespace

TrainState::TrainState(ModelWeights& w, const AdamWConfig& oc, const PrecisionConfig& pc, bool qat)
    : w_(w),
      grads_(w.device(), DType::F32, w.table().total),
      opt_(oc, w.table(), w.device()),
      scaler_(pc),
      qat_(qat) {
  DSV3_CHECK(w.quant() == QuantScheme::None, "an int8 model (", quant_scheme_name(w.quant()),
             ") cannot be trained: train its fp32 checkpoint (--qat true prepares one for int8)");
  DSV3_CHECK(w.dtype() == compute_dtype(pc.precision), "weights are ", dtype_name(w.dtype()),
             " but the precision is ", precision_name(pc.precision), " (internal error)");
  if (w.dtype() != DType::F32 || qat) master_ = Buffer(w.device(), DType::F32, w.table().total);
  grad_view_ = bind_model(w.config(), w.table(), grads_.view());
}

void TrainState::load_weights(const std::vector<float>& params) {
  w_.load(params);
  if (master_) backend::copy(exec(), master_.view(), host_tensor(params));
  refresh_compute();
}

void TrainState::refresh_compute() {
  if (!qat_) return;
  const Exec ex = exec();
  for (const ParamInfo& p : w_.table().list) {
    const Tensor from = master().slice(p.offset, p.numel), to = w_.data().slice(p.offset, p.numel);
    if (is_quantized_param(p)) fake_quant_forward(ex, to, from, int(p.shape[0]), int(p.shape[1]));
    else if (p.kind == ParamKind::Buffer && w_.dtype() == DType::F32) backend::copy(ex, to, from);
  }
}

void TrainState::load_moments(const std::vector<float>& m, const std::vector<float>& v) {
  DSV3_CHECK(m.size() == w_.table().total && v.size() == w_.table().total,
             "optimizer state has ", m.size(), " values, the model ", w_.table().total);
  backend::copy(exec(), opt_.m(), host_tensor(m));
  backend::copy(exec(), opt_.v(), host_tensor(v));
}

std::vector<float> TrainState::master_host() const { return to_host({w_.device()}, master()); }
std::vector<float> TrainState::m_host() const { return to_host({w_.device()}, opt_.m()); }
std::vector<float> TrainState::v_host() const { return to_host({w_.device()}, opt_.v()); }

void TrainState::zero_grads() { backend::zero(exec(), grads_.view()); }

}  // namespace dsv3
