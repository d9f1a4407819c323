#include "model/prune.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>

#include "core/check.h"
#include "model/model.h"

namespace dsv3 {

const std::vector<FieldSpec>& prune_fields() {
  using P = PruneConfig;
  static const std::vector<FieldSpec> f = {
      field("ffn_keep", &P::ffn_keep, "fraction of the dense FFN channels kept (L1 norm)",
            in_range_open_lo(0, 1)),
      field("expert_ffn_keep", &P::expert_ffn_keep,
            "fraction of every routed and shared expert's channels kept (-1: ffn_keep)",
            in_range(-1, 1)),
      field("experts_keep", &P::experts_keep,
            "fraction of the routed experts kept per MoE layer (measured load x L1 norm)",
            in_range_open_lo(0, 1)),
  };
  return f;
}

void validate(const PruneConfig& p) {
  DSV3_CHECK(p.ffn_keep > 0 && p.ffn_keep <= 1, "ffn_keep must be in (0, 1], got ", p.ffn_keep);
  DSV3_CHECK(p.expert_ffn_keep < 0 || (p.expert_ffn_keep > 0 && p.expert_ffn_keep <= 1),
             "expert_ffn_keep must be in (0, 1] (or < 0 for ffn_keep), got ", p.expert_ffn_keep);
  DSV3_CHECK(p.experts_keep > 0 && p.experts_keep <= 1, "experts_keep must be in (0, 1], got ",
             p.experts_keep);
}

std::vector<std::vector<int64_t>> measure_expert_loads(const ModelWeights& w,
                                                       const std::vector<int32_t>& tokens, Dims d,
                                                       int max_batches) {
  const ModelConfig& c = w.config();
  DSV3_CHECK(tokens.size() >= size_t(d.T) + 1, "calibration data has ", tokens.size(),
             " tokens; one sequence of ", d.T, " needs ", d.T + 1, " (lower --seq_len)");
  const Dims e{int(std::min<size_t>(d.B, (tokens.size() - 1) / d.T)), d.T};
  const size_t span = size_t(e.B) * e.T;
  size_t nb = (tokens.size() - 1) / span;
  if (max_batches > 0) nb = std::min<size_t>(nb, size_t(max_batches));
  WorkspaceConfig wc;
  wc.max = e;
  wc.backward = false;
  Workspace ws(c, w.dtype(), w.device(), wc);
  std::vector<std::vector<int64_t>> loads(moe_layer_names(c).size(),
                                          std::vector<int64_t>(c.experts, 0));
  std::vector<int32_t> batch(size_t(e.B) * (e.T + 1));
  const TrainingLossConfig loss;
  for (size_t i = 0; i < nb; i++) {
    for (int b = 0; b < e.B; b++)
      std::copy_n(tokens.data() + i * span + size_t(b) * e.T, e.T + 1,
                  batch.data() + size_t(b) * (e.T + 1));
    for (int32_t id : batch)
      DSV3_CHECK(id >= 0 && id < c.vocab, "calibration token ", id, " is outside the vocabulary (",
                 c.vocab, ")");
    const LossReport r = forward(w, ws, loss, {e, batch.data()});  // MTP on: its layers count too
    for (size_t l = 0; l < r.moe.size(); l++)
      for (int x = 0; x < c.experts; x++) loads[l][x] += r.moe[l].loads[x];
  }
  return loads;
}

namespace {

int keep_count(int n, double keep) { return std::clamp(int(std::lround(n * keep)), 1, n); }

// The k largest scores' indices, in ascending index order (a stable choice: ties keep the lower
// index).
std::vector<int> top_sorted(const std::vector<double>& score, int k) {
  std::vector<int> idx(score.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return score[a] > score[b]; });
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

double l1(const float* p, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; i++) s += std::fabs(double(p[i]));
  return s;
}

struct Source {
  const ParamTable& t;
  const std::vector<float>& p;
  const float* at(const std::string& name) const { return p.data() + t.at(name).offset; }
  // L1 importance of the D channels of the SwiGLU at prefix (gate/up (D, C), down (C, D)).
  std::vector<double> channels(const std::string& prefix, int D, int C) const {
    const float *g = at(prefix + ".gate_proj.weight"), *u = at(prefix + ".up_proj.weight");
    const float* dn = at(prefix + ".down_proj.weight");
    std::vector<double> s(D);
    for (int j = 0; j < D; j++) {
      s[j] = l1(g + size_t(j) * C, C) + l1(u + size_t(j) * C, C);
      for (int r = 0; r < C; r++) s[j] += std::fabs(double(dn[size_t(r) * D + j]));
    }
    return s;
  }
  double expert_l1(const std::string& prefix, int D, int C) const {
    return l1(at(prefix + ".gate_proj.weight"), size_t(D) * C) +
           l1(at(prefix + ".up_proj.weight"), size_t(D) * C) +
           l1(at(prefix + ".down_proj.weight"), size_t(D) * C);
  }
};

std::string layer_prefix(int hf) { return "model.layers." + std::to_string(hf); }

}  // namespace

PrunedModel prune_model(const ModelConfig& c, const std::vector<float>& params,
                        const std::vector<std::vector<int64_t>>& loads, const PruneConfig& p) {
  validate(p);
  validate(c);
  const ParamTable t = build_param_table(c);
  DSV3_CHECK(params.size() == t.total, "weights have ", params.size(), " values, the model ", t.total);
  const Source src{t, params};
  const double eff = p.expert_ffn_keep < 0 ? p.ffn_keep : p.expert_ffn_keep;
  PrunedModel out;
  ModelConfig& n = out.config;
  n = c;
  if (c.dense_layers > 0 || c.experts == 0) n.dense_inter = keep_count(c.dense_inter, p.ffn_keep);
  if (c.experts > 0) n.moe_inter = keep_count(c.moe_inter, eff);

  // ---- experts: per MoE layer, the kept ids (old numbering, ascending)
  std::map<int, std::vector<int>> kept_experts;  // hf layer -> old expert ids
  std::vector<int> moe_hf;                       // moe_layer_names order
  for (int l = 0; l < c.layers; l++)
    if (c.is_moe_layer(l)) moe_hf.push_back(l);
  if (c.experts > 0)
    for (int k = 1; k <= c.mtp_depth; k++) moe_hf.push_back(c.layers + k - 1);
  nlohmann::json rep_layers = nlohmann::json::array();
  if (c.experts > 0) {
    const int per = c.experts / c.groups, keep = keep_count(per, p.experts_keep);
    n.experts = keep * c.groups;
    if (n.experts < c.experts) {
      DSV3_CHECK(loads.size() == moe_hf.size(), "expert loads for ", loads.size(),
                 " MoE layers, the model has ", moe_hf.size(), " (internal error)");
      DSV3_CHECK(c.topk <= c.topk_groups * keep && (c.groups == 1 || keep >= 2),
                 "--experts_keep ", p.experts_keep, " leaves ", keep, " expert(s) in each of ",
                 c.groups, " groups, too few for top-", c.topk, " routing over ", c.topk_groups,
                 " group(s)", c.groups > 1 ? " (and group scoring needs 2 per group)" : "",
                 ": raise --experts_keep");
    }
    for (size_t i = 0; i < moe_hf.size(); i++) {
      const int hf = moe_hf[i];
      const std::string pre = layer_prefix(hf) + ".mlp.experts.";
      std::vector<double> norm(c.experts), score(c.experts);
      for (int e = 0; e < c.experts; e++)
        norm[e] = src.expert_l1(pre + std::to_string(e), c.moe_inter, c.hidden);
      const double mean_norm = std::accumulate(norm.begin(), norm.end(), 0.0) / c.experts;
      int64_t total = 0;
      if (n.experts < c.experts)
        for (int64_t x : loads[i]) total += x;
      std::vector<int> ids;
      for (int g = 0; g < c.groups; g++) {
        std::vector<double> s(per);
        for (int j = 0; j < per; j++) {
          const int e = g * per + j;
          const double share = total > 0 ? double(loads[i][e]) / double(total) : 1.0 / c.experts;
          s[j] = score[e] = share * (mean_norm > 0 ? norm[e] / mean_norm : 1.0);
        }
        for (int j : top_sorted(s, keep)) ids.push_back(g * per + j);
      }
      kept_experts[hf] = ids;
      nlohmann::json rec = {{"layer", hf}, {"kept", ids}};
      if (n.experts < c.experts) rec["loads"] = loads[i], rec["scores"] = score;
      rep_layers.push_back(rec);
    }
  }
  try {
    validate(n);
  } catch (const Error& e) {
    fail("the pruned model would be invalid: ", e.what(), " (keep more)");
  }

  // ---- channels of every SwiGLU the pruned model keeps (old prefix -> kept channels)
  std::map<std::string, std::vector<int>> kept_channels;
  auto plan_ffn = [&](const std::string& prefix, int D, int Dn) {
    kept_channels[prefix] = top_sorted(src.channels(prefix, D, c.hidden), Dn);
  };
  auto plan_block = [&](int hf, bool moe) {
    const std::string pre = layer_prefix(hf) + ".mlp";
    if (!moe) return plan_ffn(pre, c.dense_inter, n.dense_inter);
    for (int e : kept_experts[hf]) plan_ffn(pre + ".experts." + std::to_string(e), c.moe_inter, n.moe_inter);
    if (c.shared_experts > 0)
      plan_ffn(pre + ".shared_experts", c.shared_experts * c.moe_inter, c.shared_experts * n.moe_inter);
  };
  for (int l = 0; l < c.layers; l++) plan_block(l, c.is_moe_layer(l));
  for (int k = 1; k <= c.mtp_depth; k++) plan_block(c.layers + k - 1, c.experts > 0);

  // ---- the new parameters, tensor by tensor from the old ones
  const ParamTable nt = build_param_table(n);
  out.params.assign(nt.total, 0.0f);
  const std::string exp_tag = ".mlp.experts.";
  for (const ParamInfo& q : nt.list) {
    float* dst = out.params.data() + q.offset;
    std::string name = q.name;
    int hf = -1;
    if (name.rfind("model.layers.", 0) == 0) hf = std::stoi(name.substr(13));
    // a kept expert's new id -> its old id
    if (const size_t at = name.find(exp_tag); at != std::string::npos) {
      const size_t id0 = at + exp_tag.size(), id1 = name.find('.', id0);
      const int old = kept_experts.at(hf)[std::stoi(name.substr(id0, id1 - id0))];
      name = name.substr(0, id0) + std::to_string(old) + name.substr(id1);
    }
    const ParamInfo& o = t.at(name);
    const float* s = params.data() + o.offset;
    const size_t dot = name.rfind('.', name.size() - 8);  // before "<proj>.weight"
    const std::string base = dot == std::string::npos ? "" : name.substr(0, dot);
    const auto ch = kept_channels.find(base);
    if (ch != kept_channels.end()) {  // a SwiGLU's gate/up (rows) or down (columns)
      const std::vector<int>& keep = ch->second;
      const int C = c.hidden;
      if (name.ends_with(".down_proj.weight")) {
        const int D = int(o.shape[1]);
        for (int r = 0; r < C; r++)
          for (size_t j = 0; j < keep.size(); j++) dst[r * keep.size() + j] = s[size_t(r) * D + keep[j]];
      } else {
        for (size_t j = 0; j < keep.size(); j++) std::copy_n(s + size_t(keep[j]) * C, C, dst + j * C);
      }
      continue;
    }
    if (name.ends_with(".mlp.gate.weight") || name.ends_with(".mlp.gate.e_score_correction_bias")) {
      const std::vector<int>& ids = kept_experts.at(hf);
      const size_t row = name.ends_with(".weight") ? size_t(c.hidden) : 1;
      for (size_t j = 0; j < ids.size(); j++) std::copy_n(s + size_t(ids[j]) * row, row, dst + j * row);
      continue;
    }
    DSV3_CHECK(o.shape == q.shape, "internal: ", name, " changed shape without a pruning rule");
    std::copy_n(s, q.numel, dst);
  }
  auto count = [](const ParamTable& x) {
    size_t k = 0;
    for (const ParamInfo& q : x.list) k += q.numel;
    return k;
  };
  out.report = {{"ffn_keep", p.ffn_keep}, {"expert_ffn_keep", eff}, {"experts_keep", p.experts_keep},
                {"dense_inter", {c.dense_inter, n.dense_inter}}, {"moe_inter", {c.moe_inter, n.moe_inter}},
                {"experts", {c.experts, n.experts}}, {"params", {count(t), count(nt)}},
                {"moe_layers", rep_layers}};
  return out;
}

}  // namespace dsv3
