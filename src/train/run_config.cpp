#include "train/run_config.h"

#include <algorithm>
#include <functional>

#include "core/check.h"

namespace dsv3 {

const std::vector<FieldSpec>& run_fields() {
  using R = RunConfig;
  static const std::vector<FieldSpec> f = {
      field("steps", &R::steps, "optimizer steps in the run", in_range(1, 1e15)),
      field("batch", &R::batch, "sequences per micro-batch B", in_range(1, 1 << 20)),
      field("seq_len", &R::seq_len, "tokens per sequence T", in_range(2, 1 << 24)),
      field("grad_accum", &R::grad_accum, "micro-batches per optimizer step", in_range(1, 1 << 20)),
      choice("recompute", &R::recompute, "none|selective|block",
             "activation recomputation: selective = RMSNorm outputs and MLA up-projections "
             "(DeepSeek-V3), block = keep block inputs only",
             recompute_name, parse_recompute),
      field("seed", &R::seed, "seed for initialisation and data", at_least(0)),
      field("out", &R::out, "run directory: checkpoints, metrics.jsonl"),
      field("sample_tokens", &R::sample_tokens, "tokens sampled at the end (0 = none)", in_range(0, 1 << 20)),
      field("peak_gflops", &R::peak_gflops,
            "GEMM peak for MFU (0 = measure it for the run's precision)", at_least(0)),
      field("device", &R::device, "cpu or cuda"),
      field("cuda_graphs", &R::cuda_graphs,
            "CUDA: replay the blocks' forward and backward as CUDA graphs (fewer launches)"),
  };
  return f;
}

void validate(const RunConfig& r) {
  DSV3_CHECK(r.steps >= 1, "steps must be >= 1, got ", r.steps);
  DSV3_CHECK(r.batch >= 1, "batch must be >= 1, got ", r.batch);
  DSV3_CHECK(r.seq_len >= 2, "seq_len must be >= 2, got ", r.seq_len);
  DSV3_CHECK(r.grad_accum >= 1, "grad_accum must be >= 1, got ", r.grad_accum);
  DSV3_CHECK(!r.out.empty(), "out must name a directory");
  DSV3_CHECK(r.sample_tokens >= 0, "sample_tokens must be >= 0");
  DSV3_CHECK(r.peak_gflops >= 0, "peak_gflops must be >= 0");
  parse_device(r.device);
}

std::vector<FieldGroup> run_groups_without_model(RunSpec& s) {
  return {{"losses", &loss_fields(), &s.loss},
          {"training", &run_fields(), &s.run},
          {"optimizer", &optimizer_fields(), &s.optimizer},
          {"schedule", &schedule_fields(), &s.schedule},
          {"precision", &precision_fields(), &s.precision},
          {"data", &data_fields(), &s.data},
          {"checkpoints", &checkpoint_fields(), &s.checkpoint},
          {"evaluation", &eval_fields(), &s.eval},
          {"guard", &guard_fields(), &s.guard},
          {"parallel", &dist::parallel_fields(), &s.parallel},
          {"metrics", &metrics_fields(), &s.metrics},
          {"distributed", &dist_fields(), &s.distributed},
          {"compression", &compression_fields(), &s.compress}};
}

std::vector<FieldGroup> run_groups(RunSpec& s) {
  std::vector<FieldGroup> g = {{"model", &model_fields(), &s.model}};
  for (auto& x : run_groups_without_model(s)) g.push_back(x);
  return g;
}

void validate(const RunSpec& s) {
  {  // presets and defaults do not pass through the field tables' setters
    RunSpec copy = s;
    for (const FieldGroup& g : run_groups(copy)) check_field_ranges(*g.fields, g.target);
  }
  // Positions are int: B x T (and B x (T + 1) loader tokens) must fit.
  DSV3_CHECK(int64_t(s.run.batch) * (s.run.seq_len + 1) < (int64_t(1) << 31), "batch x seq_len = ",
             int64_t(s.run.batch) * s.run.seq_len, " tokens per micro-batch is more than one "
             "process addresses (2^31): lower --batch or --seq_len and raise --grad_accum");
  validate(s.model);
  validate(s.run);
  validate(s.optimizer);
  validate(s.schedule);
  validate(s.precision);
  validate(s.data, s.run.seq_len);
  validate(s.checkpoint);
  validate(s.eval);
  validate(s.guard);
  validate(s.compress);
  validate(s.distributed);
  DSV3_CHECK(s.run.seq_len <= s.model.max_seq, "sequence length ", s.run.seq_len,
             " exceeds max_seq ", s.model.max_seq);
  // (the batch ramp's end, micro-batches per rank at the full global batch, needs the world
  // size: the trainer checks batch_ramp_start against it)
  // ZeRO 1/2 run the optimizer over flat pieces of the parameters that cut through tensors:
  // LAMB's trust ratio and Muon's orthogonalisation need whole tensors, and the gradient noise is
  // keyed by the position in the whole table.
  DSV3_CHECK(s.distributed.zero == 0 || s.optimizer.kind == OptimizerKind::AdamW,
             "--optimizer ", optimizer_name(s.optimizer.kind), " needs whole tensors on one rank: "
             "use --zero 0 (replicated optimizer state) or --optimizer adamw");
  // Tensor parallelism splits tensors over ranks the same way (model/tensor_parallel.h).
  DSV3_CHECK(s.parallel.tp <= 1 || (s.optimizer.kind == OptimizerKind::AdamW &&
                                    s.optimizer.grad_noise == 0),
             "--tp ", s.parallel.tp, " splits tensors over ranks: --optimizer ",
             optimizer_name(s.optimizer.kind), s.optimizer.grad_noise > 0 ? " with --grad_noise" : "",
             " needs whole tensors on one rank (use --optimizer adamw without --grad_noise, or --tp 1)");
  DSV3_CHECK(s.distributed.zero == 0 || s.optimizer.grad_noise == 0,
             "--grad_noise with --zero ", s.distributed.zero, " is not supported (the noise is keyed by "
             "the position in the whole parameter table): use --zero 0");
}

void reject_inapplicable(const RunSpec& s, const std::vector<std::string>& set_keys) {
  struct Rule {
    std::vector<const char*> keys;
    std::function<bool()> applies;
    const char* needs;
  };
  const bool prepared = !s.data.data.empty(), llmc = !s.data.train_data.empty();
  const bool fp16 = s.precision.precision == Precision::FP16;
  const bool moe = s.model.experts > 0;
  const bool cuda = parse_device(s.run.device) == Device::CUDA;
  const Rule rules[] = {
      {{"cuda_graphs"}, [&] { return cuda; }, "--device cuda"},
      {{"tf32"}, [&] { return cuda && s.precision.precision == Precision::FP32; },
       "--device cuda and --precision fp32 (the GEMMs TF32 changes)"},
      {{"mix", "mix_end", "mix_adaptive", "mix_window", "fim_rate", "fim_order", "window_overlap"},
       [&] { return prepared; }, "prepared data (--data DIR from dsv3 prepare)"},
      {{"val_data"}, [&] { return llmc; }, "--train_data (llm.c token files)"},
      {{"shuffle"}, [&] { return !prepared; },
       "--train_data or the built-in corpus (prepared data has its own document shuffle)"},
      {{"seq_warmup_start"}, [&] { return s.data.seq_warmup_steps > 0; }, "--seq_warmup_steps > 0"},
      {{"loss_scale", "loss_scale_window"}, [&] { return fp16; }, "--precision fp16"},
      {{"decay_frac"}, [&] { return s.schedule.kind == ScheduleKind::Wsd; }, "--schedule wsd"},
      {{"final_lr_ratio"}, [&] { return s.schedule.kind == ScheduleKind::V3; }, "--schedule v3"},
      {{"batch_ramp_start"}, [&] { return s.schedule.batch_ramp_tokens > 0; }, "--batch_ramp_tokens > 0"},
      {{"min_lr"}, [&] { return s.schedule.kind != ScheduleKind::Constant; },
       "a decaying schedule (cosine or wsd)"},
      {{"mtp_weight", "mtp_weight_late", "mtp_late_from"}, [&] { return s.model.mtp_depth > 0; },
       "MTP modules (--mtp_depth > 0)"},
      {{"balance_alpha", "balance_scope"}, [&] { return moe; }, "routed experts (--experts > 0)"},
      {{"bias_update_rate"}, [&] { return moe && s.model.router == RouterKind::Sigmoid; },
       "the sigmoid router with routed experts"},
      {{"yarn_original_ctx", "yarn_beta_fast", "yarn_beta_slow", "yarn_mscale"},
       [&] { return s.model.yarn_factor > 1; }, "YaRN (--yarn_factor > 1)"},
      {{"spike_window"}, [&] { return s.guard.spike_zscore > 0; }, "--spike_zscore > 0"},
      {{"distill_alpha", "distill_temp"}, [&] { return !s.compress.teacher.empty(); },
       "a teacher to distil from (--teacher MODEL)"},
      {{"muon_momentum", "muon_nesterov", "muon_ns_steps"},
       [&] { return s.optimizer.kind == OptimizerKind::Muon; }, "--optimizer muon"},
      {{"grad_noise_gamma", "grad_noise_start"}, [&] { return s.optimizer.grad_noise > 0; },
       "--grad_noise > 0"},
      {{"window"}, [&] { return s.model.attention == AttentionKind::Window; }, "--attention window"},
      {{"lsh_buckets", "lsh_rounds", "lsh_chunk", "lsh_seed"},
       [&] { return s.model.attention == AttentionKind::Lsh; }, "--attention lsh"},
      {{"sample_tokens"}, [&] { return !llmc; },
       "a known text encoding (the built-in corpus or --data); llm.c token files have none"},
      {{"eval_every", "eval_batches"}, [&] { return !llmc || !s.data.val_data.empty(); },
       "validation data (--val_data with --train_data)"},
      {{"topk_ratio"}, [&] { return s.distributed.grad_compress == GradCompress::TopK; },
       "--grad_compress topk"},
      {{"eplb_redundant", "eplb_every"}, [&] { return s.distributed.eplb; }, "--eplb true"},
      {{"eplb"}, [&] { return moe; }, "routed experts (--experts > 0)"},
      {{"pp_overlap"}, [&] { return s.distributed.pp_schedule == PipeSchedule::DualPipe; },
       "--pp_schedule dualpipe (its F&B ops)"},
      {{"debug_slowdown"}, [&] { return s.distributed.debug_slow_rank >= 0; },
       "--debug_slow_rank"},
  };
  for (const std::string& k : set_keys)
    for (const Rule& r : rules)
      if (std::find_if(r.keys.begin(), r.keys.end(), [&](const char* x) { return k == x; }) !=
              r.keys.end() &&
          !r.applies())
        fail("--", k, " does not apply to this run: it needs ", r.needs, " (drop it)");
}

}  // namespace dsv3
