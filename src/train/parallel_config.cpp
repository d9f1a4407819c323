#include "train/parallel_config.h"

#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/check.h"

namespace dsv3 {

const char* grad_compress_name(GradCompress g) {
  switch (g) {
    case GradCompress::None: return "none";
    case GradCompress::Int8: return "int8";
    case GradCompress::TopK: return "topk";
  }
  return "?";
}

GradCompress parse_grad_compress(const std::string& s) {
  if (s == "none") return GradCompress::None;
  if (s == "int8") return GradCompress::Int8;
  if (s == "topk") return GradCompress::TopK;
  fail("unknown gradient compression '", s, "' (expected none, int8 or topk)");
}

const std::vector<FieldSpec>& dist_fields() {
  using D = DistConfig;
  static const std::vector<FieldSpec> f = {
      field("global_batch", &D::global_batch,
            "sequences per optimizer step over all ranks (0 = batch x grad_accum x dp); the "
            "data order is defined over it, so any layout trains the same", in_range(0, 1 << 30)),
      field("zero", &D::zero, "ZeRO stage: 0 replicated optimizer, 1 sharded optimizer state, "
            "2 sharded optimizer state and gradients", in_range(0, 2)),
      field("bucket_mb", &D::bucket_mb, "gradient bucket size in MiB (fp32)", in_range_open_lo(0, 1 << 20)),
      field("overlap", &D::overlap,
            "reduce each bucket as soon as its gradients are final, during backward"),
      choice("grad_compress", &D::grad_compress, "none|int8|topk",
             "data-parallel gradient compression with error feedback",
             grad_compress_name, parse_grad_compress),
      field("topk_ratio", &D::topk_ratio, "--grad_compress topk: share of entries sent", in_range_open_lo(0, 1)),
      field("collective_timeout", &D::collective_timeout,
            "seconds a collective may wait before it is an error naming the missing ranks "
            "(0 = wait forever)", at_least(0)),
      field("balance_microbatches", &D::balance_microbatches,
            "give slower ranks fewer sequences of the global batch (measured step times)"),
      field("eplb", &D::eplb, "place redundant expert replicas from measured loads (EPLB)"),
      field("eplb_redundant", &D::eplb_redundant,
            "--eplb: redundant expert slots per MoE layer (0 = one per ep rank)", in_range(0, 1 << 20)),
      field("eplb_every", &D::eplb_every, "--eplb: steps between placements", in_range(1, 1 << 30)),
      field("pp_layers", &D::pp_layers,
            "--pp: layers per pipeline stage, e.g. 2,1,1 (empty = balanced by FLOPs, head and "
            "MTP on the last stage)"),
      choice("pp_schedule", &D::pp_schedule, "1f1b|dualpipe", "--pp: pipeline schedule",
             pipe_schedule_name, parse_pipe_schedule),
      field("pp_overlap", &D::pp_overlap,
            "--pp_schedule dualpipe: run each F&B's forward on a second thread beside its "
            "backward, a third of the OpenMP threads to the forward (DeepSeek-V3's overlap; "
            "false: one after the other)"),
      field("sp", &D::sp, "--tp > 1: sequence parallelism (norms and the residual stream split "
            "over the tp ranks by rows; all-gather / reduce-scatter instead of all-reduce)"),
      field("debug_slow_rank", &D::debug_slow_rank,
            "debug: this rank computes debug_slowdown times slower (-1 = none)", in_range(-1, 1 << 20)),
      field("debug_slowdown", &D::debug_slowdown, "debug: slowdown factor of debug_slow_rank", at_least(1)),
      field("rank_fault", &D::rank_fault,
            "debug: kill:R@S or stop:R@S makes rank R die (SIGKILL) or hang (SIGSTOP) at step S"),
  };
  return f;
}

void validate(const DistConfig& d) {
  DSV3_CHECK(d.global_batch >= 0, "global_batch must be >= 0 (0 = batch x grad_accum x dp)");
  DSV3_CHECK(d.zero >= 0 && d.zero <= 2, "zero must be 0, 1 or 2, got ", d.zero);
  DSV3_CHECK(d.bucket_mb > 0, "bucket_mb must be > 0");
  DSV3_CHECK(d.topk_ratio > 0 && d.topk_ratio <= 1, "topk_ratio must be in (0, 1]");
  DSV3_CHECK(d.collective_timeout >= 0, "collective_timeout must be >= 0 (0 = off)");
  DSV3_CHECK(d.eplb_redundant >= 0, "eplb_redundant must be >= 0");
  DSV3_CHECK(d.eplb_every >= 1, "eplb_every must be >= 1");
  DSV3_CHECK(d.debug_slowdown >= 1, "debug_slowdown must be >= 1");
  parse_rank_fault(d.rank_fault);
}

int eplb_redundant_slots(const DistConfig& d, int ep) {
  return d.eplb_redundant > 0 ? d.eplb_redundant : std::max(ep, 1);
}

RankFault parse_rank_fault(const std::string& s) {
  RankFault f;
  if (s.empty()) return f;
  const size_t colon = s.find(':'), at = s.find('@');
  const auto bad = [&] {
    fail("rank_fault '", s, "': expected kill:RANK@STEP or stop:RANK@STEP");
  };
  if (colon == std::string::npos || at == std::string::npos || at < colon) bad();
  const std::string kind = s.substr(0, colon);
  if (kind == "kill") f.kind = RankFault::Kill;
  else if (kind == "stop") f.kind = RankFault::Stop;
  else bad();
  f.rank = int(parse_int("rank_fault", s.substr(colon + 1, at - colon - 1)));
  f.step = parse_int("rank_fault", s.substr(at + 1));
  if (f.rank < 0 || f.step < 1) bad();
  return f;
}

int BatchPlan::rows(int r, int a) const {
  const int n = count[size_t(r)];
  return n / micro + (a < n % micro ? 1 : 0);
}

int BatchPlan::first_row(int r, int a) const {
  int at = begin[size_t(r)];
  for (int i = 0; i < a; i++) at += rows(r, i);
  return at;
}

BatchPlan even_plan(int global, int dp, int batch) {
  DSV3_CHECK(global % dp == 0, "global_batch ", global, " is not divisible by dp ", dp,
             ": every data-parallel rank takes the same number of sequences (change "
             "--global_batch, or use --balance_microbatches)");
  const int per = global / dp;
  DSV3_CHECK(per % batch == 0, "global_batch ", global, " over dp ", dp, " gives ", per,
             " sequences per rank, not a multiple of --batch ", batch,
             " (the micro-batch): change --batch or --global_batch");
  BatchPlan p;
  p.global = global, p.batch = batch, p.micro = per / batch;
  for (int r = 0; r < dp; r++) p.begin.push_back(r * per), p.count.push_back(per);
  return p;
}

BatchPlan balanced_plan(int global, int dp, int batch, const std::vector<double>& sec_per_seq) {
  DSV3_CHECK(int(sec_per_seq.size()) == dp, "internal: balanced_plan needs one time per rank");
  DSV3_CHECK(global >= dp, "global_batch ", global, " gives some of the ", dp,
             " ranks no sequence");
  std::vector<double> speed(static_cast<size_t>(dp));
  for (int r = 0; r < dp; r++) speed[size_t(r)] = 1.0 / std::max(sec_per_seq[size_t(r)], 1e-12);
  const double total = std::accumulate(speed.begin(), speed.end(), 0.0);
  // largest-remainder rounding of global * speed / total
  std::vector<int> n(static_cast<size_t>(dp));
  std::vector<std::pair<double, int>> rem;
  int given = 0;
  for (int r = 0; r < dp; r++) {
    const double x = global * speed[size_t(r)] / total;
    n[size_t(r)] = std::max(1, int(std::floor(x)));
    given += n[size_t(r)];
    rem.push_back({x - std::floor(x), r});
  }
  std::sort(rem.begin(), rem.end(), [](auto a, auto b) { return a.first > b.first || (a.first == b.first && a.second < b.second); });
  for (size_t i = 0; given < global; i = (i + 1) % rem.size()) n[size_t(rem[i].second)]++, given++;
  while (given > global) {  // the max(1, .) above may overshoot: take from the largest
    const auto it = std::max_element(n.begin(), n.end());
    (*it)--, given--;
  }
  // every rank needs a row in each of the (common) micro-batches
  for (;;) {
    const int mx = *std::max_element(n.begin(), n.end());
    const int micro = (mx + batch - 1) / batch;
    const auto lo = std::min_element(n.begin(), n.end());
    if (*lo >= micro) break;
    (*lo)++;
    (*std::max_element(n.begin(), n.end()))--;
  }
  BatchPlan p;
  p.global = global, p.batch = batch;
  p.micro = (*std::max_element(n.begin(), n.end()) + batch - 1) / batch;
  int at = 0;
  for (int r = 0; r < dp; r++) p.begin.push_back(at), p.count.push_back(n[size_t(r)]), at += n[size_t(r)];
  return p;
}

}  // namespace dsv3
