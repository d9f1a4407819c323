// AdamW (T1) with global-norm clipping, torch.optim.AdamW semantics: decoupled weight decay on
// 2-D weights only (norm weights and other 1-D tensors are exempt), routing-bias buffers are not
// touched. Master weights, gradients and moments are fp32 device buffers laid out by the
// parameter table; the update itself is an op (ops/optimizer.h) behind the backend seam.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/fields.h"
#include "model/params.h"

namespace dsv3 {

struct AdamWConfig {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;  // clip the global gradient norm to this (0 = off)
};
const std::vector<FieldSpec>& optimizer_fields();
void validate(const AdamWConfig& c);

class AdamW {
 public:
  AdamW(const AdamWConfig& c, const ParamTable& t, Device device);
  // Over n elements of which `spans` are trained (a ZeRO shard: its own offsets).
  AdamW(const AdamWConfig& c, std::vector<ParamSpan> spans, size_t n, Device device);
  // One update of master (fp32) from grads with learning rate lr. compute (16-bit weights laid
  // out like master, or empty) is rewritten in the same pass. grad_scale multiplies every
  // gradient as it is read (clipping, loss-scale removal). The bias correction counts the
  // updates applied (skipped steps do not count, as with torch's GradScaler).
  void step(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& compute,
            double lr, double grad_scale = 1.0);
  int64_t updates() const { return updates_; }
  void set_updates(int64_t n) { updates_ = n; }  // from a checkpoint
  const AdamWConfig& config() const { return cfg_; }
  const std::vector<ParamSpan>& spans() const { return spans_; }  // the trainable tensors
  const Tensor& m() const { return m_.view(); }
  const Tensor& v() const { return v_.view(); }
  // The optimizer's state as named fp32 arrays, each elementwise over the parameters (what ZeRO
  // shards and checkpoints store by name, whatever the optimizer).
  std::vector<std::pair<std::string, Tensor>> state() const {
    return {{"adam_m", m_.view()}, {"adam_v", v_.view()}};
  }

 private:
  AdamWConfig cfg_;
  std::vector<ParamSpan> spans_;
  Buffer m_, v_;
  int64_t updates_ = 0;
};

// sqrt(sum of squares) over the spans, in double in a fixed order (thread-count independent).
double global_norm(const Exec& ex, const Tensor& grads, const std::vector<ParamSpan>& spans);

}  // namespace dsv3
