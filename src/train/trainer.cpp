#include "train/trainer.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <optional>

#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "dist/agree.h"
#include "dist/comm.h"
#include "eval/eval.h"
#include "infer/sample.h"
#include "ops/gemm.h"
#include "tokenizer/text_codec.h"
#include "checkpoint/sharded.h"
#include "train/checkpointing.h"
#include "train/metrics.h"
#include "train/run_dir.h"
#include "train/parallel_run.h"
#include "train/pipeline.h"
#include "train/state.h"
#include "train/step.h"
#include "train/train_data.h"

namespace dsv3 {

namespace {

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// The groups a checkpoint stores (everything but the model, which has its own section).
std::vector<FieldGroup> saved_groups(RunSpec& s) { return run_groups_without_model(s); }

}  // namespace

nlohmann::json run_state_json(const RunSpec& spec, const RunState& st) {
  RunSpec copy = spec;
  return {{"run_id", st.run_id},
          {"steps_done", st.steps_done},
          {"rng", {st.rng.s[0], st.rng.s[1], st.rng.s[2], st.rng.s[3]}},
          {"data", st.data},
          {"tokens_seen", st.tokens_seen},
          {"attempts", st.attempts},
          {"optimizer_updates", st.updates},
          {"loss_scaler", st.loss_scaler},
          {"guard", st.guard},
          {"settings", groups_to_json(saved_groups(copy))}};
}

RunSpec spec_from_checkpoint(const Checkpoint& ck) {
  RunSpec s;
  s.model = ck.config;
  auto groups = saved_groups(s);
  if (ck.train.contains("settings")) {
    groups_from_json(groups, ck.train["settings"], "checkpoint settings");
  } else {
    // Before the per-component configs: one "train_config" object (every setting by its name)
    // and "loss_config". Each key goes to the group that owns it now.
    DSV3_CHECK(ck.train.contains("train_config") && ck.train.contains("loss_config"),
               "checkpoint has no training state (weights only): it cannot be resumed");
    fields_from_json(loss_fields(), &s.loss, ck.train["loss_config"], "checkpoint loss_config");
    const auto& tc = ck.train["train_config"];
    DSV3_CHECK(tc.is_object(), "checkpoint train_config is not an object");
    for (auto it = tc.begin(); it != tc.end(); ++it) {
      const FieldGroup* g = nullptr;
      DSV3_CHECK(find_field(groups, it.key(), &g), "checkpoint train_config: unknown key '",
                 it.key(), "'");
      fields_from_json(*g->fields, g->target, nlohmann::json{{it.key(), it.value()}},
                       "checkpoint train_config");
    }
  }
  s.checkpoint.resume.clear();
  s.checkpoint.overwrite = false;  // permission to delete is given per command, never inherited
  return s;
}

namespace {

// A counter of the train state: a non-negative integer (`fallback` when absent and allowed).
int64_t state_count(const nlohmann::json& train, const char* key, const int64_t* fallback) {
  if (!train.contains(key)) {
    DSV3_CHECK(fallback, "checkpoint train state has no '", key, "'");
    return *fallback;
  }
  const nlohmann::json& v = train.at(key);
  DSV3_CHECK(v.is_number_integer() && (v.is_number_unsigned() || v.get<int64_t>() >= 0) &&
                 (!v.is_number_unsigned() || v.get<uint64_t>() <= uint64_t(INT64_MAX)),
             "checkpoint train state: '", key, "' must be a non-negative integer, got ",
             quote_bytes(v.dump(), 60));
  return v.get<int64_t>();
}

}  // namespace

RunState state_from_checkpoint(const Checkpoint& ck) {
  RunState st;
  DSV3_CHECK(ck.train.is_object() && ck.train.contains("steps_done"),
             "checkpoint has no training state (weights only): it cannot be resumed");
  const nlohmann::json& t = ck.train;
  st.steps_done = state_count(t, "steps_done", nullptr);
  const int64_t zero = 0;
  st.tokens_seen = uint64_t(state_count(t, "tokens_seen", &zero));
  st.attempts = state_count(t, "attempts", &st.steps_done);
  st.updates = state_count(t, "optimizer_updates", &st.steps_done);  // older files: no skips
  DSV3_CHECK(st.attempts >= st.steps_done && st.updates <= st.steps_done,
             "checkpoint train state is inconsistent: ", st.steps_done, " steps done, ",
             st.attempts, " attempts, ", st.updates, " optimizer updates");
  for (const char* key : {"data", "loss_scaler", "guard"})
    DSV3_CHECK(!t.contains(key) || t.at(key).is_object() || t.at(key).is_null(),
               "checkpoint train state: '", key, "' must be an object, got ",
               quote_bytes(t.at(key).dump(), 60));
  st.data = t.value("data", nlohmann::json());
  st.loss_scaler = t.value("loss_scaler", nlohmann::json());
  st.guard = t.value("guard", nlohmann::json());
  if (t.contains("run_id")) {
    DSV3_CHECK(t.at("run_id").is_string(), "checkpoint train state: 'run_id' must be a string");
    st.run_id = t.at("run_id").get<std::string>();
  }
  DSV3_CHECK(t.contains("rng"), "checkpoint train state has no 'rng'");
  const auto& r = t.at("rng");
  DSV3_CHECK(r.is_array() && r.size() == 4 &&
                 std::all_of(r.begin(), r.end(),
                             [](const nlohmann::json& w) { return w.is_number_unsigned(); }),
             "checkpoint rng state is malformed (expected 4 unsigned 64-bit words)");
  for (int i = 0; i < 4; i++) st.rng.s[i] = r[i].get<uint64_t>();
  DSV3_CHECK(st.rng.s[0] | st.rng.s[1] | st.rng.s[2] | st.rng.s[3],
             "checkpoint rng state is all zero (xoshiro cannot leave that state)");
  return st;
}

void run_training(const RunSpec& spec, const Checkpoint* resume) {
  validate(spec);
  const ModelConfig& c = spec.model;
  const RunConfig& rc = spec.run;
  // The layout, this rank's groups and experts (P1-P3); a world of one is the plain loop.
  const auto par = make_parallel_context(spec.parallel, spec.distributed, c, rc.dims().T);
  const bool root = par->root(), distributed = par->distributed();
  const Device device = parse_device(rc.device);
  DSV3_CHECK(backend::available(device), "device ", rc.device, " requested but ",
             backend::describe(device));
  // ParallelStep's collectives are MPI on host buffers; NcclComm (dist/comm_nccl.h) exists but
  // the training step is not wired to it yet (docs/cuda.md)
  DSV3_CHECK(device == Device::CPU || !distributed, "--device ", rc.device, " trains in one "
             "process for now: data/expert parallelism over NCCL is not wired into training yet");
  const Exec ex{device};
  const DType dtype = compute_dtype(spec.precision.precision);
  const Dims d = rc.dims();  // one micro-batch: at most `batch` rows
  // The global batch (sequences per step over all ranks) and this rank's share of it.
  const int G = spec.distributed.global_batch > 0 ? int(spec.distributed.global_batch)
                                                  : rc.batch * rc.grad_accum * par->layout.dp;
  DSV3_CHECK(spec.distributed.global_batch == 0 || rc.grad_accum == 1 ||
                 G == rc.batch * rc.grad_accum * par->layout.dp,
             "--global_batch ", G, " and --grad_accum ", rc.grad_accum, " disagree (batch ",
             rc.batch, " x grad_accum x dp ", par->layout.dp, "): give one of them");

  // ---- the run directory, held by rank 0: locked for this run, holding nothing of another
  // run. Every rank learns whether rank 0 could take it (dist/agree.h) and the run's id.
  RunOrigin origin;
  if (resume) {
    try {
      const RunState saved = state_from_checkpoint(*resume);
      origin = {spec.checkpoint.resume, saved.run_id, saved.steps_done};
    } catch (const Error& e) {
      fail(spec.checkpoint.resume, ": ", e.what());
    }
  } else {
    origin.run_id = root ? new_run_id() : "";
    dist::world().broadcast_bytes(origin.run_id, 0);
  }
  std::optional<RunDirectory> run_dir;
  dist::agree(dist::world(), [&] {
    if (root) run_dir.emplace(rc.out, origin, spec.checkpoint.overwrite);
  });

  // Batch-size ramp (T2): a step's global batch is `ramp_unit` rows (one micro-batch on every
  // data-parallel rank) times accum_at(...) <= A, so every rank keeps whole micro-batches.
  const bool ramp = spec.schedule.batch_ramp_tokens > 0;
  const int ramp_unit = d.B * par->layout.dp;
  const int A = G / ramp_unit;
  DSV3_CHECK(!ramp || G % ramp_unit == 0, "--batch_ramp_tokens: the global batch ", G,
             " must be a whole number of micro-batches of ", d.B, " rows on each of ",
             par->layout.dp, " data-parallel ranks");
  DSV3_CHECK(!ramp || spec.schedule.batch_ramp_start < A, "a batch-size ramp grows the "
             "micro-batches per step on each rank from batch_ramp_start (",
             spec.schedule.batch_ramp_start, ") to ", A, " (the global batch ", G, " / ", d.B,
             " rows / ", par->layout.dp,
             " ranks): lower --batch_ramp_start or raise --grad_accum (or --global_batch)");
  const auto global_rows_at = [&](uint64_t tokens_seen) {
    return ramp ? ramp_unit * accum_at(spec.schedule, A, tokens_seen) : G;
  };

  // ---- data: every rank reads the same global batch and runs its rows. The loaders hand out
  // one stream of rows whatever their batch size, so reading a ramped batch in units of
  // ramp_unit rows keeps the data order of the run.
  TrainData data(spec.data, Dims{ramp ? ramp_unit : G, d.T}, uint64_t(rc.seed), c);
  if (!data.tokenizer_path().empty() && root) {  // sample and eval find it beside the checkpoints
    const std::string bytes = read_file(data.tokenizer_path());
    write_file_atomic(rc.out + "/tokenizer.dsv3tok",
                      [&](std::FILE* f) { write_bytes(f, bytes.data(), bytes.size()); });
  }

  // ---- weights (this rank's experts), training state, workspace
  // (tensor parallelism: this rank's slices, model/tensor_parallel.h; c stays the whole model)
  const ModelConfig lc = par->local_model();
  DSV3_CHECK(par->layout.tp == 1 || (spec.compress.teacher.empty() && !spec.compress.qat),
             "--tp ", par->layout.tp, " with distillation or --qat is not supported (both need "
             "whole logits or whole weight rows on one rank): use --tp 1");
  ModelWeights weights(lc, dtype, device, par->shard, QuantScheme::None, par->parts);
  AdamWConfig opt = spec.optimizer;
  opt.noise_seed = uint64_t(rc.seed) ^ 0x6e6f697365ull;  // gradient noise differs per run seed
  ParallelStep eng(*par, weights, opt, spec.precision, lc, spec.compress.qat);
  eng.set_plan(even_plan(G, par->layout.dp, d.B));
  WorkspaceConfig wc;
  wc.max = d;
  wc.recompute = rc.recompute;
  wc.cuda_graphs = rc.cuda_graphs;
  wc.soft_targets = !spec.compress.teacher.empty();
  wc.sequence_parallel = spec.distributed.sp;
  DSV3_CHECK(!spec.distributed.sp || d.N() % par->layout.tp == 0, "--sp splits the ", d.N(),
             " rows of a micro-batch (batch x seq_len) over ", par->layout.tp, " tp ranks: "
             "choose a batch or seq_len that makes it a multiple of ", par->layout.tp);
  gemm_allow_tf32(spec.precision.tf32);
  // A pipeline rank's passes run in its stage's own workspaces (train/pipeline.h): this one
  // only carries the settings and hooks, so it holds no layers.
  const PipelineStage* const pipe = eng.pipeline();
  WorkspaceConfig carrier = wc;
  carrier.layer_begin = carrier.layer_end = 0, carrier.embed = carrier.head = false;
  Workspace ws(lc, dtype, device, pipe ? carrier : wc);
  eng.attach(ws);
  const size_t activation_bytes = pipe ? pipe->activation_bytes(wc, eng.plan().micro) : ws.bytes();
  std::unique_ptr<Teacher> teacher;  // distillation (I5): its own weights and workspace
  if (!spec.compress.teacher.empty()) {
    teacher = std::make_unique<Teacher>(spec.compress.teacher, c, dtype, device, d,
                                        spec.compress.distill_alpha, spec.compress.distill_temp);
    check_same_tokenizer(spec.compress.teacher, data.tokenizer_path());
  }
  Guard guard(spec.guard);
  RunState rs;
  rs.rng = Rng(uint64_t(rc.seed) ^ 0x5eed5eed5eedull);
  rs.run_id = origin.run_id;
  // ck: the checkpoint's config and train state (with the values for a single file);
  // path: where the values are (a sharded checkpoint directory is read by name).
  auto restore = [&](const Checkpoint& ck, const std::string& path, bool data_too) {
    check_resume_optimizer(spec.optimizer, ck.train);
    if (!distributed && !is_sharded_checkpoint(path)) {
      TrainState& st = *eng.single();
      DSV3_CHECK(ck.params.size() == weights.table().total, "checkpoint has ", ck.params.size(),
                 " parameters, the model ", weights.table().total);
      DSV3_CHECK(!ck.adam_m.empty(), "checkpoint has no optimizer state: cannot resume");
      st.load_weights(ck.params);
      st.load_moments(ck.adam_m, ck.adam_v);
    } else if (is_sharded_checkpoint(path)) {
      const ShardedCheckpoint sc(path);
      eng.restore(checkpoint_reader(sc));
    } else {
      eng.restore(checkpoint_reader(ck));
    }
    const RunState saved = state_from_checkpoint(ck);
    rs.steps_done = saved.steps_done;
    rs.tokens_seen = saved.tokens_seen;
    rs.rng = saved.rng;
    eng.set_updates(saved.updates);
    // A type the state's own checks did not expect still gets a message naming the checkpoint
    // rather than the JSON library's alone.
    try {
      eng.scaler().restore(saved.loss_scaler);
      if (data_too) {  // a resume; a rollback keeps the data moving past the bad batches
        data.restore(saved.data);
        rs.attempts = saved.attempts;
        guard.restore(saved.guard);
      }
    } catch (const nlohmann::json::exception& e) {
      fail("checkpoint train state is malformed: ", json_error_text(e));
    }
  };
  // Where a rollback returns to: the last checkpoint this run saved or started from (never some
  // other file in the directory: an older run's, or a later one than where this run began).
  std::string last_good = resume ? spec.checkpoint.resume : "";
  if (resume) {
    restore(*resume, spec.checkpoint.resume, true);
    DSV3_CHECK(rs.steps_done < rc.steps, "checkpoint is at step ", rs.steps_done, " and the run has ",
               rc.steps, " steps: nothing to do (raise --steps)");
  } else if (!spec.compress.init_from.empty()) {  // weights only: fresh optimizer, step 0
    eng.load_full(init_from_weights(spec.compress.init_from, c));
  } else {  // the whole model's initial values, then this rank's part: the same on any layout
    const ParamTable whole = build_param_table(c);
    std::vector<float> init(whole.total);
    init_params(c, whole, init.data(), uint64_t(rc.seed));
    eng.load_full(init);
  }

  // what each rank holds of weights, gradients and optimizer state (collective)
  const nlohmann::json rank_memory = rank_memory_json(*par, eng.memory());
  const ModelStats ms = model_stats(c, d.T);
  double peak = rc.peak_gflops > 0 ? rc.peak_gflops : root ? measure_gemm_peak_gflops(device, dtype) : 1;
  const double tokens_per_step = double(G) * d.T;
  if (root) {
    std::fprintf(stderr,
                 "dsv3 train: %.2fM params (%.2fM active), %d layers, %d experts top-%d, MTP %d\n"
                 "  data: %s\n  global batch %d x %d = %.0f tokens/step (micro-batch %d, %d per "
                 "rank), %lld steps, %d threads, %s (%s GEMM peak %.1f GFLOP/s), recompute %s, "
                 "activations %.1f MiB\n",
                 ms.params / 1e6, ms.active_params / 1e6, c.layers, c.experts, c.topk, c.mtp_depth,
                 data.describe().c_str(), G, d.T, tokens_per_step, d.B, eng.plan().micro, rc.steps,
                 omp_get_max_threads(), precision_name(spec.precision.precision), dtype_name(dtype),
                 peak, recompute_name(rc.recompute), activation_bytes / 1048576.0);
    if (distributed) std::fprintf(stderr, "  parallel: %s\n", par->describe().c_str());
    std::fprintf(stderr, "  state: %s\n",
                 rank_memory_text(rank_memory, double(build_param_table(c).total)).c_str());
    if (resume) std::fprintf(stderr, "  resuming at step %lld\n", (long long)rs.steps_done);
    else if (!spec.compress.init_from.empty())
      std::fprintf(stderr, "  weights from %s\n", spec.compress.init_from.c_str());
    if (teacher)
      std::fprintf(stderr, "  distilling from %s (alpha %g, T %g)\n", teacher->source().c_str(),
                   spec.compress.distill_alpha, spec.compress.distill_temp);
    if (spec.compress.qat) std::fprintf(stderr, "  quantisation-aware: int8 weights in the forward\n");
  }

  // Only rank 0 writes metrics and the console line; every rank's errors reach the console.
  std::optional<MetricsLog> log;
  if (root) log.emplace(rc.out + "/metrics.jsonl", spec.metrics.tensorboard ? rc.out : "");
  const auto record = [&](const nlohmann::json& j) {
    if (log) log->write(j);
  };
  {  // where this process starts (a resumed run's records past its checkpoint were moved to
     // metrics_replayed.jsonl by the RunDirectory, so each step has one record)
    RunSpec copy = spec;
    record({{"kind", "start"}, {"step", rs.steps_done}, {"settings", groups_to_json(run_groups(copy))},
            {"rank_memory", rank_memory}});
  }
  ProgressLine progress(rc.steps);
  const auto say = [&](const std::string& line) {
    if (root) progress.print(line);
  };
  const StepSettings ss = step_settings(eng.plan().micro, spec.schedule, rc.steps, spec.loss);
  const auto names = moe_layer_names(c);
  double window_time = 0, window_tokens = 0;
  bool warned_peak = false;
  std::optional<ShardedSaver> saver;
  if (distributed) {
    saver.emplace(*par, rc.out, spec.checkpoint.keep);
    if (run_dir)  // rank 0 rotates only this run's checkpoints
      saver->set_prune([&](const std::string& dir) { run_dir->saved(dir, spec.checkpoint.keep); });
  }
  const RankFault fault = parse_rank_fault(spec.distributed.rank_fault);
  EplbMonitor eplb(*par, c, eng.experts(), weights);

  auto run_eval = [&](int64_t step) {
    if (data.val_sets().empty() || spec.eval.eval_batches == 0) return;
    const double t0 = now_seconds();
    std::vector<double> losses;
    double sum = 0;
    int64_t tokens = 0;
    std::string line = "eval step " + std::to_string(step) + ":";
    for (const ValSet& v : data.val_sets()) {
      // the dp ranks split the batches (the ep group runs each forward together); rank 0 reports
      const EvalResult e = evaluate_parallel(*par, weights, ws, v.tokens, d, spec.eval.eval_batches,
                                              eng.pipeline());
      losses.push_back(e.loss);
      sum += e.loss * double(e.tokens), tokens += e.tokens;
      nlohmann::json rec = {{"kind", "eval"}, {"step", step}, {"domain", v.domain},
                            {"val_loss", e.loss}, {"val_mtp_loss", e.mtp_loss},
                            {"val_tokens", e.tokens}, {"val_ppl", std::exp(e.loss)}};
      line += " " + v.domain + " " + fmt("%.4f", e.loss);
      if (v.bytes_per_token > 0) {  // bits per byte: nats/token / ln 2 / (bytes/token)
        const double bpb = e.loss / std::log(2.0) / v.bytes_per_token;
        rec["val_bpb"] = bpb;
        line += " (" + fmt("%.3f", bpb) + " bpb)";
      }
      record(rec);
    }
    if (data.val_sets().size() > 1)  // the token-weighted mean over domains
      record({{"kind", "eval"}, {"step", step}, {"domain", "all"},
              {"val_loss", tokens > 0 ? sum / double(tokens) : 0.0}, {"val_tokens", tokens}});
    if (const nlohmann::json mix = data.observe_validation(losses); !mix.is_null()) {
      record({{"kind", "mixture"}, {"step", step}, {"mixture", mix}});
      line += " | weights " + mix.at("weights").dump();
    }
    say(line + fmt(" (%.1fs)", now_seconds() - t0));
  };
  auto save = [&]() {
    rs.data = data.state();
    rs.loss_scaler = eng.scaler().state();
    rs.guard = guard.state();
    rs.updates = eng.updates();
    if (distributed) {  // every rank its shard, in the background; committed by poll()
      saver->save(rs.steps_done, eng.snapshot(),
                  shard_manifest(c, run_state_json(spec, rs), *par, rs.steps_done));
      return;
    }
    TrainState& st = *eng.single();
    const std::string path = checkpoint_path(rc.out, rs.steps_done);
    const std::vector<float> p = st.master_host(), m = st.m_host(), v = st.v_host();
    save_checkpoint(path, c, run_state_json(spec, rs), p.data(), m.data(), v.data(), p.size());
    run_dir->saved(path, spec.checkpoint.keep);
    last_good = path;
    say("saved " + path);
  };
  auto committed = [&](const std::string& dir) {
    if (dir.empty()) return;
    last_good = dir;
    say("saved " + dir);
  };
  auto rollback = [&](int64_t at_step) {
    if (saver) committed(saver->flush());
    DSV3_CHECK(!last_good.empty(), "training diverged at step ", at_step, ": ", guard.bad_streak(),
               " bad steps in a row and no checkpoint to roll back to (lower --lr, raise "
               "--warmup, or save earlier with --save_every)");
    const Checkpoint ck = is_sharded_checkpoint(last_good) ? sharded_checkpoint_state(last_good)
                                                           : load_checkpoint(last_good);
    restore(ck, last_good, false);
    guard.rolled_back(at_step);
    record({{"kind", "rollback"}, {"step", at_step}, {"to_step", rs.steps_done},
            {"checkpoint", last_good}, {"attempts", rs.attempts}});
    say("guard: " + std::to_string(spec.guard.max_bad_steps) +
        " bad steps in a row; rolled back to " + last_good +
        ", continuing with the data after the offending batches");
  };

  std::vector<int32_t> split_rows;  // this rank's rows (split for sequence-length warmup)
  std::vector<int32_t> ramp_rows;   // a ramped global batch, gathered from several reads
  const double run_t0 = now_seconds();
  while (rs.steps_done < rc.steps) {
    const int64_t step = rs.steps_done;
    inject_rank_fault(fault, *par, step + 1, rc.out);
    const double t0 = now_seconds();
    data.set_step(step, rc.steps);
    // sequence-length warmup: each loader row of T+1 tokens becomes k rows of T/k + 1
    const int k = spec.data.seq_split(step, d.T);
    const int Gt = global_rows_at(rs.tokens_seen);  // G, or less while the batch ramps up
    if (eng.plan().global != Gt) eng.set_plan(even_plan(Gt, par->layout.dp, d.B));
    const BatchPlan& plan = eng.plan();
    const int32_t* batch = data.next();  // the global batch (Gt, T+1)
    if (ramp) {  // Gt / ramp_unit reads of ramp_unit rows
      ramp_rows.resize(size_t(Gt) * (d.T + 1));
      const size_t unit = size_t(ramp_unit) * (d.T + 1);
      for (int u = 0; u < Gt / ramp_unit; u++)
        std::copy_n(u == 0 ? batch : data.next(), unit, ramp_rows.data() + size_t(u) * unit);
      batch = ramp_rows.data();
    }
    std::vector<MicroBatch> micro;
    std::vector<double> share;
    split_rows.resize(size_t(plan.count[size_t(par->at.dp)]) * k * (d.T / k + 1));
    size_t at = 0;
    for (int a = 0; a < plan.micro; a++) {
      const int rows = plan.rows(par->at.dp, a), first = plan.first_row(par->at.dp, a);
      const Dims ds{rows * k, d.T / k};
      int32_t* out = split_rows.data() + at;
      for (int b = 0; b < rows; b++)
        for (int j = 0; j < k; j++)
          std::copy_n(batch + size_t(first + b) * (d.T + 1) + size_t(j) * ds.T, ds.T + 1,
                      out + (size_t(b) * k + j) * (ds.T + 1));
      at += size_t(ds.B) * (ds.T + 1);
      micro.push_back({ds, out});
      share.push_back(double(rows) / Gt);
    }
    const Dims ds = micro.front().d;
    const int64_t attempt = ++rs.attempts;
    StepSettings sstep = ss;  // this step's micro-batches (the batch ramp changes them)
    sstep.grad_accum = plan.micro;
    const double step_tokens = double(Gt) * d.T;
    // the teacher's pass over a micro-batch right before the student's (one buffer of soft targets)
    const MicroFn micro_at = [&](int a) {
      MicroBatch mb = micro[size_t(a)];
      if (teacher) mb.soft = teacher->run(mb);
      return mb;
    };
    Gradients g = eng.compute_gradients(ws, spec.loss, sstep, step, micro_at, share);
    switch (guard.fault_at(attempt)) {  // fault injection (GuardConfig::inject_fault)
      case Fault::Nan: {
        g.loss.loss = g.loss.total = NAN;
        g.grad_norm = NAN;
        g.finite = false;
        if (TrainState* st = eng.single(); st && !distributed) {
          const float nan = NAN;
          backend::copy(ex, st->grads().slice(0, 1), host_tensor(&nan, 1));
        }
        break;
      }
      case Fault::Spike: g.loss.loss *= 4, g.loss.total *= 4; break;
      case Fault::None: break;
    }
    // fp16 gradient overflow (finite loss): the loss scaler skips the step and lowers the scale.
    // Anything else not finite, or a spike, is the guard's. Loss and norm are global, so every
    // rank decides the same.
    std::string why;
    const bool overflow = eng.scaler().enabled() && std::isfinite(g.loss.total) &&
                          !std::isfinite(g.grad_norm);
    if (overflow) {
      eng.scaler().update(false);
      why = "fp16 overflow (loss scale now " + fmt("%g", eng.scaler().scale()) + ")";
    } else {
      why = guard.assess(g.loss.total, g.grad_norm);
      if (!spec.guard.guard && !std::isfinite(g.loss.total))
        fail("loss is ", g.loss.total, " at step ", step + 1,
             ": training diverged (lower --lr, or check the data; --guard true skips such steps)");
    }
    double lr = lr_at(spec.schedule, step, rc.steps);
    if (why.empty()) {
      eng.scaler().update(true);
      lr = eng.apply_update(sstep, step, g);
      guard.accepted(g.loss.total);
    } else if (!overflow) {
      guard.rejected();
    }
    const StepResult r = step_result(g, lr, why.empty(), why);
    rs.steps_done++;
    const double dt = now_seconds() - t0;
    const StepComm comm = eng.last_comm();
    rs.tokens_seen += uint64_t(step_tokens);
    window_time = 0.8 * window_time + dt, window_tokens = 0.8 * window_tokens + step_tokens;
    const double tps = step_tokens / dt;
    const double achieved = tps / par->world * ms.train_flops_per_token / 1e9;  // per rank
    if (achieved > peak && !warned_peak && rc.peak_gflops == 0 && root) {
      // a slow spell of a shared machine during the measurement: measure again, keep the better
      peak = std::max(peak, measure_gemm_peak_gflops(device, dtype));
      if (achieved > peak) {
        warned_peak = true;
        say("warning: achieved " + fmt("%.1f", achieved) + " GFLOP/s exceeds the measured peak " +
            fmt("%.1f", peak) + " even after measuring again; MFU overstates (set --peak_gflops)");
      }
    }
    const double mfu = achieved / peak;
    double load_max = 0;
    nlohmann::json loads = nlohmann::json::array();
    for (size_t i = 0; i < r.load.size(); i++) {
      const LoadStats& ls = r.load[i];
      load_max = std::max(load_max, ls.max_over_mean);
      loads.push_back({{"layer", names[i]}, {"max_over_mean", ls.max_over_mean},
                       {"min_over_mean", ls.min_over_mean}, {"cv", ls.cv},
                       {"router_entropy", ls.entropy}, {"loads", ls.loads}});
    }
    const backend::MemoryStats mem = backend::memory_stats(device);
    nlohmann::json rec = {{"kind", "train"}, {"step", step + 1}, {"loss", r.loss.loss},
                          {"mtp_loss", r.loss.mtp_loss}, {"balance_loss", r.loss.balance_loss},
                          {"total_loss", r.loss.total}, {"grad_norm", r.grad_norm}, {"lr", r.lr},
                          {"tokens_per_s", tps}, {"mfu", mfu}, {"step_s", dt},
                          {"tokens", rs.tokens_seen}, {"seq_len", ds.T},
                          {"peak_rss_bytes", peak_rss_bytes()},
                          {"peak_alloc_bytes", mem.peak}, {"expert_load", loads}};
    if (eng.scaler().enabled()) rec["loss_scale"] = r.loss_scale;
    if (ramp) rec["micro_batches"] = plan.micro;
    if (teacher) rec["distill_loss"] = r.loss.distill_loss;
    if (!r.applied) rec["skipped"] = r.skipped;
    if (distributed) add_comm_metrics(rec, comm, dt, eng, *par);
    const double eta = double(rc.steps - rs.steps_done) * window_time /
                       std::max(1e-9, window_tokens) * tokens_per_step;
    const double usd_per_s = spec.metrics.gpu_hour_cost * par->world / 3600;  // O4, docs/planner.md
    const double cost = (now_seconds() - run_t0) * usd_per_s;
    if (usd_per_s > 0) rec["cost_usd"] = cost, rec["cost_projected_usd"] = cost + eta * usd_per_s;
    record(rec);
    if (!r.applied) say("step " + std::to_string(step + 1) + " skipped: " + r.skipped);
    std::string text = "loss " + fmt("%.4f", r.loss.loss);
    if (c.mtp_depth > 0) text += " | mtp " + fmt("%.4f", r.loss.mtp_loss);
    if (c.experts > 0) text += " | bal " + fmt("%.2e", r.loss.balance_loss);
    if (teacher) text += " | kd " + fmt("%.4f", r.loss.distill_loss);
    text += " | gnorm " + fmt("%.3f", r.grad_norm) + " | lr " + fmt("%.2e", r.lr) + " | " +
            fmt("%.0f tok/s", tps) + " | MFU " + fmt("%.1f%%", 100 * mfu);
    if (c.experts > 0) text += " | load max/mean " + fmt("%.2f", load_max);
    if (distributed) text += " | " + comm_console_text(comm, dt);
    if (usd_per_s > 0) text += " | $" + fmt("%.3g", cost) + " of ~$" + fmt("%.3g", cost + eta * usd_per_s);
    if (root) progress.update(rs.steps_done, text, eta);
    if (const nlohmann::json e = eplb.observe(rs.steps_done, g.loss.moe, names); !e.is_null()) {
      record(e);
      say(eplb_console_text(e));
    }
    if (spec.distributed.balance_microbatches && distributed)
      eng.set_plan(balanced_plan(global_rows_at(rs.tokens_seen), par->layout.dp, d.B,
                                 eng.rank_seconds()));
    if (saver) committed(saver->poll());
    if (guard.rollback_due()) {
      rollback(step + 1);
      continue;
    }
    const bool last = rs.steps_done == rc.steps;
    if ((spec.eval.eval_every > 0 && rs.steps_done % spec.eval.eval_every == 0) || last)
      run_eval(rs.steps_done);
    if ((spec.checkpoint.save_every > 0 && rs.steps_done % spec.checkpoint.save_every == 0) || last)
      save();
  }
  if (saver) committed(saver->flush());
  if (root) {
    progress.finish();
    std::fprintf(stderr, "done in %s\n", format_duration(now_seconds() - run_t0).c_str());
  }

  if (rc.sample_tokens > 0 && spec.data.train_data.empty() && root) {  // known text encoding
    if (weights.table().sharded() || par->layout.tp > 1 || !weights.table().parts.whole) {
      std::fprintf(stderr, "(no sample: this rank holds only its experts, tensor slices or "
                           "pipeline stages; run "
                           "dsv3 sample --model %s)\n", rc.out.c_str());
      return;
    }
    const TextCodec codec =
        data.tokenizer_path().empty() ? TextCodec() : TextCodec(data.tokenizer_path());
    SampleConfig sc;
    sc.max_tokens = rc.sample_tokens;
    sc.seed = rs.rng.next_u64();
    const std::string prompt = "Once upon a time";
    const auto out = generate(weights, codec.encode(prompt), sc, d.T);
    std::printf("sample: %s%s\n", prompt.c_str(), codec.decode(out).c_str());
  }
}

}  // namespace dsv3
