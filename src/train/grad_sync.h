// Data-parallel gradient reduction (P2, P6) over the flat gradient buffer of the parameter table.
//
// Domains. Without expert parallelism the whole buffer is one domain reduced over the dp group.
// With it, the table of an expert shard puts the routed experts last (params.h), so the dense
// range [0, experts_begin) is reduced over dp and the expert range [experts_begin, total) over
// edp, the ranks that hold the same experts. A pipeline rank's table (params.h StageParts) holds
// only its stages' tensors, so gradients reduce over dp/edp alone, except for the tensors that
// pipeline rank s and P-1-s both hold (the embedding of the first and last stage, which the MTP
// modules read; under DualPipe every tensor): they come first in the dense and the expert range
// (ParamTable::shared_end) and reduce over dp_mirror / edp_mirror, the data-parallel ranks of
// both stages. That sums both copies' gradients, so the copies stay equal, and every element
// still has one owner (one piece) in its group: counted once in the norm, written once.
//
// Buckets. Each domain is cut into buckets of --bucket_mb from its end backwards (the order in
// which backward finishes gradients). A bucket is ready when the backward parts of all its
// tensors are done (model.h: head and MTP first, then blocks from the last, the embedding last);
// with --overlap it is launched right then, nonblocking, while backward goes on, and in-flight
// operations are pushed along after every part. Each bucket is split into n equal pieces (n the
// group size, the last piece may be short): rank i owns piece i. The owned pieces are what ZeRO
// shards (optimizer state, and for ZeRO-2 gradients), what a rank writes into a checkpoint, and
// where the global gradient norm is summed, so every element is counted once in the world.
//
//   zero 0: all-reduce per bucket; every rank has the whole reduced gradient.
//   zero 1: reduce-scatter per bucket after the last micro-batch; each rank keeps its pieces.
//   zero 2: the same after every micro-batch, accumulated in the pieces (the full-size buffer
//           only holds one micro-batch: see docs/parallel.md for what that saves here).
// Compression (zero 0 and 1; docs/parallel.md "Gradient compression"):
//   int8: piece i of (g + residual) quantised with a scale per block of 128 (dist/compress.h),
//         all-to-all, summed by its owner in rank order; zero 0 then all-gathers the owner's
//         re-quantised sum (with its own residual).
//   topk: the ratio x bucket largest entries of (g + residual) as (index, value), all-gathered
//         and summed by every rank in rank order.
// Reduced gradients are sums: each micro-batch's loss is already weighted by its share of the
// global batch.
#pragma once
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "dist/collectives.h"
#include "model/params.h"
#include "train/parallel_config.h"

namespace dsv3 {

class GradSync {
 public:
  struct Domain {
    size_t begin, end;
    dist::Group* group;
  };
  struct Piece {
    size_t flat, len;  // this rank's piece of a bucket: [flat, flat + len) of the table
    size_t shard;      // where it lives in the shard buffers (ZeRO)
  };

  // dp: the data-parallel group; edp: the expert-data-parallel group (expert-shard tables);
  // dp_mirror, edp_mirror: the groups of the tensors two pipeline ranks hold (ParamTable::shared_end).
  GradSync(const ParamTable& t, const ModelConfig& c, dist::Group& dp, dist::Group* edp,
           dist::Collectives& coll, const DistConfig& cfg, Device device,
           dist::Group* dp_mirror = nullptr, dist::Group* edp_mirror = nullptr);
  ~GradSync();

  // One step: begin_micro(a) before micro-batch a's backward, part_done(k) after each backward
  // part (model.h), end_micro() after it; finish() once all micro-batches are done.
  void begin_micro(int a, int micro, const Tensor& grads);
  void part_done(int parts);
  void end_micro();
  void finish();

  int zero() const { return zero_; }
  const std::vector<Piece>& own() const { return own_; }
  size_t shard_size() const { return shard_size_; }
  const Tensor& shard_grads() const { return shard_grads_.view(); }  // ZeRO: own pieces
  // The trainable part of the own pieces as optimizer spans: in table offsets, and in shard
  // offsets (ZeRO's optimizer runs over the shard).
  const std::vector<ParamSpan>& own_spans_flat() const { return own_flat_; }
  const std::vector<ParamSpan>& own_spans_shard() const { return own_shard_; }
  // ZeRO 1/2: after each rank updated its pieces of `weights` (compute dtype, table layout),
  // every rank gets every piece (all-gather per bucket).
  void all_gather_params(const Tensor& weights);
  // Bytes this rank's gradient reductions put on the wire in the last step (compressed or not).
  double grad_wire_bytes() const { return wire_; }

  struct Bucket;

 private:
  void launch(Bucket& b);
  void progress(Bucket& b, bool block);
  void deliver_piece(Bucket& b, const float* sum);

  const ParamTable& t_;
  dist::Collectives& coll_;
  DistConfig cfg_;
  Device device_;
  int zero_;
  std::vector<Domain> domains_;
  std::vector<std::unique_ptr<Bucket>> buckets_;  // in launch order (domain end first)
  std::vector<Piece> own_;
  std::vector<ParamSpan> own_flat_, own_shard_;
  size_t shard_size_ = 0;
  Buffer shard_grads_;
  Tensor grads_;
  int micro_ = 0, micros_ = 1;
  bool reducing_ = false;  // this micro-batch's buckets are reduced
  double wire_ = 0;
};

}  // namespace dsv3
