#include "optim/adamw.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <set>

#include "core/check.h"
#include "ops/optimizer.h"

namespace dsv3 {

const char* optimizer_name(OptimizerKind k) {
  switch (k) {
    case OptimizerKind::AdamW: return "adamw";
    case OptimizerKind::Lamb: return "lamb";
    case OptimizerKind::Muon: return "muon";
  }
  return "?";
}
OptimizerKind parse_optimizer(const std::string& s) {
  if (s == "adamw") return OptimizerKind::AdamW;
  if (s == "lamb") return OptimizerKind::Lamb;
  if (s == "muon") return OptimizerKind::Muon;
  fail("unknown optimizer '", s, "' (expected adamw, lamb or muon)");
}

namespace {
const char* const kGroups[] = {"embed", "attn", "dense", "experts", "shared", "router", "norm", "head", "mtp"};

std::map<std::string, double> parse_lr_groups(const std::string& text) {
  std::map<std::string, double> out;
  if (text.empty()) return out;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    const std::string item = text.substr(start, end - start);
    start = end + 1;
    if (item.empty()) continue;
    const size_t eq = item.find('=');
    DSV3_CHECK(eq != std::string::npos, "--lr_groups: '", item, "' is not group=multiplier "
               "(e.g. embed=0.5,head=0.5)");
    const std::string g = item.substr(0, eq);
    std::string known;
    for (const char* k : kGroups) known += std::string(known.empty() ? "" : ", ") + k;
    DSV3_CHECK(std::find(std::begin(kGroups), std::end(kGroups), g) != std::end(kGroups),
               "--lr_groups: unknown group '", g, "' (groups: ", known, ")");
    const double v = parse_float("lr_groups", item.substr(eq + 1));
    DSV3_CHECK(v >= 0 && std::isfinite(v), "--lr_groups: ", g, " multiplier must be >= 0, got ", v);
    DSV3_CHECK(out.emplace(g, v).second, "--lr_groups: ", g, " given twice");
  }
  return out;
}

int layer_of(const std::string& name) {  // "model.layers.N." -> N, else -1
  if (name.rfind("model.layers.", 0) != 0) return -1;
  return std::stoi(name.substr(13));
}
}  // namespace

std::string lr_group_of(const std::string& n) {
  auto has = [&](const char* s) { return n.find(s) != std::string::npos; };
  if (n == "model.embed_tokens.weight") return "embed";
  if (n == "lm_head.weight") return "head";
  if (has("norm.weight")) return "norm";  // *_layernorm, enorm, hnorm, model.norm, shared_head.norm
  if (has(".self_attn.")) return "attn";
  if (has(".mlp.experts.")) return "experts";
  if (has(".mlp.shared_experts.")) return "shared";
  if (has(".mlp.gate.weight")) return "router";
  if (has(".mlp.")) return "dense";
  if (has(".eh_proj.")) return "mtp";
  fail("no learning-rate group for parameter ", n, " (internal error)");
}

std::vector<float> lr_multipliers(const AdamWConfig& c, const ParamTable& t) {
  const auto groups = parse_lr_groups(c.lr_groups);
  std::set<int> mtp_layers;
  int layers = 0;
  for (const ParamInfo& p : t.list)
    if (p.name.find(".eh_proj.") != std::string::npos) mtp_layers.insert(layer_of(p.name));
  for (const ParamInfo& p : t.list)
    if (layer_of(p.name) >= 0 && !mtp_layers.count(layer_of(p.name))) layers = std::max(layers, layer_of(p.name) + 1);
  std::vector<float> out;
  for (const ParamInfo& p : t.list) {
    if (!p.trainable()) continue;
    const auto g = groups.find(lr_group_of(p.name));
    double m = g == groups.end() ? 1.0 : g->second;
    const int l = layer_of(p.name);
    if (p.name == "model.embed_tokens.weight") m *= std::pow(c.lr_depth_decay, layers);
    else if (l >= 0 && !mtp_layers.count(l)) m *= std::pow(c.lr_depth_decay, layers - 1 - l);
    out.push_back(float(m));
  }
  return out;
}

void check_resume_optimizer(const AdamWConfig& c, const nlohmann::json& train) {
  std::string saved = "adamw";  // checkpoints from before the choice existed
  if (train.contains("settings") && train["settings"].contains("optimizer") &&
      train["settings"]["optimizer"].contains("optimizer"))
    saved = train["settings"]["optimizer"]["optimizer"].get<std::string>();
  DSV3_CHECK(saved == optimizer_name(c.kind), "the checkpoint's optimizer state is ", saved,
             "'s; --optimizer ", optimizer_name(c.kind), " cannot continue it (start a new run, "
             "or resume with --optimizer ", saved, ")");
}

const std::vector<FieldSpec>& optimizer_fields() {
  using A = AdamWConfig;
  static const std::vector<FieldSpec> f = {
      choice("optimizer", &A::kind, "adamw|lamb|muon",
             "adamw; lamb (per-tensor trust ratio); muon (2-D hidden weights; AdamW for "
             "embedding, head, norms)", optimizer_name, parse_optimizer),
      field("beta1", &A::beta1, "AdamW beta1", in_range_open_hi(0, 1)),
      field("beta2", &A::beta2, "AdamW beta2", in_range_open_hi(0, 1)),
      field("eps", &A::eps, "AdamW epsilon", above(0)),
      field("weight_decay", &A::weight_decay, "decoupled weight decay (2-D weights only)", at_least(0)),
      field("clip", &A::clip, "clip the global gradient norm to this (0 = off)", at_least(0)),
      field("lr_groups", &A::lr_groups,
            "learning-rate multipliers per group, e.g. embed=0.5,attn=1,experts=1,head=0.5 "
            "(groups: embed attn dense experts shared router norm head mtp)"),
      field("lr_depth_decay", &A::lr_depth_decay,
            "layer-wise decay: block l of L gets lr x decay^(L-1-l), the embedding decay^L", in_range_open_lo(0, 1)),
      field("grad_noise", &A::grad_noise,
            "annealed gradient noise eta: variance eta / (1 + t)^gamma (0 = off)", at_least(0)),
      field("grad_noise_gamma", &A::grad_noise_gamma, "gradient noise decay exponent gamma", at_least(0)),
      field("grad_noise_start", &A::grad_noise_start, "gradient noise from this update on", at_least(0)),
      field("muon_momentum", &A::muon_momentum, "Muon momentum", in_range_open_hi(0, 1)),
      field("muon_nesterov", &A::muon_nesterov, "Muon Nesterov momentum"),
      field("muon_ns_steps", &A::muon_ns_steps, "Muon Newton-Schulz iterations", in_range(1, 20)),
  };
  return f;
}

void validate(const AdamWConfig& c) {
  DSV3_CHECK(c.beta1 >= 0 && c.beta1 < 1 && c.beta2 >= 0 && c.beta2 < 1, "betas must be in [0, 1)");
  DSV3_CHECK(c.eps > 0, "eps must be positive");
  DSV3_CHECK(c.weight_decay >= 0, "weight_decay must be >= 0");
  DSV3_CHECK(c.clip >= 0, "clip must be >= 0");
  parse_lr_groups(c.lr_groups);
  DSV3_CHECK(c.lr_depth_decay > 0 && c.lr_depth_decay <= 1, "lr_depth_decay must be in (0, 1], got ",
             c.lr_depth_decay);
  DSV3_CHECK(c.grad_noise >= 0 && c.grad_noise_gamma >= 0 && c.grad_noise_start >= 0,
             "grad_noise, grad_noise_gamma and grad_noise_start must be >= 0");
  DSV3_CHECK(c.muon_momentum >= 0 && c.muon_momentum < 1, "muon_momentum must be in [0, 1)");
  DSV3_CHECK(c.muon_ns_steps >= 1 && c.muon_ns_steps <= 20, "muon_ns_steps must be in [1, 20]");
}

AdamW::AdamW(const AdamWConfig& c, const ParamTable& t, Device device)
    : cfg_(c), spans_(trainable_spans(t)), m_(device, DType::F32, t.total), v_(device, DType::F32, t.total) {
  validate(c);
  const std::vector<float> mult = lr_multipliers(c, t);
  size_t k = 0;
  for (const ParamInfo& p : t.list) {
    if (!p.trainable()) continue;
    ParamSpan& s = spans_[k];
    s.lr_mult = mult[k++];
    // Muon: 2-D hidden weights; AdamW: embedding, head, norms, 1-D (Moonlight's split)
    const bool hidden_matrix = p.kind == ParamKind::Matrix && p.shape.size() == 2 &&
                               p.name != "model.embed_tokens.weight" && p.name != "lm_head.weight";
    if (c.kind == OptimizerKind::Muon && hidden_matrix)
      muon_mats_.push_back({s.offset, int(p.shape[0]), int(p.shape[1]), s.lr_mult});
    else
      adam_spans_.push_back(s);
  }
  backend::zero(Exec{device}, m_.view());
  backend::zero(Exec{device}, v_.view());
}

double AdamW::noise_std(int64_t t) const {
  if (cfg_.grad_noise <= 0 || t - 1 < cfg_.grad_noise_start) return 0;
  const double tt = double(t - 1 - cfg_.grad_noise_start);
  return std::sqrt(cfg_.grad_noise / std::pow(1.0 + tt, cfg_.grad_noise_gamma));
}

AdamW::AdamW(const AdamWConfig& c, std::vector<ParamSpan> spans, size_t n, Device device)
    : cfg_(c), spans_(std::move(spans)), m_(device, DType::F32, std::max<size_t>(n, 1)),
      v_(device, DType::F32, std::max<size_t>(n, 1)) {}

void AdamW::step(const Exec& ex, const Tensor& master, const Tensor& grads, const Tensor& compute,
                 double lr, double grad_scale) {
  const int64_t t = ++updates_;
  const GradNoise noise{noise_std(t), cfg_.noise_seed};
  const AdamwHyper h{lr, cfg_.beta1, cfg_.beta2, cfg_.eps, cfg_.weight_decay, t, grad_scale, noise};
  switch (cfg_.kind) {
    case OptimizerKind::AdamW:
      adamw_update(ex, master, grads, m_.view(), v_.view(), compute, spans_, h);
      break;
    case OptimizerKind::Lamb:
      lamb_update(ex, master, grads, m_.view(), v_.view(), compute, spans_, h);
      break;
    case OptimizerKind::Muon:
      adamw_update(ex, master, grads, m_.view(), v_.view(), compute, adam_spans_, h);
      muon_update(ex, master, grads, m_.view(), compute, muon_mats_,
                  {lr, cfg_.muon_momentum, cfg_.weight_decay, cfg_.muon_nesterov, cfg_.muon_ns_steps,
                   grad_scale, noise, t});
      break;
  }
}

double global_norm(const Exec& ex, const Tensor& grads, const std::vector<ParamSpan>& spans) {
  return std::sqrt(sum_squares(ex, grads, spans));
}

}  // namespace dsv3
