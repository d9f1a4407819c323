#include "train/pipeline.h"

#include <algorithm>

#include "core/check.h"
#include "core/timer.h"

namespace dsv3 {

struct PipelineStage::Slot {
  std::unique_ptr<Workspace> ws;
  std::unique_ptr<Pass> pass;
  std::vector<dist::Request> sends;  // isends from this slot's buffers, waited before reuse
};

PipelineStage::PipelineStage(const ModelWeights& w, dist::Comm pp, std::vector<int> bounds,
                             PipeSchedule s)
    : w_(w), pp_(std::move(pp)), bounds_(std::move(bounds)), schedule_(s) {
  stage_ = pp_.rank();
  DSV3_CHECK(pp_.size() == stages(), "internal: ", stages(), " stage boundaries for a pipeline "
             "group of ", pp_.size());
  DSV3_CHECK(s == PipeSchedule::OneFOneB, "--pp_schedule ", pipe_schedule_name(s),
             " is not implemented in training yet: use --pp_schedule 1f1b");
  const ModelConfig& c = w.config();
  const int l0 = bounds_[size_t(stage_)], l1 = bounds_[size_t(stage_ + 1)];
  for (int l = 0; l < c.layers; l++)
    if (c.is_moe_layer(l)) mine_moe_.push_back(l >= l0 && l < l1);
  if (c.experts > 0)
    for (int k = 1; k <= c.mtp_depth; k++) mine_moe_.push_back(last());
}

PipelineStage::~PipelineStage() = default;

void PipelineStage::recv(const Tensor& t, int peer, int tag) {
  const double t0 = now_seconds();
  pp_.recv(t.data, t.numel, t.dtype, peer, tag);
  stats_.idle_s += now_seconds() - t0;
}

void PipelineStage::forward(Slot& s, int a) {
  {
    const double t0 = now_seconds();
    for (dist::Request& r : s.sends) r.wait();  // the buffers are about to be rewritten
    s.sends.clear();
    stats_.idle_s += now_seconds() - t0;
  }
  const ModelConfig& c = w_.config();
  const int l0 = bounds_[size_t(stage_)], l1 = bounds_[size_t(stage_ + 1)];
  const MicroBatch mb = (*micro_)(a);
  s.pass = std::make_unique<Pass>(w_, *s.ws, *loss_, mb.d, grads_, (*scale_)[size_t(a)]);
  Pass& p = *s.pass;
  load_batch(p, mb, /*mtp=*/true);
  const size_t NC = size_t(mb.d.N()) * c.hidden;
  if (first()) embed_forward(p);
  else recv(s.ws->resid[size_t(l0)].slice(0, NC), stage_ - 1, 2 * a);
  blocks_forward(p, l0, l1);
  LossReport& r = reports_[size_t(a)];
  r = {};
  if (last()) {
    r.targets = p.targets;
    r.loss = head_loss(p, {});
    r.mtp_loss = mtp_forward(p, {});
    r.total = r.loss + p.loss.mtp_weight * r.mtp_loss;
    if (p.soft) {
      r.distill_loss = p.distill_loss;
      r.total += p.soft->alpha * (r.distill_loss - r.loss);
    }
  } else {
    const Tensor out = s.ws->resid[size_t(l1)].slice(0, NC);
    s.sends.push_back(pp_.isend(out.data, out.numel, out.dtype, stage_ + 1, 2 * a));
    stats_.sent_bytes += double(out.bytes());
  }
  r.moe = moe_stats(p);
  for (size_t i = 0; i < r.moe.size(); i++) {
    if (i < mine_moe_.size() && mine_moe_[i]) {
      r.balance_loss += r.moe[i].balance_loss;
      continue;
    }
    r.moe[i].balance_loss = r.moe[i].entropy = 0;  // another stage's layer: its numbers count
    std::fill(r.moe[i].loads.begin(), r.moe[i].loads.end(), 0);
  }
  r.total += r.balance_loss;
}

void PipelineStage::backward(Slot& s, int a) {
  const ModelConfig& c = w_.config();
  const int l0 = bounds_[size_t(stage_)], l1 = bounds_[size_t(stage_ + 1)];
  DSV3_CHECK(s.pass, "internal: backward of micro-batch ", a, " before its forward");
  Pass& p = *s.pass;
  const size_t NC = size_t(p.d.N()) * c.hidden;
  if (last()) mtp_backward(p);
  else recv(s.ws->dres.slice(0, NC), stage_ + 1, 2 * a + 1);
  blocks_backward(p, l0, l1);
  if (first()) {
    embed_backward(p);
  } else {
    const Tensor d = s.ws->dres.slice(0, NC);
    s.sends.push_back(pp_.isend(d.data, d.numel, d.dtype, stage_ - 1, 2 * a + 1));
    stats_.sent_bytes += double(d.bytes());
  }
}

std::vector<LossReport> PipelineStage::run(const WorkspaceConfig& whole, ExpertExchange* experts,
                                           const TrainingLossConfig& loss,
                                           const ModelParams& grads, const MicroFn& micro,
                                           const std::vector<float>& scale, const Hooks& hooks) {
  const int M = int(scale.size()), P = stages();
  DSV3_CHECK(M >= 1 && 2 * M <= 32767, "a pipeline step runs 1 to 16383 micro-batches, not ", M);
  const double t0 = now_seconds();
  stats_ = {};
  stats_.micros = M;
  // one workspace per micro-batch in flight, for this stage's layers
  WorkspaceConfig wc = whole;
  wc.layer_begin = bounds_[size_t(stage_)];
  wc.layer_end = bounds_[size_t(stage_ + 1)];
  wc.embed = first();
  wc.head = last();
  wc.backward = true;
  wc.cuda_graphs = false;
  const size_t want = size_t(inflight_1f1b(stage_, P, M));
  const bool same = wc.max.B == slot_cfg_.max.B && wc.max.T == slot_cfg_.max.T &&
                    wc.recompute == slot_cfg_.recompute && wc.soft_targets == slot_cfg_.soft_targets;
  if (!same) slots_.clear();
  slot_cfg_ = wc;
  while (slots_.size() < want) {
    auto s = std::make_unique<Slot>();
    s->ws = std::make_unique<Workspace>(w_.config(), w_.dtype(), w_.device(), wc);
    slots_.push_back(std::move(s));
  }
  for (auto& s : slots_) s->ws->set_expert_exchange(experts);
  loss_ = &loss, grads_ = &grads, micro_ = &micro, scale_ = &scale, experts_ = experts;
  reports_.assign(size_t(M), LossReport{});
  for (const PipeOp& op : schedule_1f1b(stage_, P, M)) {
    Slot& s = *slots_[size_t(op.micro) % want];
    const double c0 = now_seconds(), i0 = stats_.idle_s;
    if (op.backward) {
      if (hooks.before_backward) hooks.before_backward(op.micro);
      backward(s, op.micro);
      if (hooks.after_backward) hooks.after_backward(op.micro);
    } else {
      forward(s, op.micro);
    }
    stats_.compute_s += (now_seconds() - c0) - (stats_.idle_s - i0);
  }
  const double w0 = now_seconds();
  for (auto& s : slots_) {
    for (dist::Request& r : s->sends) r.wait();
    s->sends.clear();
    s->pass.reset();
  }
  stats_.idle_s += now_seconds() - w0;
  stats_.wall_s = now_seconds() - t0;
  loss_ = nullptr, grads_ = nullptr, micro_ = nullptr, scale_ = nullptr;
  return reports_;
}

}  // namespace dsv3
