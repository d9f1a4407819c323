#include "train/step.h"

#include <algorithm>

namespace dsv3 {

void update_routing_bias(Model& model, double gamma) {
  const ModelConfig& c = model.config();
  if (gamma == 0 || c.router != RouterKind::Sigmoid || c.experts == 0) return;
  const auto& names = model.moe_layer_names();
  auto& stats = model.moe_stats();
  for (size_t i = 0; i < stats.size(); i++) {
    // "layer 3" -> HF layer 3; "mtp k" -> HF layer layers + k - 1
    const std::string& n = names[i];
    const int hf = n.rfind("mtp ", 0) == 0 ? c.layers + std::stoi(n.substr(4)) - 1
                                           : std::stoi(n.substr(6));
    float* b = model.params() +
               model.table().at("model.layers." + std::to_string(hf) +
                                ".mlp.gate.e_score_correction_bias").offset;
    double mean = 0;
    for (int64_t l : stats[i].loads) mean += double(l);
    mean /= c.experts;
    for (int e = 0; e < c.experts; e++) {
      const double diff = mean - double(stats[i].loads[e]);
      b[e] += float(gamma * double((diff > 0) - (diff < 0)));
    }
  }
}

StepSettings step_settings(int grad_accum, double clip, const ScheduleConfig& sched,
                           const TrainingLossConfig& loss) {
  StepSettings s{grad_accum, clip, sched, loss.bias_update_rate};
  s.mtp_weight = loss.mtp_weight;
  s.mtp_weight_late = loss.mtp_weight_late;
  if (loss.mtp_late_from < 1.0)
    s.mtp_late_step = int64_t(std::ceil(loss.mtp_late_from * double(sched.total)));
  return s;
}

StepResult train_step(Model& model, AdamW& opt, const StepSettings& s, int64_t step, Dims d,
                      const std::function<const int32_t*(int)>& micro) {
  StepResult r;
  model.zero_grads();
  model.reset_loads();
  model.set_mtp_weight(step >= s.mtp_late_step ? s.mtp_weight_late : s.mtp_weight);
  const float scale = 1.0f / float(s.grad_accum);
  for (int a = 0; a < s.grad_accum; a++) {
    LossReport l = model.forward_backward(micro(a), d, scale);
    r.loss.loss += l.loss / s.grad_accum;
    r.loss.mtp_loss += l.mtp_loss / s.grad_accum;
    r.loss.balance_loss += l.balance_loss / s.grad_accum;
    r.loss.total += l.total / s.grad_accum;
    r.loss.targets += l.targets;
  }
  r.grad_norm = clip_grad_norm(model.grads(), model.table(), s.clip);
  r.lr = lr_at(s.schedule, step);
  opt.step(model.params(), model.grads(), r.lr, step + 1);
  for (const auto& st : model.moe_stats()) {
    double sum = 0, mx = 0;
    for (int64_t l : st.loads) sum += double(l), mx = std::max(mx, double(l));
    r.load_max_over_mean.push_back(sum > 0 ? mx / (sum / double(st.loads.size())) : 0.0);
  }
  update_routing_bias(model, s.bias_update_rate);
  return r;
}

}  // namespace dsv3
