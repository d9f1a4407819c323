#include "train/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <tuple>

#include "core/check.h"
#include "model/moe_layer.h"
#include "model/params.h"
#include "model/tensor_parallel.h"
#include "model/workspace.h"

namespace dsv3 {

const char* plan_schedule_name(PlanSchedule s) {
  switch (s) {
    case PlanSchedule::None: return "none";
    case PlanSchedule::OneFOneB: return "1f1b";
    case PlanSchedule::DualPipe: return "dualpipe";
  }
  return "?";
}

const std::vector<FieldSpec>& plan_fields() {
  using P = PlanConfig;
  static const std::vector<FieldSpec> f = {
      field("gpus", &P::gpus, "devices to train on (for --gpu cpu: MPI ranks on this machine)",
            in_range(1, 1 << 20)),
      field("gpu", &P::gpu, "device kind: h800|h100|h200|b200|cpu (figures and sources: "
            "src/train/hardware.cpp)"),
      field("tokens", &P::tokens, "training tokens (e.g. 14.8e12)", in_range_open_lo(0, 1e18)),
      field("gpu_hour_cost", &P::gpu_hour_cost, "USD per device-hour (0: no cost)", at_least(0)),
      field("seq_len", &P::seq_len, "sequence length", in_range(1, 1 << 20)),
      field("global_batch", &P::global_batch,
            "sequences per optimizer step (0: 4M tokens' worth)", in_range(0, 1LL << 40)),
      choice("precision", &P::precision, "fp32|bf16|fp16", "compute precision (fp32 master weights "
             "and AdamW moments either way)", precision_name, parse_precision),
      field("top", &P::top, "layouts to print", in_range(1, 1000)),
      field("memory_reserve", &P::memory_reserve,
            "share of device memory kept free (allocator, communication buffers, CUDA context)",
            in_range_open_hi(0, 1)),
      field("bucket_mb", &P::bucket_mb, "gradient bucket (MiB of fp32), as train's --bucket_mb",
            in_range_open_lo(0, 1 << 20)),
      field("dp", &P::dp, "fix data parallelism (0: search)", in_range(0, 1 << 20)),
      field("tp", &P::tp, "fix tensor parallelism (0: search)", in_range(0, 1 << 20)),
      field("pp", &P::pp, "fix pipeline parallelism (0: search)", in_range(0, 1 << 20)),
      field("ep", &P::ep, "fix expert parallelism (0: search)", in_range(0, 1 << 20)),
      field("batch", &P::batch, "fix the micro-batch in sequences (0: search)", in_range(0, 1 << 20)),
      field("zero", &P::zero, "fix the ZeRO stage (-1: search 0, 1, 2)", in_range(-1, 2)),
      field("recompute", &P::recompute, "fix recomputation: any|none|selective|block"),
      field("schedule", &P::schedule, "fix the pipeline schedule: any|1f1b|dualpipe"),
  };
  return f;
}

void validate(const PlanConfig& p) {
  DSV3_CHECK(p.tokens > 0, "--tokens must be > 0 (the number of training tokens, e.g. 14.8e12)");
  check_field_ranges(plan_fields(), &p);
  find_hardware(p.gpu);
  DSV3_CHECK(p.recompute == "any" || p.recompute == "none" || p.recompute == "selective" ||
                 p.recompute == "block",
             "--recompute must be any, none, selective or block, not '", p.recompute, "'");
  DSV3_CHECK(p.schedule == "any" || p.schedule == "1f1b" || p.schedule == "dualpipe",
             "--schedule must be any, 1f1b or dualpipe, not '", p.schedule, "'");
}

std::string PlanLayout::text() const {
  char buf[256];
  std::snprintf(buf, sizeof buf, "dp %d (ep %d) x tp %d x pp %d%s%s, zero %d, recompute %s, "
                "micro-batch %d x %d",
                dp, ep, tp, pp, pp > 1 ? " " : "", pp > 1 ? plan_schedule_name(schedule) : "",
                zero, recompute_name(recompute), micro_batch, micro_batches);
  return buf;
}

namespace {

constexpr double kMiB = 1048576.0;

// What one pipeline stage holds and computes: layers [begin, end) plus the embedding (first
// stage) or the head, final norm and MTP modules (last stage).
struct Stage {
  int begin = 0, end = 0;
  bool embed = false, head = false;
  double split = 0;    // parameters divided by tp (attention heads, FFN, vocabulary)
  double repl = 0;     // parameters every tp rank keeps (norms, latent down-projections, router)
  double expert = 0;   // routed experts' parameters (divided by ep)
  double fwd = 0;      // forward FLOPs per token
  double recompute_sel = 0, recompute_block = 0;  // FLOPs per token a recompute choice re-runs
  int blocks = 0, moe = 0;  // Transformer blocks (MTP's included) and MoE layers among them
};

// Per-layer totals of the parameter table (layer index L + k for MTP module k, -1 embedding,
// -2 head and final norm), and each layer's forward FLOPs per token.
struct LayerCosts {
  std::vector<double> split, repl, expert, fwd, sel;  // indexed by layer + 2
  double attn_core = 0;  // forward FLOPs per token of one block's attention scores and values
};

bool tp_replicated(const std::string& n) {
  // tensor parallelism's own rule (model/tensor_parallel.h): heads, FFNs and the vocabulary are
  // split; the MLA latent down-projections, the norms, the router and eh_proj stay whole
  return tp_split_dim(n) < 0;
}

LayerCosts layer_costs(const ModelConfig& c, int T) {
  const int L = c.layers, D = c.mtp_depth;
  LayerCosts lc;
  for (auto* v : {&lc.split, &lc.repl, &lc.expert, &lc.fwd, &lc.sel}) v->assign(size_t(L + D + 2), 0.0);
  const ParamTable t = build_param_table(c);
  const double route = c.experts > 0 ? double(c.topk) / c.experts : 0;
  double matmul_flops = 0;
  for (const auto& p : t.list) {
    int idx = -1;  // embedding
    if (p.name.rfind("model.layers.", 0) == 0) idx = std::stoi(p.name.substr(13));
    else if (p.name.find("embed_tokens") == std::string::npos) idx = -2;  // head, final norm
    const size_t i = size_t(idx + 2);
    const double n = double(p.numel);
    const bool expert = p.name.find(".mlp.experts.") != std::string::npos;
    if (expert) lc.expert[i] += n;
    else if (tp_replicated(p.name)) lc.repl[i] += n;
    else lc.split[i] += n;
    // forward GEMM FLOPs per token: 2 per activated weight; routed experts K of E; the
    // embedding is a lookup; norms and the routing bias take part in no GEMM
    if (p.kind != ParamKind::Matrix || idx == -1) continue;
    const double f = 2 * n * (expert ? route : 1.0);
    lc.fwd[i] += f;
    matmul_flops += f;
    if (p.name.find("q_b_proj") != std::string::npos || p.name.find("kv_b_proj") != std::string::npos)
      lc.sel[i] += f;  // selective recompute re-runs the MLA up-projections (and the norms)
  }
  // Every MTP module runs the shared head once more (model_stats counts it so).
  const double head_fwd = 2.0 * c.vocab * c.hidden;
  for (int k = 0; k < D; k++) lc.fwd[size_t(L + k + 2)] += head_fwd, matmul_flops += head_fwd;
  // Attention scores and values: model_stats' causal count, spread over the blocks.
  const ModelStats s = model_stats(c, T);
  lc.attn_core = (s.fwd_flops_per_token - matmul_flops) / std::max(1, L + D);
  for (int l = 0; l < L + D; l++) lc.fwd[size_t(l + 2)] += lc.attn_core;
  return lc;
}

// Layers [0, L) cut into pp contiguous non-empty stages minimising the largest stage's forward
// FLOPs; the last stage also runs the head and the MTP modules (issue 11: "balanced by FLOPs,
// embedding on the first stage, head and MTP on the last").
std::vector<Stage> make_stages(const ModelConfig& c, const LayerCosts& lc, int pp) {
  const int L = c.layers, D = c.mtp_depth;
  auto layer = [&](int l) { return lc.fwd[size_t(l + 2)]; };
  double tail = lc.fwd[0];
  for (int k = 0; k < D; k++) tail += layer(L + k);
  std::vector<double> prefix(size_t(L + 1), 0.0);
  for (int l = 0; l < L; l++) prefix[size_t(l + 1)] = prefix[size_t(l)] + layer(l);
  // best[s][i]: least max-stage cost of layers [0, i) in s stages; cut[s][i] where stage s starts
  const double inf = HUGE_VAL;
  std::vector<std::vector<double>> best(size_t(pp + 1), std::vector<double>(size_t(L + 1), inf));
  std::vector<std::vector<int>> cut(size_t(pp + 1), std::vector<int>(size_t(L + 1), 0));
  best[0][0] = 0;
  for (int s = 1; s <= pp; s++)
    for (int i = s; i <= L; i++)
      for (int j = s - 1; j < i; j++) {
        double cost = prefix[size_t(i)] - prefix[size_t(j)];
        if (s == pp && i == L) cost += tail;
        const double v = std::max(best[size_t(s - 1)][size_t(j)], cost);
        if (v < best[size_t(s)][size_t(i)]) best[size_t(s)][size_t(i)] = v, cut[size_t(s)][size_t(i)] = j;
      }
  std::vector<Stage> st(static_cast<size_t>(pp));
  for (int s = pp, i = L; s >= 1; s--) {
    st[size_t(s - 1)].end = i;
    i = cut[size_t(s)][size_t(i)];
    st[size_t(s - 1)].begin = i;
  }
  for (int s = 0; s < pp; s++) {
    Stage& g = st[size_t(s)];
    g.embed = s == 0, g.head = s == pp - 1;
    auto add = [&](int idx, bool block) {  // idx: layer, or -1 embedding, -2 head
      const size_t i = size_t(idx + 2);
      g.split += lc.split[i], g.repl += lc.repl[i], g.expert += lc.expert[i], g.fwd += lc.fwd[i];
      g.recompute_sel += lc.sel[i];
      if (block) {
        g.blocks++;
        g.moe += c.experts > 0 && (idx >= L || c.is_moe_layer(idx));
        g.recompute_block += lc.fwd[i];  // block recompute re-runs the whole block forward
      }
    };
    for (int l = g.begin; l < g.end; l++) add(l, true);
    if (g.embed) add(-1, false);
    if (g.head) {
      add(-2, false);
      for (int k = 0; k < D; k++) add(L + k, true);
      // MTP embeds with the shared embedding: a pipelined last stage keeps its own copy (synced
      // through the gradients), so it holds the embedding's parameters too
      if (D > 0 && pp > 1) g.split += lc.split[1];
    }
  }
  return st;
}

// One enumerated search: the model's per-stage figures cached by pipeline depth and the
// activation bytes by (pp, stage, micro-batch, recompute).
struct Model {
  const ModelConfig& c;
  const PlanConfig& p;
  const Hardware& hw;
  LayerCosts lc;
  ModelStats stats;
  DType dt;
  double cb;  // compute dtype bytes
  std::map<int, std::vector<Stage>> stages;

  Model(const ModelConfig& c_, const PlanConfig& p_)
      : c(c_), p(p_), hw(find_hardware(p_.gpu)), lc(layer_costs(c_, p_.seq_len)),
        stats(model_stats(c_, p_.seq_len)), dt(compute_dtype(p_.precision)),
        cb(double(dtype_size(dt))) {}

  const std::vector<Stage>& stages_of(int pp) {
    auto it = stages.find(pp);
    if (it == stages.end()) it = stages.emplace(pp, make_stages(c, lc, pp)).first;
    return it->second;
  }
  // Activations from dsv3's own layout (model/workspace.h), on the device kind's layout (CUDA
  // keeps attention's log-sum-exp, the CPU its probabilities): a stage's workspace for one
  // micro-batch (`working`), and what each further micro-batch in flight keeps for its backward
  // (`kept`: per block, the growth of a workspace from one block to two of the same kind; under
  // block recompute only the block inputs, under none every block's activations).
  struct Acts { double working, kept; };
  Acts activation_bytes(int pp, int s, int b, Recompute r) {
    const auto key = std::make_tuple(pp, s, b, int(r));
    auto it = acts.find(key);
    if (it != acts.end()) return it->second;
    const Device dev = hw.shared_host ? Device::CPU : Device::CUDA;
    const Stage& g = stages_of(pp)[size_t(s)];
    WorkspaceConfig wc;
    wc.max = {b, p.seq_len};
    wc.recompute = r;
    wc.layer_begin = g.begin, wc.layer_end = g.end;
    wc.embed = g.embed, wc.head = g.head;
    Acts a{double(Workspace::measure_bytes(c, dt, wc, dev)), 0};
    auto per_block = [&](bool moe) {
      ModelConfig two = c;
      two.layers = 2, two.dense_layers = moe ? 0 : 2, two.mtp_depth = 0;
      WorkspaceConfig w = wc;
      w.embed = w.head = false, w.layer_begin = 0, w.layer_end = 1;
      const double one = double(Workspace::measure_bytes(two, dt, w, dev));
      w.layer_end = 2;
      return double(Workspace::measure_bytes(two, dt, w, dev)) - one;
    };
    const double moe_block = c.experts > 0 ? per_block(true) : 0, dense_block = per_block(false);
    for (int l = g.begin; l < g.end; l++) a.kept += c.is_moe_layer(l) ? moe_block : dense_block;
    if (g.head) a.kept += c.mtp_depth * (c.experts > 0 ? moe_block : dense_block);
    a.kept = std::min(a.kept, a.working);
    acts.emplace(key, a);
    return a;
  }
  std::map<std::tuple<int, int, int, int>, Acts> acts;
  // Expert parallelism: ExpertAllToAll keeps, per MoE layer, the arrived rows' inputs and
  // activations for backward (`kept`) and shares one scratch and one staging buffer (`working`),
  // each sized with its 25% headroom. Rows: N K under uniform routing (each rank receives as
  // many rows as it sends on average).
  Acts expert_side_bytes(int b, int ep) {
    const int rows = int(std::max(16.0, 1.25 * double(b) * p.seq_len * c.topk));
    ExpertSide side;
    Arena kept, scratch;
    alloc_expert_side(side, kept, scratch, c, dt, rows, c.experts / ep);
    return {double(scratch.used) + double(rows) * c.hidden * cb, double(kept.used)};
  }
};

double ring_share(int n) { return n > 1 ? double(n - 1) / n : 0.0; }

}  // namespace

namespace {
PlanRow predict(Model& m, const PlanLayout& l) {
  const ModelConfig& c = m.c;
  const PlanConfig& p = m.p;
  const Hardware& hw = m.hw;
  const double share = hw.shared_host ? double(p.gpus) : 1.0;
  const double peak = (p.precision == Precision::FP32 ? hw.peak_fp32 : hw.peak_bf16);
  const double rate = peak * hw.efficiency / share;  // FLOP/s one device computes at
  const double mem_bw = hw.memory_bw / share;
  const double T = p.seq_len, N = double(l.micro_batch) * T, C = c.hidden, cb = m.cb;
  const int mb = l.micro_batches, edp = l.dp / l.ep;
  // Which links each group crosses (rank order tp fastest, then dp, then pp: dist/layout.h).
  auto link = [&](long long span) { return hw.shared_host || span <= hw.per_node ? hw.intra_bw : hw.inter_bw; };
  const double bw_tp = link(l.tp), bw_ep = link(1LL * l.tp * l.ep), bw_dp = link(1LL * l.tp * l.dp);
  const double bw_pp = link(1LL * l.tp * l.dp * 2);
  const std::vector<Stage>& st = m.stages_of(l.pp);
  const bool dual = l.schedule == PlanSchedule::DualPipe;

  struct StageTime { double F, B, W, tp_f, tp_b, ep_f, ep_b, pp_f, pp_b; };
  auto stage_time = [&](int s) {
    const Stage& g = st[size_t(s)];
    StageTime t{};
    t.F = N * g.fwd / l.tp / rate;
    const double re = l.recompute == Recompute::Selective ? g.recompute_sel
                      : l.recompute == Recompute::Block   ? g.recompute_block : 0.0;
    t.W = t.F;                              // weight gradients: the forward's GEMMs once more
    t.B = 2 * t.F + N * re / l.tp / rate;   // input + weight gradients (+ what is recomputed)
    // TP: the all-reduces where model code puts them (tp_pass_elements: per block o_proj's and
    // down_proj's N x C forward; backward the FFN's input gradient and the MLA latents'); each
    // sends 2 (tp-1)/tp of its bytes. Forward is this stage's share without backward's parts.
    const auto bytes = [&](const TpElements& e) { return e.act * cb + e.f32 * 4; };
    const TpElements fwd_only = [&] {
      TpElements e;
      e.act = 2 * N * C * ((g.embed ? 1 : 0) + 2 * g.blocks);
      return e;
    }();
    const TpElements all = tp_pass_elements(c, N, g.begin, g.end, g.embed, g.head,
                                            l.recompute == Recompute::Block);
    t.tp_f = ring_share(l.tp) * bytes(fwd_only) / bw_tp;
    t.tp_b = std::max(0.0, ring_share(l.tp) * bytes(all) / bw_tp - t.tp_f);
    // EP (docs/parallel.md): per MoE layer dispatch + combine forward and the same backward of
    // the rows going to other ranks, K per token, (ep-1)/ep of them leave; every tp rank routes
    // all N tokens (the router is replicated and each rank's experts hold its intermediate slice)
    const double a2a = 2 * N * c.topk * ring_share(l.ep) * C * cb / bw_ep;
    t.ep_f = g.moe * a2a;
    t.ep_b = g.moe * a2a + (l.recompute == Recompute::Block ? t.ep_f : 0);
    // PP: the N x C activation to the next stage forward, its gradient back (per tp rank N/tp)
    if (l.pp > 1) {
      t.pp_f = s < l.pp - 1 ? N / l.tp * C * cb / bw_pp : 0;
      t.pp_b = s > 0 ? N / l.tp * C * cb / bw_pp : 0;
    }
    return t;
  };

  PlanRow row;
  row.layout = l;
  // ---- time: the slowest device
  double pipe = 0, compute = 0, bubble = 0, tp = 0, ep = 0, pp = 0, last_b = 0;
  const int devices = dual ? l.pp / 2 : l.pp;
  for (int d = 0; d < devices; d++) {
    StageTime t = stage_time(d);
    if (dual) {  // device d holds stages d and pp-1-d; half the micro-batches run in each
      const StageTime u = stage_time(l.pp - 1 - d);
      auto avg = [](double a, double b) { return (a + b) / 2; };
      t = {avg(t.F, u.F), avg(t.B, u.B), avg(t.W, u.W), avg(t.tp_f, u.tp_f), avg(t.tp_b, u.tp_b),
           avg(t.ep_f, u.ep_f), avg(t.ep_b, u.ep_b), avg(t.pp_f, u.pp_f), avg(t.pp_b, u.pp_b)};
    }
    double total, bub, x_tp = t.tp_f + t.tp_b, x_ep, x_pp;
    if (dual) {
      // DualPipe: one micro-batch's forward chunk overlaps another's backward chunk, hiding the
      // all-to-all and the stage transfers behind computation (not TP's all-reduces)
      const double comp = t.F + t.B, hidden = t.ep_f + t.ep_b + t.pp_f + t.pp_b;
      const double fb = std::max(comp, hidden) + x_tp;
      x_ep = std::max(0.0, hidden - comp) * (t.ep_f + t.ep_b) / std::max(hidden, 1e-300);
      x_pp = std::max(0.0, hidden - comp) - x_ep;
      bub = (l.pp / 2 - 1) * (fb + t.B - 3 * t.W);  // DeepSeek-V3 Table 2
      total = mb * fb + bub;
    } else {
      // dsv3's expert all-to-all blocks (docs/parallel.md); 1F1B: (PP-1)(F+B) of bubble
      x_ep = t.ep_f + t.ep_b, x_pp = t.pp_f + t.pp_b;
      const double per = t.F + t.B + x_tp + x_ep + x_pp;
      bub = (l.pp - 1) * per;
      total = mb * per + bub;
    }
    if (total > pipe) {
      pipe = total, compute = mb * (t.F + t.B), bubble = bub;
      tp = mb * x_tp, ep = mb * x_ep, pp = mb * x_pp, last_b = t.B;
    }
  }
  // ---- memory: the device that needs the most
  double P_d = 0, P_e = 0;  // of the device with the most parameters (it reduces the most)
  // Gradients reduce and ZeRO shards over the dp (experts: edp) ranks of a stage, and under
  // DualPipe also over those of its mirror stage, which hold the same two stages
  // (train/grad_sync.h: groups dp_mirror, edp_mirror).
  const int n_dense = (dual ? 2 : 1) * l.dp, n_expert = (dual ? 2 : 1) * edp;
  const double master = cb < 4 ? 4 : 0;
  for (int d = 0; d < devices; d++) {
    std::vector<int> held = {d};
    if (dual) held.push_back(l.pp - 1 - d);
    // micro-batches in flight: 1F1B stage s holds pp - s; DualPipe pp + 1 (DeepSeek-V3 Table 2,
    // in units of one stage's); without a pipeline one. Each stage's working set once (DualPipe
    // overlaps a forward and a backward chunk: both of its stages' working sets), the further
    // in-flight micro-batches what they keep.
    const int in_flight = std::min(mb, l.pp == 1 ? 1 : dual ? l.pp + 1 : l.pp - d);
    double pd = 0, pe = 0, act = 0, kept = 0;
    for (int s : held) {
      pd += st[size_t(s)].split / l.tp + st[size_t(s)].repl;
      pe += st[size_t(s)].expert / l.ep / l.tp;  // each expert's intermediate dim split over tp
      Model::Acts a = m.activation_bytes(l.pp, s, l.micro_batch, l.recompute);
      if (l.ep > 1) {  // the exchange's own buffers, beside the workspace's (expert_parallel.h)
        const Model::Acts x = m.expert_side_bytes(l.micro_batch, l.ep);
        a.working += st[size_t(s)].moe * x.kept + x.working;
        // a micro-batch in flight keeps them unless its blocks are recomputed in backward
        if (l.recompute != Recompute::Block) a.kept += st[size_t(s)].moe * x.kept;
      }
      act += a.working, kept += a.kept / double(held.size());
    }
    act += (in_flight - double(held.size())) * kept;
    const double P = pd + pe, shard = pd / n_dense + pe / n_expert;
    PlanMemory mem;
    mem.weights = cb * P;
    // the whole fp32 gradient buffer stays under ZeRO-1 and 2 (docs/parallel.md); the shard
    // keeps an fp32 master (fp32 runs too: the weights are all-gathered from it), the moments
    // and the reduced gradient pieces (train/parallel_step.cpp, grad_sync.cpp)
    mem.grads = 4 * P;
    mem.optimizer = l.zero == 0 ? (master + 8) * P : (4 + 8 + 4) * shard;
    // sequence parallel's split of the activations over tp (dsv3's --tp does not split the N x C
    // rows yet, docs/parallel.md: for it this is a lower bound)
    mem.activations = act / l.tp;
    mem.in_flight = in_flight;
    mem.total = mem.weights + mem.grads + mem.optimizer + mem.activations;
    if (mem.total > row.memory.total) row.memory = mem;
    if (P > P_d + P_e) P_d = pd, P_e = pe;
  }
  // ---- data-parallel gradients (docs/parallel.md "Communication volume"; bench_dist.py checks
  // these against measured bytes): dense over dp, experts over edp
  double x_dp = 0;
  const double bucket = p.bucket_mb * kMiB;  // the last bucket's bytes (fp32)
  if (n_dense > 1) {
    const double window = last_b;  // the last micro-batch's backward hides the buckets
    if (l.zero == 0) {
      const double t = (2 * ring_share(n_dense) * 4 * P_d + 2 * ring_share(n_expert) * 4 * P_e) / bw_dp;
      const double last = 2 * ring_share(n_dense) * bucket / bw_dp;
      x_dp = std::max(t - window, std::min(t, last));
    } else {
      const double rs = (ring_share(n_dense) * 4 * P_d + ring_share(n_expert) * 4 * P_e) / bw_dp;
      const double ag = (ring_share(n_dense) * cb * P_d + ring_share(n_expert) * cb * P_e) / bw_dp;
      const double last = ring_share(n_dense) * bucket / bw_dp;
      const double one = std::max(rs - window, std::min(rs, last));
      x_dp = (l.zero == 2 ? mb : 1) * one + ag;  // the parameter all-gather follows the update
    }
  }
  // ---- the optimizer: AdamW streams master, gradient and two moments (read and write; the
  // compute copy written too), and the step zeroes and norms the whole gradient buffer
  const double updated = l.zero == 0 ? P_d + P_e : P_d / n_dense + P_e / n_expert;
  const double opt = ((28 + (cb < 4 ? cb : 0)) * updated + 8 * (P_d + P_e)) / mem_bw;
  PlanTime& tm = row.time;
  tm.compute = compute, tm.bubble = bubble, tm.tp = tp, tm.ep = ep, tm.pp = pp, tm.dp = x_dp;
  tm.optimizer = opt;
  tm.step = pipe + x_dp + opt;
  const double tokens_per_step = double(l.dp) * mb * l.micro_batch * T;
  row.tokens_per_s = tokens_per_step / tm.step;
  row.mfu = row.tokens_per_s * m.stats.train_flops_per_token / (peak * p.gpus / share);
  row.days = p.tokens / row.tokens_per_s / 86400;
  row.gpu_hours = p.tokens / row.tokens_per_s * p.gpus / 3600;
  row.cost = row.gpu_hours * p.gpu_hour_cost;
  return row;
}

std::string percent(double part, double whole) {
  char b[32];
  std::snprintf(b, sizeof b, "%.0f%%", 100 * part / whole);
  return b;
}

std::string reasons(const PlanRow& r, double usable) {
  const PlanTime& t = r.time;
  char b[512];
  std::snprintf(b, sizeof b,
                "step %.3g s = compute %s, bubble %s, exposed all-to-all %s, tp %s, pp %s, dp %s, "
                "optimizer %s; memory %.1f of %.1f GB (weights %.1f, grads %.1f, optimizer %.1f, "
                "activations %.1f for %d micro-batch%s in flight)",
                t.step, percent(t.compute, t.step).c_str(), percent(t.bubble, t.step).c_str(),
                percent(t.ep, t.step).c_str(), percent(t.tp, t.step).c_str(),
                percent(t.pp, t.step).c_str(), percent(t.dp, t.step).c_str(),
                percent(t.optimizer, t.step).c_str(), r.memory.total / 1e9, usable / 1e9,
                r.memory.weights / 1e9, r.memory.grads / 1e9, r.memory.optimizer / 1e9,
                r.memory.activations / 1e9, r.memory.in_flight, r.memory.in_flight == 1 ? "" : "es");
  return b;
}

std::vector<int> divisors(int n) {
  std::vector<int> d;
  for (int i = 1; i <= n; i++)
    if (n % i == 0) d.push_back(i);
  return d;
}

long long default_global_batch(const PlanConfig& p) {
  return p.global_batch > 0 ? p.global_batch : std::max(1LL, (4LL << 20) / p.seq_len);
}
}  // namespace

PlanRow predict_layout(const ModelConfig& c, const PlanConfig& p, const PlanLayout& l) {
  Model m(c, p);
  PlanRow r = predict(m, l);
  const double usable = m.hw.memory_bytes * (1 - p.memory_reserve);
  r.fits = r.memory.total <= usable;
  r.reasons = reasons(r, usable);
  return r;
}

Plan make_plan(const ModelConfig& c, const PlanConfig& p) {
  validate(c);
  validate(p);
  Model m(c, p);
  Plan plan;
  plan.hw = &m.hw;
  plan.usable_bytes = m.hw.memory_bytes * (1 - p.memory_reserve);
  const long long G = default_global_batch(p);
  plan.global_batch = G;
  DSV3_CHECK(p.seq_len <= c.max_seq, "--seq_len ", p.seq_len, " exceeds the model's max_seq ", c.max_seq);
  std::vector<Recompute> recs;
  for (Recompute r : {Recompute::None, Recompute::Selective, Recompute::Block})
    if (p.recompute == "any" || p.recompute == recompute_name(r)) recs.push_back(r);
  std::vector<PlanRow> fits;
  std::map<int, Plan::Depth> depths;
  PlanRow least;  // the smallest memory of any layout, for the message when nothing fits
  least.memory.total = HUGE_VAL;
  for (int tp : divisors(p.gpus)) {
    if ((p.tp && tp != p.tp) || c.heads % tp || (!m.hw.shared_host && tp > m.hw.per_node)) continue;
    for (int pp : divisors(p.gpus / tp)) {
      if ((p.pp && pp != p.pp) || pp > c.layers) continue;
      const int dp = p.gpus / tp / pp;
      if ((p.dp && dp != p.dp) || G % dp) continue;
      for (int ep : divisors(dp)) {
        if ((p.ep && ep != p.ep) || (c.experts > 0 ? c.experts % ep != 0 : ep != 1)) continue;
        for (int zero = 0; zero <= 2; zero++) {
          if ((p.zero >= 0 && zero != p.zero) || (zero > 0 && dp == 1)) continue;
          for (int b = 1; b <= G / dp; b *= 2) {
            if ((p.batch && b != p.batch) || (G / dp) % b) continue;
            const int mb = int(G / dp / b);
            for (PlanSchedule s : {PlanSchedule::None, PlanSchedule::OneFOneB, PlanSchedule::DualPipe}) {
              if ((pp == 1) != (s == PlanSchedule::None)) continue;
              if (p.schedule != "any" && (pp == 1 || p.schedule != plan_schedule_name(s))) continue;
              // DualPipe's reference implementation needs an even pp and at least 2 pp
              // micro-batches (half enter from each end)
              if (s == PlanSchedule::DualPipe && (pp % 2 || mb < 2 * pp || mb % 2)) continue;
              for (Recompute r : recs) {
                const PlanLayout l{dp, tp, pp, ep, zero, r, b, mb, s};
                PlanRow row = predict(m, l);
                plan.enumerated++;
                row.fits = row.memory.total <= plan.usable_bytes;
                auto& dep = depths.try_emplace(pp, Plan::Depth{pp, HUGE_VAL, false}).first->second;
                dep.least_bytes = std::min(dep.least_bytes, row.memory.total);
                dep.fits = dep.fits || row.fits;
                if (row.memory.total < least.memory.total) least = row;
                if (row.fits) fits.push_back(row);
              }
            }
          }
        }
      }
    }
  }
  DSV3_CHECK(plan.enumerated > 0, "no layout of ", p.gpus, " devices for this model: dp x tp x pp "
             "must equal --gpus with tp dividing the ", c.heads, " heads (and at most ",
             m.hw.per_node, " per node), pp at most the ", c.layers, " layers, dp dividing the "
             "global batch of ", G, " sequences", c.experts > 0 ? " and ep dividing dp and the experts" : "",
             " (check the fixed --dp/--tp/--pp/--ep/--batch/--schedule, --global_batch and --gpus)");
  for (auto& [pp, d] : depths) plan.depths.push_back(d);
  plan.fitting = (long long)fits.size();
  if (fits.empty()) {
    char b[160];
    std::snprintf(b, sizeof b, "%.1f GB > %.1f GB usable", least.memory.total / 1e9,
                  plan.usable_bytes / 1e9);
    fail("none of the ", plan.enumerated, " layouts of ", p.gpus, " ", p.gpu, " fits: the smallest (",
         least.layout.text(), ") needs ", b, " per device (", m.hw.memory_bytes / 1e9,
         " GB less the ", p.memory_reserve * 100, "% reserve). Use more devices, devices with "
         "more memory, or a shorter --seq_len");
  }
  // Fastest first; step times within 1% of each other (one bucket of a 1% log scale) are a tie
  // the model cannot resolve, so the simpler layout (fewer parallel dimensions, then the larger
  // micro-batch, then less memory) goes first.
  auto bucket = [](const PlanRow& r) { return std::floor(std::log(r.time.step) / std::log(1.01)); };
  auto dims = [](const PlanLayout& l) { return (l.pp > 1) + (l.tp > 1) + (l.ep > 1) + (l.zero > 0); };
  std::sort(fits.begin(), fits.end(), [&](const PlanRow& a, const PlanRow& b) {
    if (bucket(a) != bucket(b)) return bucket(a) < bucket(b);
    if (dims(a.layout) != dims(b.layout)) return dims(a.layout) < dims(b.layout);
    // larger micro-batches run GEMMs of more rows, faster in practice (the model does not see it)
    if (a.layout.micro_batch != b.layout.micro_batch) return a.layout.micro_batch > b.layout.micro_batch;
    if (a.memory.total != b.memory.total) return a.memory.total < b.memory.total;
    return a.layout.text() < b.layout.text();
  });
  // One row per arrangement of devices (dp, tp, pp, ep, schedule, ZeRO): its best recompute
  // choice and micro-batch; the variants would crowd out the alternatives.
  std::vector<std::tuple<int, int, int, int, int, int>> shown;
  for (PlanRow& r : fits) {
    if (int(plan.best.size()) == p.top) break;
    const PlanLayout& l = r.layout;
    const auto key = std::make_tuple(l.dp, l.tp, l.pp, l.ep, int(l.schedule), l.zero);
    if (std::find(shown.begin(), shown.end(), key) != shown.end()) continue;
    shown.push_back(key);
    r.reasons = reasons(r, plan.usable_bytes);
    plan.best.push_back(r);
  }
  const PlanRow& top = plan.best[0];
  if (top.layout.pp > 1 && top.time.bubble > 0.1 * top.time.step)
    plan.notes.push_back("the pipeline bubble is " + percent(top.time.bubble, top.time.step) +
                         " of the step: a larger --global_batch gives more micro-batches per step");
  if (!m.hw.shared_host)
    plan.notes.push_back("GPU step times assume the FLOPs run at " + percent(m.hw.efficiency, 1) +
                         " of dense peak while computing (an assumption: src/train/hardware.cpp)");
  return plan;
}

nlohmann::json plan_json(const ModelConfig& c, const PlanConfig& p, const Plan& plan) {
  const ModelStats s = model_stats(c, p.seq_len);
  nlohmann::json rows = nlohmann::json::array();
  for (const PlanRow& r : plan.best) {
    const PlanLayout& l = r.layout;
    rows.push_back({{"layout", {{"dp", l.dp}, {"tp", l.tp}, {"pp", l.pp}, {"ep", l.ep},
                                {"zero", l.zero}, {"recompute", recompute_name(l.recompute)},
                                {"micro_batch", l.micro_batch}, {"micro_batches", l.micro_batches},
                                {"schedule", plan_schedule_name(l.schedule)}, {"text", l.text()}}},
                    {"memory_bytes", {{"weights", r.memory.weights}, {"grads", r.memory.grads},
                                      {"optimizer", r.memory.optimizer},
                                      {"activations", r.memory.activations},
                                      {"in_flight", r.memory.in_flight}, {"total", r.memory.total}}},
                    {"step_s", {{"compute", r.time.compute}, {"bubble", r.time.bubble},
                                {"tp", r.time.tp}, {"ep", r.time.ep}, {"pp", r.time.pp},
                                {"dp", r.time.dp}, {"optimizer", r.time.optimizer},
                                {"total", r.time.step}}},
                    {"tokens_per_s", r.tokens_per_s}, {"mfu", r.mfu}, {"days", r.days},
                    {"gpu_hours", r.gpu_hours}, {"cost_usd", r.cost}, {"reasons", r.reasons}});
  }
  nlohmann::json depths = nlohmann::json::array();
  for (const auto& d : plan.depths)
    depths.push_back({{"pp", d.pp}, {"least_bytes", d.least_bytes}, {"fits", d.fits}});
  const Hardware& h = *plan.hw;
  return {{"gpu", h.name}, {"gpus", p.gpus}, {"tokens", p.tokens}, {"seq_len", p.seq_len},
          {"global_batch", plan.global_batch}, {"precision", precision_name(p.precision)},
          {"params", s.params}, {"train_flops_per_token", s.train_flops_per_token},
          {"hardware", {{"what", h.what}, {"peak_bf16", h.peak_bf16}, {"peak_fp32", h.peak_fp32},
                        {"efficiency", h.efficiency}, {"memory_bytes", h.memory_bytes},
                        {"usable_bytes", plan.usable_bytes}, {"memory_bw", h.memory_bw},
                        {"intra_bw", h.intra_bw}, {"inter_bw", h.inter_bw},
                        {"per_node", h.per_node}, {"shared_host", h.shared_host}}},
          {"enumerated", plan.enumerated}, {"fitting", plan.fitting}, {"best", rows},
          {"depths", depths}, {"notes", plan.notes}};
}

std::string plan_text(const ModelConfig& c, const PlanConfig& p, const Plan& plan) {
  const ModelStats s = model_stats(c, p.seq_len);
  const Hardware& h = *plan.hw;
  std::string out;
  char b[1024];
  std::snprintf(b, sizeof b,
                "plan: %.4g params on %d x %s (%s)\n  %.4g tokens, seq_len %d, global batch %lld "
                "sequences, %s, %.4g FLOPs/token\n  %lld layouts enumerated, %lld fit in %.1f GB "
                "per device\n\n",
                double(s.params), p.gpus, h.name, h.what, p.tokens, p.seq_len, plan.global_batch,
                precision_name(p.precision), s.train_flops_per_token, plan.enumerated,
                plan.fitting, plan.usable_bytes / 1e9);
  out += b;
  std::snprintf(b, sizeof b, "%-3s %-72s %9s %11s %6s %9s %12s%s\n", "#", "layout", "GB/dev",
                "tokens/s", "MFU", "days", "GPU-hours", p.gpu_hour_cost > 0 ? "      cost USD" : "");
  out += b;
  for (size_t i = 0; i < plan.best.size(); i++) {
    const PlanRow& r = plan.best[i];
    std::snprintf(b, sizeof b, "%-3zu %-72s %9.1f %11.4g %5.1f%% %9.3g %12.4g", i + 1,
                  r.layout.text().c_str(), r.memory.total / 1e9, r.tokens_per_s, 100 * r.mfu,
                  r.days, r.gpu_hours);
    out += b;
    if (p.gpu_hour_cost > 0) {
      std::snprintf(b, sizeof b, " %14.4g", r.cost);
      out += b;
    }
    out += "\n    " + r.reasons + "\n";
  }
  out += "\npipeline depth: least memory per device of any layout\n";
  for (const auto& d : plan.depths) {
    std::snprintf(b, sizeof b, "  pp %-3d %9.1f GB  %s\n", d.pp, d.least_bytes / 1e9,
                  d.fits ? "fits" : "does not fit");
    out += b;
  }
  for (const auto& n : plan.notes) out += "note: " + n + "\n";
  return out;
}

}  // namespace dsv3
