#include "train/train_config.h"

#include "core/check.h"

namespace dsv3 {

const std::vector<FieldSpec>& train_fields() {
  using T = TrainConfig;
  static const std::vector<FieldSpec> f = {
      field("steps", &T::steps, "optimizer steps in the run"),
      field("batch", &T::batch, "sequences per micro-batch B"),
      field("seq_len", &T::seq_len, "tokens per sequence T"),
      field("grad_accum", &T::grad_accum, "micro-batches per optimizer step"),
      field("lr", &T::lr, "peak learning rate"),
      field("min_lr", &T::min_lr, "learning rate at the end of the decay"),
      field("warmup", &T::warmup, "linear warmup steps"),
      choice("schedule", &T::schedule, "cosine|wsd|constant", "learning-rate schedule",
             schedule_name, parse_schedule),
      field("decay_frac", &T::decay_frac, "wsd: fraction of steps in the final decay"),
      field("beta1", &T::beta1, "AdamW beta1"),
      field("beta2", &T::beta2, "AdamW beta2"),
      field("eps", &T::eps, "AdamW epsilon"),
      field("weight_decay", &T::weight_decay, "decoupled weight decay (2-D weights only)"),
      field("clip", &T::clip, "clip the global gradient norm to this (0 = off)"),
      choice("recompute", &T::recompute, "none|block",
             "activation recomputation: keep block inputs only", recompute_name, parse_recompute),
      field("seed", &T::seed, "seed for initialisation and data"),
      field("data", &T::data, "prepared data directory (dsv3 prepare): shards + tokenizer"),
      field("train_data", &T::train_data, "llm.c token file (neither: built-in corpus)"),
      field("val_data", &T::val_data, "llm.c token file for validation"),
      field("shuffle", &T::shuffle,
            "train_data: random windows, new order each epoch (false: in order)"),
      field("mix", &T::mix, "domain weights name:w,... (default: token shares)"),
      field("mix_end", &T::mix_end, "domain weights at the end (linear schedule from --mix)"),
      field("mix_adaptive", &T::mix_adaptive,
            "raise a domain's weight by this factor when its val loss keeps rising (1 = off)"),
      field("mix_window", &T::mix_window, "evaluations of rising loss before a raise (K)"),
      field("fim_rate", &T::fim_rate, "fill-in-the-middle share of documents (prepared data)"),
      choice("fim_order", &T::fim_order, "psm|spm", "FIM layout", fim_order_name,
             parse_fim_order),
      field("seq_warmup_steps", &T::seq_warmup_steps,
            "sequence-length warmup: steps to grow the context to seq_len (0 = off)"),
      field("seq_warmup_start", &T::seq_warmup_start, "context length at step 0 of the warmup"),
      field("window_overlap", &T::window_overlap,
            "tokens shared by windows of documents longer than seq_len"),
      field("eval_every", &T::eval_every, "validate every N steps (0 = only at the end)"),
      field("eval_batches", &T::eval_batches, "validation micro-batches"),
      field("save_every", &T::save_every, "checkpoint every N steps (0 = only at the end)"),
      field("keep", &T::keep, "checkpoints to keep"),
      field("out", &T::out, "run directory: checkpoints, metrics.jsonl"),
      field("resume", &T::resume, "continue from this checkpoint or run directory"),
      field("sample_tokens", &T::sample_tokens, "tokens sampled at the end (0 = none)"),
      field("peak_gflops", &T::peak_gflops, "peak for MFU (0 = measure fp32 GEMM peak)"),
      field("device", &T::device, "cpu or cuda"),
  };
  return f;
}

int TrainConfig::seq_split(long long step) const {
  if (step >= seq_warmup_steps) return 1;
  const double target =
      seq_warmup_start + double(seq_len - seq_warmup_start) * double(step) / double(seq_warmup_steps);
  int k = 1;
  while (seq_len % (2 * k) == 0 && double(seq_len / (2 * k)) >= target) k *= 2;
  return k;
}

void validate(const TrainConfig& t) {
  DSV3_CHECK(t.steps >= 1, "steps must be >= 1, got ", t.steps);
  DSV3_CHECK(t.batch >= 1, "batch must be >= 1, got ", t.batch);
  DSV3_CHECK(t.seq_len >= 2, "seq_len must be >= 2, got ", t.seq_len);
  DSV3_CHECK(t.grad_accum >= 1, "grad_accum must be >= 1, got ", t.grad_accum);
  DSV3_CHECK(t.lr > 0, "lr must be positive, got ", t.lr);
  DSV3_CHECK(t.min_lr >= 0 && t.min_lr <= t.lr, "min_lr must be in [0, lr], got ", t.min_lr);
  DSV3_CHECK(t.warmup >= 0, "warmup must be >= 0");
  DSV3_CHECK(t.decay_frac >= 0 && t.decay_frac <= 1, "decay_frac must be in [0, 1]");
  DSV3_CHECK(t.beta1 >= 0 && t.beta1 < 1 && t.beta2 >= 0 && t.beta2 < 1, "betas must be in [0, 1)");
  DSV3_CHECK(t.eps > 0, "eps must be positive");
  DSV3_CHECK(t.weight_decay >= 0, "weight_decay must be >= 0");
  DSV3_CHECK(t.clip >= 0, "clip must be >= 0");
  DSV3_CHECK(t.eval_every >= 0 && t.save_every >= 0, "eval_every and save_every must be >= 0");
  DSV3_CHECK(t.eval_batches >= 0, "eval_batches must be >= 0");
  DSV3_CHECK(t.keep >= 1, "keep must be >= 1");
  DSV3_CHECK(!t.out.empty(), "out must name a directory");
  DSV3_CHECK(t.seq_warmup_steps >= 0, "seq_warmup_steps must be >= 0");
  if (t.seq_warmup_steps > 0)
    DSV3_CHECK(t.seq_warmup_start >= 2 && t.seq_warmup_start <= t.seq_len,
               "seq_warmup_start must be in [2, seq_len] (", t.seq_len, "), got ",
               t.seq_warmup_start);
  DSV3_CHECK(t.mix_adaptive >= 1.0, "mix_adaptive must be >= 1 (1 = off)");
  DSV3_CHECK(t.mix_window >= 1, "mix_window must be >= 1");
  DSV3_CHECK(t.fim_rate >= 0 && t.fim_rate <= 1, "fim_rate must be in [0, 1]");
  DSV3_CHECK(t.window_overlap >= 0 && t.window_overlap < t.seq_len,
             "window_overlap must be in [0, seq_len)");
  DSV3_CHECK(t.sample_tokens >= 0, "sample_tokens must be >= 0");
  DSV3_CHECK(t.peak_gflops >= 0, "peak_gflops must be >= 0");
  parse_device(t.device);
}

}  // namespace dsv3
