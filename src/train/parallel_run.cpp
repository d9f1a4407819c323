#include "train/parallel_run.h"

#include <csignal>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include <unistd.h>

#include "core/check.h"
#include "dist/eplb.h"
#include "model/params.h"
#include "train/expert_parallel.h"
#include "train/pipeline.h"

namespace dsv3 {

namespace {
std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}
std::string human_bytes(double b) {
  if (b >= 1e9) return fmt("%.2f GB", b / 1e9);
  if (b >= 1e6) return fmt("%.2f MB", b / 1e6);
  if (b >= 1e3) return fmt("%.1f kB", b / 1e3);
  return fmt("%.0f B", b);
}
}  // namespace

CheckpointReader checkpoint_reader(const Checkpoint& ck) {
  auto t = std::make_shared<ParamTable>(build_param_table(ck.config));
  CheckpointReader r;
  const auto array = [&ck](const std::string& a) -> const std::vector<float>* {
    if (a == "params") return &ck.params;
    if (a == "adam_m") return &ck.adam_m;
    if (a == "adam_v") return &ck.adam_v;
    return nullptr;
  };
  r.has = [array](const std::string& a) {
    const auto* v = array(a);
    return v && !v->empty();
  };
  r.read = [array, t](const std::string& a, const std::string& name, size_t begin, size_t count,
                      float* out) {
    const auto* v = array(a);
    DSV3_CHECK(v && !v->empty(), "the checkpoint has no '", a, "' values");
    const ParamInfo& p = t->at(name);
    DSV3_CHECK(begin + count <= p.numel, "internal: read past ", name);
    std::copy_n(v->data() + p.offset + begin, count, out);
  };
  return r;
}

CheckpointReader checkpoint_reader(const ShardedCheckpoint& sc) {
  CheckpointReader r;
  r.has = [&sc](const std::string& a) { return sc.has_array(a); };
  r.read = [&sc](const std::string& a, const std::string& name, size_t begin, size_t count,
                 float* out) { sc.read(a, name, begin, count, out); };
  return r;
}

Checkpoint sharded_checkpoint_state(const std::string& dir) {
  const ShardedCheckpoint sc(dir);
  Checkpoint ck;
  ck.config = sc.config();
  ck.train = sc.manifest().at("train");
  return ck;
}

nlohmann::json shard_manifest(const ModelConfig& c, const nlohmann::json& train,
                              const ParallelContext& ctx, int64_t step) {
  const dist::ParallelLayout& l = ctx.layout;
  return {{"step", step},
          {"model", fields_to_json(model_fields(), &c)},
          {"train", train},
          {"layout", {{"world", ctx.world}, {"dp", l.dp}, {"tp", l.tp}, {"pp", l.pp},
                      {"ep", l.ep}, {"zero", ctx.cfg.zero}}}};
}

nlohmann::json rank_memory_json(ParallelContext& ctx, const RankMemory& mine) {
  const double v[4] = {mine.params, mine.weights, mine.grads, mine.optimizer};
  std::vector<double> all(4 * size_t(ctx.world));
  ctx.coll->run(ctx.coll->all_gather(ctx.world_group, dist::Purpose::Stats, v, all.data(), 4,
                                     DType::F64));
  nlohmann::json out = nlohmann::json::array();
  for (int r = 0; r < ctx.world; r++) {
    const double* x = all.data() + 4 * size_t(r);
    out.push_back({{"rank", r}, {"pp", dist::rank_coords(ctx.layout, r).pp},
                   {"params", int64_t(x[0])}, {"weights_bytes", x[1]}, {"grads_bytes", x[2]},
                   {"optimizer_bytes", x[3]}, {"total_bytes", x[1] + x[2] + x[3]}});
  }
  return out;
}

std::string rank_memory_text(const nlohmann::json& ranks, double whole_params) {
  const nlohmann::json* top = nullptr;  // the rank holding the most
  for (const nlohmann::json& r : ranks)
    if (!top || r.at("total_bytes").get<double>() > top->at("total_bytes").get<double>()) top = &r;
  if (!top) return "";
  return "weights " + human_bytes(top->at("weights_bytes").get<double>()) + " + grads " +
         human_bytes(top->at("grads_bytes").get<double>()) + " + optimizer " +
         human_bytes(top->at("optimizer_bytes").get<double>()) + " = " +
         human_bytes(top->at("total_bytes").get<double>()) + " on the fullest rank (" +
         std::to_string(top->at("rank").get<int>()) + "), holding " +
         fmt("%.0f%%", 100 * top->at("params").get<double>() / std::max(whole_params, 1.0)) +
         " of the parameters";
}

void inject_rank_fault(const RankFault& f, const ParallelContext& ctx, int64_t step,
                       const std::string& run_dir) {
  if (f.kind == RankFault::None || f.rank != ctx.rank || f.step != step) return;
  const std::string marker = run_dir + "/.rank_fault_done";
  if (std::filesystem::exists(marker)) return;  // the restarted run gets past it
  std::ofstream(marker) << step << "\n";
  const bool stop = f.kind == RankFault::Stop;
  std::fprintf(stderr, "rank %d: --rank_fault %s this rank (%s) at step %lld\n", ctx.rank,
               stop ? "stops" : "kills", stop ? "SIGSTOP" : "SIGKILL", (long long)step);
  std::fflush(stderr);
  ::kill(::getpid(), stop ? SIGSTOP : SIGKILL);
}

void add_comm_metrics(nlohmann::json& rec, const StepComm& c, double step_s,
                      const ParallelStep& eng, const ParallelContext& ctx) {
  const dist::CommLedger& l = c.ledger;
  rec["compute_s"] = step_s - l.exposed_s;
  rec["comm_s"] = l.busy_s;
  rec["exposed_comm_s"] = l.exposed_s;
  rec["comm_bytes"] = l.to_json();
  nlohmann::json purpose = nlohmann::json::object();
  for (int p = 0; p < dist::kPurposes; p++)
    if (l.purpose_bytes[size_t(p)] > 0)
      purpose[dist::purpose_name(dist::Purpose(p))] = l.purpose_bytes[size_t(p)];
  rec["comm_purpose_bytes"] = purpose;
  rec["grad_wire_bytes"] = c.grad_wire_bytes;
  if (c.pp_bubble_fraction >= 0) {  // pipeline parallelism: the bubble, measured and predicted
    rec["pp_bubble_s"] = c.pp_idle_s;
    rec["pp_bubble_fraction"] = c.pp_bubble_fraction;
    rec["pp_bubble_formula"] = c.pp_bubble_formula;
    rec["pp_send_bytes"] = c.pp_send_bytes;
    if (ctx.pp_overlap()) rec["pp_overlap_s"] = c.pp_overlap_s;
  }
  if (ctx.cfg.balance_microbatches || ctx.cfg.debug_slow_rank >= 0) {
    rec["rank_sequences"] = eng.plan().count;
    rec["rank_sec_per_seq"] = eng.rank_seconds();
  }
}

std::string comm_console_text(const StepComm& c, double step_s) {
  return "comm " + human_bytes(c.ledger.total_bytes()) + ", exposed " +
         fmt("%.0f", 1000 * c.ledger.exposed_s) + " ms (" +
         fmt("%.0f%%", 100 * c.ledger.exposed_s / std::max(step_s, 1e-9)) + ")" +
         (c.pp_bubble_fraction >= 0 ? ", bubble " + fmt("%.0f%%", 100 * c.pp_bubble_fraction)
                                    : std::string());
}

EplbMonitor::EplbMonitor(ParallelContext& ctx, const ModelConfig& c, ExpertAllToAll* xc,
                         const ModelWeights& w)
    : ctx_(ctx), xc_(xc), w_(w), on_(ctx.cfg.eplb && c.experts > 0), every_(ctx.cfg.eplb_every),
      ranks_(std::max(ctx.layout.ep, 1)),
      redundant_(eplb_redundant_slots(ctx.cfg, ctx.layout.ep)) {}

nlohmann::json EplbMonitor::observe(int64_t steps_done, const std::vector<MoeLayerStats>& moe,
                                    const std::vector<std::string>& names) {
  if (!on_) return nullptr;
  loads_.resize(moe.size());
  for (size_t i = 0; i < moe.size(); i++) {
    loads_[i].resize(moe[i].loads.size(), 0.0);
    for (size_t e = 0; e < moe[i].loads.size(); e++) loads_[i][e] += double(moe[i].loads[e]);
  }
  if (steps_done % every_ != 0) return nullptr;
  // what each rank computed since the last placement (every rank takes part)
  const auto rows = xc_ ? xc_->take_dispatched_rows(ctx_.world_group)
                        : std::vector<std::vector<double>>{};
  nlohmann::json layers = nlohmann::json::array();
  std::vector<dist::ExpertPlacement> placement;
  for (size_t i = 0; i < loads_.size(); i++) {
    const auto& load = loads_[i];
    const dist::ExpertPlacement home = dist::home_placement(int(load.size()), ranks_);
    placement.push_back(dist::eplb_place_on_homes(load, ranks_, redundant_));
    const dist::ExpertPlacement& p = placement.back();
    nlohmann::json l = {{"layer", names[i]},
                        {"imbalance_before", dist::imbalance(dist::rank_loads(home, load))},
                        {"imbalance_after", dist::imbalance(dist::rank_loads(p, load))},
                        {"replicas", p.replicas},
                        {"placement", p.phy2log}};
    if (i < rows.size()) {
      l["dispatched_rows"] = rows[i];
      l["imbalance_measured"] = dist::imbalance(rows[i]);
    }
    layers.push_back(l);
  }
  for (auto& l : loads_) std::fill(l.begin(), l.end(), 0.0);
  if (xc_) xc_->set_placement(placement, w_);  // every rank the same: the loads are global
  return {{"kind", "eplb"}, {"step", steps_done}, {"ranks", ranks_}, {"redundant", redundant_},
          {"applied", xc_ != nullptr}, {"layers", layers}};
}

namespace {
// The evaluation parts (sums) of a group's ranks as one result (means over the batches).
EvalResult mean_of_parts(ParallelContext& ctx, dist::Group& g, const EvalResult& part) {
  double v[4] = {part.loss, part.mtp_loss, double(part.tokens), double(part.batches)};
  ctx.coll->run(ctx.coll->all_reduce(g, dist::Purpose::Stats, v, 4, DType::F64));
  EvalResult r;
  r.batches = int(v[3]);
  r.tokens = int64_t(v[2]);
  if (r.batches > 0) r.loss = v[0] / r.batches, r.mtp_loss = v[1] / r.batches;
  return r;
}

// evaluate_part (eval/eval.h) with each batch a pipeline forward: rank dp of the data-parallel
// group runs batches dp, dp + DP, ...; only the last stage's tp rank 0 reports.
EvalResult evaluate_pipeline(ParallelContext& ctx, PipelineStage& pipe, Workspace& ws,
                             const std::vector<int32_t>& tokens, Dims d, int max_batches) {
  const int nb = eval_batches_of(tokens, d, max_batches), DP = ctx.layout.dp;
  // every rank of an expert-parallel group runs as many passes (padding repeats batch 0)
  const int passes = ctx.layout.ep > 1 ? (nb + DP - 1) / DP : 0;
  EvalResult part = evaluate_part(
      [&](const MicroBatch& mb) {
        return pipe.forward_only(ws.config(), ws.expert_exchange(), ws.tensor_parallel(), mb);
      },
      tokens, d, max_batches, ctx.at.dp, DP, passes);
  if (ctx.at.pp != ctx.layout.pp - 1 || ctx.at.tp != 0) part = {};  // one rank per pipeline reports
  pipe.finish_forwards();
  return mean_of_parts(ctx, ctx.world_group, part);
}
}  // namespace

EvalResult evaluate_parallel(ParallelContext& ctx, const ModelWeights& w, Workspace& ws,
                             const std::vector<int32_t>& tokens, Dims d, int max_batches,
                             PipelineStage* pipe) {
  if (pipe) return evaluate_pipeline(ctx, *pipe, ws, tokens, d, max_batches);
  if (!ctx.distributed() || ctx.layout.dp == 1) return evaluate(w, ws, tokens, d, max_batches);
  const int dp = ctx.layout.dp, nb = eval_batches_of(tokens, d, max_batches);
  const int passes = ctx.layout.ep > 1 ? (nb + dp - 1) / dp : 0;
  const EvalResult part = evaluate_part(w, ws, tokens, d, max_batches, ctx.at.dp, dp, passes);
  return mean_of_parts(ctx, ctx.dp, part);
}

std::string eplb_console_text(const nlohmann::json& rec) {
  double before = 0, after = 0, measured = 0;
  for (const auto& l : rec.at("layers")) {
    before = std::max(before, l.at("imbalance_before").get<double>());
    after = std::max(after, l.at("imbalance_after").get<double>());
    measured = std::max(measured, l.value("imbalance_measured", 0.0));
  }
  return "eplb step " + std::to_string(rec.at("step").get<long long>()) + ": " +
         std::to_string(rec.at("redundant").get<int>()) + " replicas over " +
         std::to_string(rec.at("ranks").get<int>()) + " ranks, per-rank load max/mean " +
         fmt("%.3f", before) + " -> " + fmt("%.3f", after) + " planned, " + fmt("%.3f", measured) +
         " measured since the last placement (worst layer)";
}

}  // namespace dsv3
