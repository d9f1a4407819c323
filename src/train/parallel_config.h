// The settings of distributed training (P2-P8) beyond the layout (dist/layout.h): the global
// batch, ZeRO, gradient buckets and compression, the collective watchdog, micro-batch balancing,
// EPLB, and the debug settings that slow or stop a rank on purpose. One settings group,
// "distributed"; docs/parallel.md explains each.
#pragma once
#include <string>
#include <vector>

#include "core/fields.h"
#include "train/pipeline_schedule.h"

namespace dsv3 {

enum class GradCompress : uint8_t { None, Int8, TopK };
const char* grad_compress_name(GradCompress g);
GradCompress parse_grad_compress(const std::string& s);

struct DistConfig {
  // Sequences per optimizer step over all ranks (0: batch x grad_accum x dp). The data order is
  // defined over this global batch, so the same value and seed train the same on any layout.
  long long global_batch = 0;
  int zero = 0;            // 0: replicated optimizer; 1: optimizer state sharded; 2: + gradients
  double bucket_mb = 25;   // gradient bucket size (MiB of fp32), PyTorch DDP's default
  bool overlap = true;     // start a bucket's reduction as soon as its gradients are final
  GradCompress grad_compress = GradCompress::None;
  double topk_ratio = 0.01;  // --grad_compress topk: share of each bucket's entries sent
  double collective_timeout = 600;  // seconds a collective may wait before the watchdog fires
  bool balance_microbatches = false;  // slower ranks get fewer sequences of the global batch
  bool eplb = false;       // rebalance expert placement with redundant replicas (EPLB)
  int eplb_redundant = 0;  // redundant expert slots per MoE layer (0: one per ep rank)
  int eplb_every = 10;     // steps between placements (loads are measured in between)
  // Pipeline parallelism (--pp): the layers of each stage ("2,1,1"; empty: balanced by FLOPs)
  // and the schedule.
  std::string pp_layers;
  PipeSchedule pp_schedule = PipeSchedule::OneFOneB;
  // DualPipe: run each F&B's forward on a second thread beside its backward (needs an MPI with
  // MPI_THREAD_MULTIPLE; without it, or false, one after the other).
  bool pp_overlap = true;
  // Sequence parallelism (--sp, with --tp > 1): norms and residuals on N / tp rows per rank.
  bool sp = false;
  // Debug (documented in docs/parallel.md): rank debug_slow_rank computes debug_slowdown times
  // slower (it sleeps), to show --balance_microbatches; rank_fault makes a rank fail on purpose,
  // once per run directory: "kill:R@S" (SIGKILL at step S) or "stop:R@S" (SIGSTOP: a hang).
  int debug_slow_rank = -1;
  double debug_slowdown = 1.0;
  std::string rank_fault;
};
const std::vector<FieldSpec>& dist_fields();
void validate(const DistConfig& d);
// --eplb: redundant expert slots per MoE layer over an ep group of `ep` ranks (the default: one
// per rank).
int eplb_redundant_slots(const DistConfig& d, int ep);

// A rank failure injected on purpose (tests of the watchdog and of `dsv3 launch`).
struct RankFault {
  enum Kind : uint8_t { None, Kill, Stop } kind = None;
  int rank = -1;
  long long step = 0;  // 1-based step at whose start it happens
};
RankFault parse_rank_fault(const std::string& s);  // "" -> None; bad text -> Error

// How one step's global batch of G sequences is cut among the dp ranks: rank r takes sequences
// [begin[r], begin[r] + count[r]) and runs `micro` micro-batches of near-equal size (at most
// `batch` rows). Every rank runs the same number of micro-batches: expert all-to-alls and
// ZeRO-2 reductions are collective per micro-batch.
struct BatchPlan {
  int global = 0, batch = 0, micro = 1;
  std::vector<int> begin, count;
  int rows(int r, int a) const;       // rows of micro-batch a on rank r
  int first_row(int r, int a) const;  // its first sequence within the global batch
};
// Every rank G / dp sequences in micro-batches of exactly `batch` (errors say what to change).
BatchPlan even_plan(int global, int dp, int batch);
// Sequences in proportion to each rank's speed (1 / seconds per sequence), each rank at least
// one per micro-batch; the largest share decides the micro-batch count.
BatchPlan balanced_plan(int global, int dp, int batch, const std::vector<double>& sec_per_seq);

}  // namespace dsv3
