#include "train/parallel_step.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <thread>

#include "checkpoint/sharded.h"
#include "core/check.h"
#include "core/timer.h"
#include "ops/elementwise.h"
#include "ops/optimizer.h"
#include "train/expert_parallel.h"
#include "train/pipeline.h"
#include "train/tp_comm.h"

namespace dsv3 {

bool ParallelContext::pp_overlap() const {
  return layout.pp > 1 && cfg.pp_schedule == PipeSchedule::DualPipe && cfg.pp_overlap &&
         concurrent_threads;
}

std::string ParallelContext::overlap_note() const {
  if (layout.pp == 1 || cfg.pp_schedule != PipeSchedule::DualPipe) return "";
  if (pp_overlap()) return ", F&B overlapped on 2 threads";
  return cfg.pp_overlap ? ", F&B one after the other (MPI_THREAD_MULTIPLE not granted on every "
                          "rank: DSV3_MPI_THREADS=funneled, or the MPI lacks it)"
                        : ", F&B one after the other (--pp_overlap false)";
}

std::string ParallelContext::describe() const {
  std::string stages;
  for (size_t s = 0; s + 1 < pp_bounds.size(); s++)
    stages += cat(s ? " | " : "", pp_bounds[s], pp_bounds[s + 1] - pp_bounds[s] > 1
                                                     ? cat("-", pp_bounds[s + 1] - 1) : std::string());
  return cat(world, world == 1 ? " process" : " ranks", ": ", dist::describe(layout), ", zero ",
             cfg.zero, cfg.grad_compress != GradCompress::None
                           ? cat(", grad_compress ", grad_compress_name(cfg.grad_compress))
                           : std::string(),
             stages.empty() ? std::string()
                            : cat(", ", pipe_schedule_name(cfg.pp_schedule), " stages of layers ",
                                  stages, overlap_note()));
}

namespace {
int split_seq_len(const ModelConfig& model, int seq_len) {
  return seq_len > 0 ? seq_len : model.max_seq;
}
}  // namespace

void validate_parallel(const dist::ParallelLayout& given, const DistConfig& cfg,
                       const ModelConfig& model, int world_size, int seq_len) {
  validate(cfg);
  const dist::ParallelLayout l = dist::resolve(given, world_size);
  dist::validate(l, world_size);
  check_tensor_parallel(model, l.tp);
  DSV3_CHECK(!cfg.sp || l.tp > 1, "--sp splits the rows of the residual stream over the tensor-"
             "parallel ranks: it needs --tp > 1 (now ", l.tp, ")");
  if (l.pp > 1) {
    pipeline_split(model, l.pp, cfg.pp_layers, split_seq_len(model, seq_len));  // throws
    DSV3_CHECK(cfg.zero < 2, "--zero 2 with --pp ", l.pp, " is not supported (ZeRO-2 reduces "
               "gradients after every micro-batch, which serialises the pipeline): use --zero 1");
    DSV3_CHECK(!cfg.balance_microbatches, "--balance_microbatches with --pp is not supported "
               "(every stage of a pipeline runs the same micro-batches)");
    DSV3_CHECK(cfg.pp_schedule == PipeSchedule::OneFOneB || l.pp % 2 == 0, "--pp_schedule "
               "dualpipe runs two pipelines in opposite directions over the same stages and needs "
               "an even --pp, not ", l.pp);
  } else {
    DSV3_CHECK(cfg.pp_layers.empty(), "--pp_layers ", cfg.pp_layers, " splits layers into "
               "pipeline stages, but --pp is 1 (set --pp to the number of stages, or --pp_layers '' to "
               "drop the split, e.g. resuming a pipeline's checkpoint on one process)");
  }
  if (l.ep > 1)
    DSV3_CHECK(model.experts > 0 && model.experts % l.ep == 0, "--ep ", l.ep, " shards the routed "
               "experts over ", l.ep, " ranks, but the model has ", model.experts,
               " routed experts, not a multiple of ", l.ep, " (choose an ep that divides ",
               model.experts, ")");
  DSV3_CHECK(!cfg.eplb || l.pp == 1, "--eplb with --pp ", l.pp, " is not supported (a "
             "pipeline rank holds only its stages' MoE layers; the replicas are placed for all): "
             "drop --eplb or --pp");
  if (cfg.eplb && model.experts > 0) {
    const int r = eplb_redundant_slots(cfg, l.ep);
    DSV3_CHECK(l.ep > 1, "--eplb places replicas of heavy experts on the other ranks of an "
               "expert-parallel group: it needs --ep > 1 (now ", l.ep, ")");
    DSV3_CHECK(r % l.ep == 0 && r / l.ep <= model.experts, "--eplb_redundant ", r, " must be a "
               "multiple of --ep ", l.ep, " (every rank gets as many replica slots) and at most ",
               l.ep * model.experts, " (", model.experts, " per rank)");
  }
}

void validate_pipeline_micros(const dist::ParallelLayout& given, const DistConfig& cfg,
                              int world_size, int batch, int grad_accum) {
  const dist::ParallelLayout l = dist::resolve(given, world_size);
  if (l.pp == 1 || cfg.pp_schedule != PipeSchedule::DualPipe || batch < 1 || l.dp < 1) return;
  const long long G = cfg.global_batch > 0 ? cfg.global_batch : 1LL * batch * grad_accum * l.dp;
  if (G % (1LL * l.dp * batch) != 0) return;  // even_plan says what to change
  schedule_dualpipe(0, l.pp, int(G / l.dp / batch));  // throws naming the rule
}

std::unique_ptr<ParallelContext> make_parallel_context(const dist::ParallelLayout& given,
                                                       const DistConfig& cfg,
                                                       const ModelConfig& model, int seq_len) {
  auto ctx = std::make_unique<ParallelContext>();
  const dist::Comm& world = dist::world();
  ctx->world = world.size();
  ctx->rank = world.rank();
  ctx->cfg = cfg;
  validate_parallel(given, cfg, model, ctx->world, seq_len);
  ctx->layout = dist::resolve(given, ctx->world);
  const dist::ParallelLayout& l = ctx->layout;
  const dist::ParallelGroups g = dist::make_parallel_groups(world, l);
  ctx->at = g.at;
  ctx->world_group = dist::make_group(world, "world");
  // whether MPI lets two threads communicate, agreed by every rank (the overlap's set-up is
  // collective: a rank that skipped it would leave the others waiting)
  int32_t concurrent = dist::concurrent_threads() ? 1 : 0;
  world.all_reduce(&concurrent, 1, DType::I32, dist::ReduceOp::Min);
  ctx->concurrent_threads = concurrent == 1;
  ctx->dp = dist::make_group(g.dp, "dp");
  ctx->ep = dist::make_group(g.ep, "ep");
  ctx->edp = dist::make_group(g.edp, "edp");
  ctx->model = model;
  if (l.tp > 1) ctx->tp = dist::make_group(g.tp, "tp");
  if (l.pp > 1) {  // make_group is collective: every rank makes these calls in the same order
    ctx->pp_bounds = pipeline_split(model, l.pp, cfg.pp_layers, split_seq_len(model, seq_len));
    ctx->dp_mirror = dist::make_group(g.dp_mirror, "dp_mirror");
    ctx->edp_mirror = dist::make_group(g.edp_mirror, "edp_mirror");
    ctx->pp = dist::make_group(g.pp, "pp");
    ctx->parts = pipeline_parts(model, ctx->pp_bounds, ctx->at.pp, cfg.pp_schedule);
  }
  ctx->coll = std::make_unique<dist::Collectives>(ctx->world > 1 ? cfg.collective_timeout : 0);
  if (l.ep > 1) ctx->shard = {ctx->at.ep * (model.experts / l.ep), model.experts / l.ep};
  return ctx;
}

ParallelStep::ParallelStep(ParallelContext& ctx, ModelWeights& w, const AdamWConfig& oc,
                           const PrecisionConfig& pc, const ModelConfig& c, bool qat)
    : ctx_(ctx), w_(w), c_(c), scaler_(pc) {
  DSV3_CHECK(!qat || !ctx.distributed() || ctx.cfg.zero == 0, "--qat true with --zero ",
             ctx.cfg.zero, " is not supported (an int8 row's scale needs the whole row on one "
             "rank): use --zero 0");
  if (!ctx.distributed() || ctx.cfg.zero == 0) single_ = std::make_unique<TrainState>(w, oc, pc, qat);
  if (!ctx.distributed()) return;
  DSV3_CHECK(w.device() == Device::CPU, "distributed training runs on the CPU for now (the "
             "communicator moves host buffers); drop --device cuda or run one process");
  DSV3_CHECK(ctx.layout.pp == 1 || !w.table().parts.whole, "internal: a pipeline rank's "
             "weights must hold its stages' layers only (ParallelContext::parts)");
  sync_ = std::make_unique<GradSync>(w.table(), c, ctx.dp, w.table().sharded() ? &ctx.edp : nullptr,
                                     *ctx.coll, ctx.cfg, w.device(),
                                     ctx.dp_mirror.comm ? &ctx.dp_mirror : nullptr,
                                     ctx.edp_mirror.comm ? &ctx.edp_mirror : nullptr);
  if (ctx.cfg.zero > 0) {
    grads_ = Buffer(w.device(), DType::F32, w.table().total);
    grad_view_ = bind_model(c, w.table(), grads_.view());
    master_ = Buffer(w.device(), DType::F32, std::max<size_t>(sync_->shard_size(), 1));
    // each piece of a tensor keeps that tensor's learning-rate multiplier (per-group rates)
    std::vector<ParamSpan> spans = sync_->own_spans_shard();
    const std::vector<ParamSpan> whole = trainable_spans(w.table());
    const std::vector<float> mult = lr_multipliers(oc, w.table());
    for (size_t i = 0; i < spans.size(); i++) {  // the tensor holding the piece's first element
      const size_t at = sync_->own_spans_flat()[i].offset;
      const auto it = std::upper_bound(whole.begin(), whole.end(), at,
                                       [](size_t a, const ParamSpan& s) { return a < s.offset; });
      spans[i].lr_mult = mult[size_t(it - whole.begin()) - 1];
    }
    opt_ = std::make_unique<AdamW>(oc, std::move(spans), sync_->shard_size(), w.device());
  }
  if (ctx.layout.ep > 1)
    experts_ = std::make_unique<ExpertAllToAll>(*ctx.coll, ctx.ep, c, w.dtype(), w.device());
  if (ctx.layout.pp > 1)
    pipe_ = std::make_unique<PipelineStage>(w, ctx.pp, *ctx.coll, ctx.pp_bounds,
                                            ctx.cfg.pp_schedule);
  if (ctx.layout.tp > 1) {
    tp_ = std::make_unique<TpComm>(*ctx.coll, ctx.tp);
    tp_->sequence_parallel = ctx.cfg.sp;
  }
  if (ctx.pp_overlap())  // every rank of a pipeline job decides alike (same flags, same MPI)
    pipe_->enable_overlap(ctx.coll->timeout(), experts_ ? &ctx.ep : nullptr,
                          tp_ ? &ctx.tp : nullptr, ctx.cfg.sp);
  rank_sec_.assign(size_t(ctx.layout.dp), 0.0);
  const std::vector<ParamSpan>& flat = sync_->own_spans_flat();
  for (size_t i = 0; i < flat.size(); i++) {
    const auto it = std::upper_bound(w.table().list.begin(), w.table().list.end(), flat[i].offset,
                                     [](size_t a, const ParamInfo& p) { return a < p.offset; });
    if (ctx.at.tp != 0 && tp_split_dim(std::prev(it)->name) < 0) continue;  // counted on tp 0
    norm_flat_.push_back(flat[i]);
    norm_shard_.push_back(sync_->own_spans_shard()[i]);
  }
}

ParallelStep::~ParallelStep() = default;

void ParallelStep::set_plan(BatchPlan p) {
  if (pipe_) pipe_->check_micros(p.micro);
  plan_ = std::move(p);
}

void ParallelStep::attach(Workspace& ws) {
  ws.set_expert_exchange(experts_.get());
  ws.set_tensor_parallel(tp_.get());
}

LossScaler& ParallelStep::scaler() { return single_ ? single_->scaler() : scaler_; }
int64_t ParallelStep::updates() const {
  return single_ ? single_->optimizer().updates() : opt_->updates();
}
void ParallelStep::set_updates(int64_t n) {
  if (single_) single_->optimizer().set_updates(n);
  else opt_->set_updates(n);
}
const Tensor& ParallelStep::grads() const { return single_ ? single_->grads() : grads_.view(); }
const ModelParams& ParallelStep::grad_view() const {
  return single_ ? single_->grad_view() : grad_view_;
}

void ParallelStep::load_local(const std::vector<float>& local) {
  if (single_) {
    single_->load_weights(local);
  } else {
    w_.load(local);
    const Exec ex{w_.device()};
    for (const GradSync::Piece& p : sync_->own())
      if (p.len > 0)
        backend::copy(ex, master_.view().slice(p.shard, p.len), host_tensor(local.data() + p.flat, p.len));
  }
  if (experts_) experts_->refresh_replicas(w_);  // EPLB replicas follow their homes
}

void ParallelStep::load_full(const std::vector<float>& full) {
  const ParamTable& t = w_.table();
  const int tp = ctx_.layout.tp, rank = ctx_.at.tp;
  if (!t.sharded() && t.parts.whole && tp == 1 && full.size() == t.total) return load_local(full);
  const ParamTable whole = build_param_table(ctx_.model);
  DSV3_CHECK(full.size() == whole.total, "internal: initial values do not fit the model");
  std::vector<float> local(t.total, 0.0f);
  for (const ParamInfo& p : t.list) {  // this rank's experts and tensor-parallel slices
    const float* src = full.data() + whole.at(p.name).offset;
    for_each_tp_run(p, rank, tp, [&](size_t wb, size_t lb, size_t n) {
      std::copy_n(src + wb, n, local.data() + p.offset + lb);
    });
  }
  load_local(local);
}

void ParallelStep::restore(const CheckpointReader& r) {
  const ParamTable& t = w_.table();
  const Exec ex{w_.device()};
  const int tp = ctx_.layout.tp, rank = ctx_.at.tp;
  // reads the part [lo, hi) of local tensor p (its tensor-parallel slice) into out
  const auto read = [&](const std::string& array, const ParamInfo& p, size_t lo, size_t hi,
                        float* out) {
    for_each_tp_run(p, rank, tp, lo, hi, [&](size_t wb, size_t lb, size_t n) {
      r.read(array, p.name, wb, n, out + (lb - lo));
    });
  };
  std::vector<float> local(t.total, 0.0f);
  for (const ParamInfo& p : t.list) read("params", p, 0, p.numel, local.data() + p.offset);
  load_local(local);
  const auto arrays = single_ ? single_->optimizer().state() : opt_->state();
  for (const auto& [name, tensor] : arrays) {
    DSV3_CHECK(r.has(name), "the checkpoint has no optimizer state '", name,
               "' (weights only, or another optimizer): it cannot be resumed");
    std::vector<float> host(tensor.numel, 0.0f);
    if (single_) {
      for (const ParamInfo& p : t.list)
        if (p.trainable()) read(name, p, 0, p.numel, host.data() + p.offset);
    } else {
      for (const GradSync::Piece& pc : sync_->own())
        for (const ParamInfo& p : t.list) {
          const size_t a = std::max(pc.flat, p.offset), b = std::min(pc.flat + pc.len, p.offset + p.numel);
          if (a < b && p.trainable())
            read(name, p, a - p.offset, b - p.offset, host.data() + pc.shard + (a - pc.flat));
        }
    }
    backend::copy(ex, tensor, host_tensor(host));
  }
}

Gradients ParallelStep::compute_gradients(Workspace& ws, const TrainingLossConfig& loss,
                                          const StepSettings& s, int64_t step,
                                          const MicroFn& micro,
                                          const std::vector<double>& share) {
  if (!ctx_.distributed()) return dsv3::compute_gradients(*single_, ws, loss, s, step, micro);
  dist::Collectives& coll = *ctx_.coll;
  dist::CommLedger& led = coll.ledger();
  led.clear();
  TrainingLossConfig l = loss;
  l.mtp_weight = step >= s.mtp_late_step ? s.mtp_weight_late : s.mtp_weight;
  const Exec ex{w_.device()};
  backend::zero(ex, grads());
  Gradients g;
  g.loss_scale = scaler().scale();
  const int A = int(share.size());
  double compute = 0;
  int rows = 0;
  // adds micro-batch a's report (this rank's part of it) to the step's
  const auto add = [&](int a, const LossReport& r) {
    const double w = share[size_t(a)];
    g.loss.loss += w * r.loss;
    g.loss.mtp_loss += w * r.mtp_loss;
    g.loss.balance_loss += w * r.balance_loss;
    g.loss.total += w * r.total;
    g.loss.distill_loss += w * r.distill_loss;
    g.loss.targets += r.targets;
    if (a == 0) {
      g.loss.moe = r.moe;
      for (MoeLayerStats& m : g.loss.moe) {
        m.balance_loss = m.entropy = 0;
        std::fill(m.loads.begin(), m.loads.end(), 0);
      }
    }
    for (size_t i = 0; i < r.moe.size(); i++) {
      for (size_t e = 0; e < r.moe[i].loads.size(); e++) g.loss.moe[i].loads[e] += r.moe[i].loads[e];
      g.loss.moe[i].balance_loss += w * r.moe[i].balance_loss;
      g.loss.moe[i].entropy += w * r.moe[i].entropy;
    }
  };
  if (pipe_) {  // every stage runs its part of every micro-batch in the schedule's order
    std::vector<float> scale(static_cast<size_t>(A));
    for (int a = 0; a < A; a++) scale[size_t(a)] = float(g.loss_scale * share[size_t(a)]);
    PipelineStage::Hooks hooks;
    hooks.before_backward = [&](int a) { sync_->begin_micro(a, A, grads()); };
    hooks.after_backward = [&](int) {
      sync_->part_done(c_.layers + 2);  // the stage's gradients of this micro-batch are final
      sync_->end_micro();
    };
    const double e0 = led.exposed_s;
    const std::vector<LossReport> reps =
        pipe_->run(ws.config(), experts_.get(), tp_.get(), l, grad_view(), micro, scale, hooks);
    led += pipe_->take_ledger();  // the overlap's own communicators (one per direction)
    for (int a = 0; a < A; a++) add(a, reps[size_t(a)]), rows += plan_.rows(ctx_.at.dp, a);
    compute = std::max(0.0, pipe_->stats().compute_s - (led.exposed_s - e0));
  }
  for (int a = 0; a < A && !pipe_; a++) {
    const double t0 = now_seconds(), e0 = led.exposed_s;
    const MicroBatch mb = micro(a);
    sync_->begin_micro(a, A, grads());
    const LossReport r = forward_backward(w_, ws, l, grad_view(), mb,
                                          float(g.loss_scale * share[size_t(a)]),
                                          [&](int k) { sync_->part_done(k); });
    sync_->end_micro();
    double dt = (now_seconds() - t0) - (led.exposed_s - e0);
    if (ctx_.rank == ctx_.cfg.debug_slow_rank && ctx_.cfg.debug_slowdown > 1) {
      // debug: this rank is a slower machine (docs/parallel.md "Balancing micro-batches")
      std::this_thread::sleep_for(std::chrono::duration<double>((ctx_.cfg.debug_slowdown - 1) * dt));
      dt *= ctx_.cfg.debug_slowdown;
    }
    compute += dt;
    rows += mb.d.B;
    add(a, r);
  }
  sync_->finish();
  const double sumsq = single_ ? sum_squares(ex, single_->grads(), norm_flat_)
                               : sum_squares(ex, sync_->shard_grads(), norm_shard_);
  // One all-reduce of everything the step reports: global loss, norm, loads; per-rank times.
  const size_t M = g.loss.moe.size(), E = size_t(c_.experts), DP = size_t(ctx_.layout.dp);
  const size_t kd = 6 + 2 * M + M * E + DP;  // the distillation loss, then the pipeline's times
  std::vector<double> v(kd + 4, 0.0);
  v[kd] = g.loss.distill_loss;
  const bool stage_head = ctx_.at.dp == 0 && ctx_.at.tp == 0;  // one rank per stage reports
  if (pipe_ && stage_head) {
    v[kd + 1] = pipe_->stats().idle_s, v[kd + 2] = pipe_->stats().wall_s;
    v[kd + 3] = pipe_->stats().overlap_s;
  }
  v[0] = g.loss.loss, v[1] = g.loss.mtp_loss, v[2] = g.loss.balance_loss, v[3] = g.loss.total;
  v[4] = double(g.loss.targets);
  for (size_t i = 0; i < M; i++) {
    v[6 + 2 * i] = g.loss.moe[i].balance_loss, v[7 + 2 * i] = g.loss.moe[i].entropy;
    for (size_t e = 0; e < E; e++) v[6 + 2 * M + i * E + e] = double(g.loss.moe[i].loads[e]);
  }
  if (ctx_.at.tp != 0) std::fill(v.begin(), v.end(), 0.0);  // the tp ranks' reports are equal
  v[5] = sumsq;
  if (ctx_.at.pp == 0 && ctx_.at.tp == 0)  // every stage and tp rank ran the same rows
    v[6 + 2 * M + M * E + size_t(ctx_.at.dp)] = rows > 0 ? compute / rows : 0;
  coll.run(coll.all_reduce(ctx_.world_group, dist::Purpose::Stats, v.data(), v.size(), DType::F64));
  g.loss.loss = v[0], g.loss.mtp_loss = v[1], g.loss.balance_loss = v[2], g.loss.total = v[3];
  g.loss.targets = int64_t(v[4]);
  g.loss.distill_loss = v[kd];
  pp_idle_ = v[kd + 1], pp_wall_ = v[kd + 2], pp_overlap_ = v[kd + 3];
  for (size_t i = 0; i < M; i++) {
    g.loss.moe[i].balance_loss = v[6 + 2 * i], g.loss.moe[i].entropy = v[7 + 2 * i];
    for (size_t e = 0; e < E; e++) g.loss.moe[i].loads[e] = int64_t(v[6 + 2 * M + i * E + e]);
  }
  for (size_t r = 0; r < DP; r++) {
    const double x = v[6 + 2 * M + M * E + r];
    rank_sec_[r] = rank_sec_[r] > 0 ? 0.5 * rank_sec_[r] + 0.5 * x : x;  // smoothed
  }
  g.grad_norm = std::sqrt(v[5]) / g.loss_scale;
  g.finite = std::isfinite(g.grad_norm) && std::isfinite(g.loss.total);
  return g;
}

double ParallelStep::apply_update(const StepSettings& s, int64_t step, const Gradients& g) {
  const double lr = update_weights(s, step, g);
  if (experts_) experts_->refresh_replicas(w_);  // EPLB replicas follow their homes
  return lr;
}

double ParallelStep::update_weights(const StepSettings& s, int64_t step, const Gradients& g) {
  if (single_) return dsv3::apply_update(*single_, s, step, g);
  const Exec ex{w_.device()};
  double factor = 1.0 / g.loss_scale;  // as step.cpp's apply_update
  const double clip = opt_->config().clip;
  if (clip > 0 && g.grad_norm > clip) factor *= clip / (g.grad_norm + 1e-6);
  const double lr = lr_at(s.schedule, step, s.total_steps);
  opt_->step(ex, master_.view(), sync_->shard_grads(), Tensor{}, lr, double(float(factor)));
  update_bias_sharded(g.loss.moe, s.bias_update_rate);
  for (const GradSync::Piece& p : sync_->own())
    if (p.len > 0) convert(ex, w_.data().slice(p.flat, p.len), master_.view().slice(p.shard, p.len));
  sync_->all_gather_params(w_.data());
  return lr;
}

void ParallelStep::update_bias_sharded(const std::vector<MoeLayerStats>& moe, double gamma) {
  if (gamma == 0 || c_.router != RouterKind::Sigmoid || c_.experts == 0) return;
  const Exec ex{w_.device()};
  const auto names = moe_layer_names(c_);
  Buffer loads(ex.device, DType::I64, size_t(c_.experts));
  for (size_t i = 0; i < moe.size(); i++) {
    const ParamInfo* pi = w_.table().find(routing_bias_name(c_, names[i]));
    if (!pi) continue;  // another pipeline stage's layer
    const ParamInfo& p = *pi;
    const Tensor bias = w_.buffers() ? w_.buffers().slice(p.buffer_offset, p.numel)
                                     : w_.data().slice(p.offset, p.numel);
    backend::copy(ex, loads.view(), host_tensor(moe[i].loads));  // global loads: same everywhere
    routing_bias_update(ex, bias, loads.view(), gamma);
    for (const GradSync::Piece& pc : sync_->own()) {  // the owner's master copy follows
      const size_t a = std::max(pc.flat, p.offset), b = std::min(pc.flat + pc.len, p.offset + p.numel);
      if (a < b)
        backend::copy(ex, master_.view().slice(pc.shard + (a - pc.flat), b - a),
                      bias.slice(a - p.offset, b - a));
    }
  }
}

ShardData ParallelStep::snapshot() const {
  DSV3_CHECK(sync_, "internal: snapshot of a one-process run (it writes a single file)");
  const Exec ex{w_.device()};
  const ParamTable& t = w_.table();
  ShardData d;
  const auto arrays = single_ ? single_->optimizer().state() : opt_->state();
  d.arrays.push_back("params");
  for (const auto& a : arrays) d.arrays.push_back(a.first);
  d.values.resize(d.arrays.size());
  const Tensor params = single_ ? single_->master() : master_.view();
  auto take = [&](size_t k, const Tensor& src, size_t at, size_t n) {
    std::vector<float>& out = d.values[k];
    const size_t old = out.size();
    out.resize(old + n);
    backend::copy(ex, host_tensor(out.data() + old, n), src.slice(at, n));
  };
  const int tp = ctx_.layout.tp, rank = ctx_.at.tp;
  for (const GradSync::Piece& pc : sync_->own())
    for (const ParamInfo& p : t.list) {
      const size_t a = std::max(pc.flat, p.offset), b = std::min(pc.flat + pc.len, p.offset + p.numel);
      if (a >= b) continue;
      if (rank != 0 && tp_split_dim(p.name) < 0) continue;  // replicated: tp rank 0 writes it
      // segments name ranges of the whole tensor: a tensor-parallel slice is one per row run
      for_each_tp_run(p, rank, tp, a - p.offset, b - p.offset, [&](size_t wb, size_t lb, size_t n) {
        d.segments.push_back({p.name, wb, n});
        const size_t at = single_ ? p.offset + lb : pc.shard + (p.offset + lb - pc.flat);
        take(0, params, at, n);
        for (size_t k = 0; k < arrays.size(); k++) take(k + 1, arrays[k].second, at, n);
      });
    }
  return d;
}

RankMemory ParallelStep::memory() const {
  RankMemory m;
  m.params = double(w_.table().total);
  m.weights = double(w_.bytes());
  const auto arrays = single_ ? single_->optimizer().state() : opt_->state();
  for (const auto& a : arrays) m.optimizer += double(a.second.bytes());
  if (single_) {
    m.grads = double(single_->grads().bytes());
    if (single_->master().data != w_.data().data) m.optimizer += double(single_->master().bytes());
  } else {
    m.grads = double(grads_.view().bytes() + (sync_->zero() > 0 ? sync_->shard_grads().bytes() : 0));
    m.optimizer += double(master_.view().bytes());
  }
  return m;
}

StepComm ParallelStep::last_comm() const {
  StepComm c;
  if (!ctx_.distributed()) return c;
  c.ledger = ctx_.coll->ledger();
  c.grad_wire_bytes = sync_->grad_wire_bytes();
  if (pipe_) {
    const int P = ctx_.layout.pp, M = pipe_->stats().micros;
    c.pp_idle_s = pp_idle_ / P;
    c.pp_bubble_fraction = pp_wall_ > 0 ? pp_idle_ / pp_wall_ : 0;
    c.pp_bubble_formula = ideal_bubble_fraction(pipe_->schedule(), P, M);
    c.pp_send_bytes = pipe_->stats().sent_bytes;
    c.pp_overlap_s = pp_overlap_ / P;
  }
  return c;
}

}  // namespace dsv3
