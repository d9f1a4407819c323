#include "train/step.h"

#include <algorithm>

#include "ops/optimizer.h"


namespace dsv3 {

StepSettings step_settings(int grad_accum, const ScheduleConfig& sched, int64_t total_steps,
                           const TrainingLossConfig& loss) {
  StepSettings s;
  s.grad_accum = grad_accum;
  s.schedule = sched;
  s.total_steps = total_steps;
  s.bias_update_rate = loss.bias_update_rate;
  s.mtp_weight = loss.mtp_weight;
  s.mtp_weight_late = loss.mtp_weight_late;
  if (loss.mtp_late_from < 1.0)
    s.mtp_late_step = int64_t(std::ceil(loss.mtp_late_from * double(total_steps)));
  return s;
}

LoadStats load_stats(const MoeLayerStats& s) {
  LoadStats r;
  r.entropy = s.entropy;
  r.loads = s.loads;
  if (s.loads.empty()) return r;
  double sum = 0, mx = 0, mn = double(s.loads[0]);
  for (int64_t l : s.loads) sum += double(l), mx = std::max(mx, double(l)), mn = std::min(mn, double(l));
  const double mean = sum / double(s.loads.size());
  if (mean <= 0) return r;
  double var = 0;
  for (int64_t l : s.loads) var += (double(l) - mean) * (double(l) - mean);
  var /= double(s.loads.size());
  r.max_over_mean = mx / mean;
  r.min_over_mean = mn / mean;
  r.cv = std::sqrt(var) / mean;
  return r;
}

std::string routing_bias_name(const ModelConfig& c, const std::string& n) {
  // "layer 3" -> HF layer 3; "mtp k" -> HF layer layers + k - 1
  const int hf = n.rfind("mtp ", 0) == 0 ? c.layers + std::stoi(n.substr(4)) - 1
                                         : std::stoi(n.substr(6));
  return "model.layers." + std::to_string(hf) + ".mlp.gate.e_score_correction_bias";
}

void update_routing_bias(TrainState& st, const std::vector<MoeLayerStats>& moe, double gamma) {
  const ModelConfig& c = st.weights().config();
  if (gamma == 0 || c.router != RouterKind::Sigmoid || c.experts == 0) return;
  const auto names = moe_layer_names(c);
  const Exec ex = st.exec();
  Buffer loads(ex.device, DType::I64, c.experts);
  for (size_t i = 0; i < moe.size(); i++) {
    const ParamInfo* pi = st.weights().table().find(routing_bias_name(c, names[i]));
    if (!pi) continue;  // another pipeline stage's layer
    const ParamInfo& p = *pi;
    backend::copy(ex, loads.view(), host_tensor(moe[i].loads));  // the step's loads, summed
    routing_bias_update(ex, st.master().slice(p.offset, p.numel), loads.view(), gamma);
  }
  st.weights().refresh_buffers(ex, st.master());
}

Gradients compute_gradients(TrainState& st, Workspace& ws, const TrainingLossConfig& loss,
                            const StepSettings& s, int64_t step, const MicroFn& micro) {
  TrainingLossConfig l = loss;
  l.mtp_weight = step >= s.mtp_late_step ? s.mtp_weight_late : s.mtp_weight;
  st.zero_grads();
  Gradients g;
  g.loss_scale = st.scaler().scale();
  const float scale = float(g.loss_scale / double(s.grad_accum));
  for (int a = 0; a < s.grad_accum; a++) {
    const MicroBatch mb = micro(a);
    LossReport r = forward_backward(st.weights(), ws, l, st.grad_view(), mb, scale);
    g.loss.loss += r.loss / s.grad_accum;
    g.loss.mtp_loss += r.mtp_loss / s.grad_accum;
    g.loss.balance_loss += r.balance_loss / s.grad_accum;
    g.loss.distill_loss += r.distill_loss / s.grad_accum;
    g.loss.total += r.total / s.grad_accum;
    g.loss.targets += r.targets;
    if (a == 0) {
      g.loss.moe = r.moe;
      for (auto& m : g.loss.moe) m.balance_loss /= s.grad_accum, m.entropy /= s.grad_accum;
    } else {
      for (size_t i = 0; i < r.moe.size(); i++) {
        for (size_t e = 0; e < r.moe[i].loads.size(); e++) g.loss.moe[i].loads[e] += r.moe[i].loads[e];
        g.loss.moe[i].balance_loss += r.moe[i].balance_loss / s.grad_accum;
        g.loss.moe[i].entropy += r.moe[i].entropy / s.grad_accum;
      }
    }
  }
  g.grad_norm = global_norm(st.exec(), st.grads(), st.optimizer().spans()) / g.loss_scale;
  g.finite = std::isfinite(g.grad_norm) && std::isfinite(g.loss.total);
  return g;
}

double apply_update(TrainState& st, const StepSettings& s, int64_t step, const Gradients& g) {
  const Exec ex = st.exec();
  const double clip = st.optimizer().config().clip;
  // torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6) when norm > max_norm; the
  // loss scale comes off with it (exactly: it is a power of two). AdamW applies the factor as it
  // reads each gradient: one fp32 multiplication, as torch multiplies by an fp32 tensor.
  double factor = 1.0 / g.loss_scale;
  if (clip > 0 && g.grad_norm > clip) factor *= clip / (g.grad_norm + 1e-6);
  const double lr = lr_at(s.schedule, step, s.total_steps);
  st.optimizer().step(ex, st.master(), st.grads(), st.compute_copy(), lr, double(float(factor)));
  update_routing_bias(st, g.loss.moe, s.bias_update_rate);
  st.refresh_compute();
  return lr;
}

StepResult step_result(const Gradients& g, double lr, bool applied, const std::string& why) {
  StepResult r;
  r.loss = g.loss;
  r.grad_norm = g.grad_norm;
  r.lr = lr;
  r.applied = applied;
  r.skipped = why;
  r.loss_scale = g.loss_scale;
  for (const auto& m : g.loss.moe) r.load.push_back(load_stats(m));
  return r;
}

StepResult train_step(TrainState& st, Workspace& ws, const TrainingLossConfig& loss,
                      const StepSettings& s, int64_t step, const MicroFn& micro) {
  const Gradients g = compute_gradients(st, ws, loss, s, step, micro);
  if (!st.scaler().update(g.finite)) {
    return step_result(g, lr_at(s.schedule, step, s.total_steps), false, "fp16 overflow");
  }
  const double lr = apply_update(st, s, step, g);
  return step_result(g, lr, true, "");
}

}  // namespace dsv3
