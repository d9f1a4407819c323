// The optimizer (T1, T3): AdamW (torch.optim.AdamW semantics), LAMB (AdamW's moments with a
// per-tensor trust ratio) or Muon (Newton-Schulz orthogonalised momentum for 2-D hidden weights,
// AdamW for the embedding, head, norms and other 1-D tensors), with global-norm clipping,
// per-group learning-rate multipliers (with an optional depth decay) and annealed gradient
// noise. Decoupled weight decay applies to 2-D weights only; routing-bias buffers are not
// touched. The state is two fp32 arrays laid out by the parameter table, "m" (Adam's first
// moment, or Muon's momentum on its matrices) and "v" (Adam's second moment; zero on Muon's
// matrices), so checkpoints and state sharding see the same regions for every optimizer. The
// updates are ops (ops/optimizer.h) behind the backend seam.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <string>

#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/fields.h"
#include "model/params.h"

namespace dsv3 {

enum class OptimizerKind : uint8_t { AdamW, Lamb, Muon };
const char* optimizer_name(OptimizerKind k);
OptimizerKind parse_optimizer(const std::string& s);

struct AdamWConfig {  // the "optimizer" settings group, for every OptimizerKind
  OptimizerKind kind = OptimizerKind::AdamW;
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  double clip = 1.0;  // clip the global gradient norm to this (0 = off)
  // per-group learning-rate multipliers "embed=0.5,head=0.5" over the groups of lr_group_of
  std::string lr_groups;
  double lr_depth_decay = 1.0;  // block l of L: x decay^(L-1-l); the embedding x decay^L
  // annealed gradient noise: variance grad_noise / (1 + t)^grad_noise_gamma, t counted in
  // updates from grad_noise_start on (Neelakantan et al.: eta 0.01..1, gamma 0.55)
  double grad_noise = 0;
  double grad_noise_gamma = 0.55;
  long long grad_noise_start = 0;
  uint64_t noise_seed = 0;  // set from the run's seed (not a setting)
  // Muon
  double muon_momentum = 0.95;
  bool muon_nesterov = true;
  int muon_ns_steps = 5;
};
const std::vector<FieldSpec>& optimizer_fields();
void validate(const AdamWConfig& c);

// The learning-rate group of a parameter (its Hugging Face name): embed, attn, dense (the dense
// FFN), experts, shared (shared experts), router, norm, head, mtp (eh_proj of MTP modules).
std::string lr_group_of(const std::string& param_name);
// The multiplier of every trainable tensor, in table order: lr_groups times the depth decay
// (main-model blocks are the layers without an eh_proj; MTP modules and the head count as top).
std::vector<float> lr_multipliers(const AdamWConfig& c, const ParamTable& t);
// A resumed run must use the optimizer its checkpoint's state belongs to.
void check_resume_optimizer(const AdamWConfig& c, const nlohmann::json& checkpoint_train);

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
  // the noise standard deviation of update t (1-based); 0 when off
  double noise_std(int64_t t) const;
  // The optimizer's state as named fp32 arrays, each elementwise over the parameters (what ZeRO
  // shards and checkpoints store by name, whatever the optimizer).
  std::vector<std::pair<std::string, Tensor>> state() const {
    return {{"adam_m", m_.view()}, {"adam_v", v_.view()}};
  }

 private:
  AdamWConfig cfg_;
  std::vector<ParamSpan> spans_;       // every trainable tensor (with its lr multiplier)
  std::vector<ParamSpan> adam_spans_;  // Muon: the tensors AdamW updates
  std::vector<MatrixSpan> muon_mats_;  // Muon: the 2-D hidden weights
  Buffer m_, v_;
  int64_t updates_ = 0;
};

// sqrt(sum of squares) over the spans, in double in a fixed order (thread-count independent).
double global_norm(const Exec& ex, const Tensor& grads, const std::vector<ParamSpan>& spans);

}  // namespace dsv3
