#include "checkpoint/hf.h"

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>

#include "checkpoint/safetensors.h"
#include "core/check.h"
#include "core/io.h"

namespace dsv3 {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// Typed access to config.json keys. A key holding null counts as absent.
struct Keys {
  const json& j;
  const std::string& where;

  const json* get(const char* key) const {
    auto it = j.find(key);
    return it == j.end() || it->is_null() ? nullptr : &*it;
  }
  [[noreturn]] void wrong(const char* key, const char* want, const json& v) const {
    fail(where, ": key '", key, "' must be ", want, ", got ",
         v.is_primitive() ? v.dump() : std::string("a ") + v.type_name());
  }
  void require(const char* key) const {
    DSV3_CHECK(j.contains(key), where, ": missing required key '", key, "'");
  }
  int to_int(const char* key, const json& v) const {
    double x;
    if (v.is_number_integer()) {
      if (v.is_number_unsigned() && v.get<uint64_t>() > 2147483647ull) wrong(key, "an int32", v);
      x = double(v.get<int64_t>());
    } else if (v.is_number_float()) {
      x = v.get<double>();
      if (x != std::floor(x)) wrong(key, "an integer", v);
    } else {
      wrong(key, "an integer", v);
    }
    if (x < -2147483648.0 || x > 2147483647.0) wrong(key, "an int32", v);
    return int(x);
  }
  int req_int(const char* key) const {
    require(key);
    const json* v = get(key);
    if (!v) wrong(key, "an integer", j.at(key));
    return to_int(key, *v);
  }
  // Present and null -> null_value; absent -> error.
  int req_int_or_null(const char* key, int null_value) const {
    require(key);
    const json* v = get(key);
    return v ? to_int(key, *v) : null_value;
  }
  int opt_int(const char* key, int def) const {
    const json* v = get(key);
    return v ? to_int(key, *v) : def;
  }
  double opt_num(const char* key, double def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_number()) wrong(key, "a number", *v);
    return v->get<double>();
  }
  bool opt_bool(const char* key, bool def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_boolean()) wrong(key, "true or false", *v);
    return v->get<bool>();
  }
  std::string opt_str(const char* key, const std::string& def) const {
    const json* v = get(key);
    if (!v) return def;
    if (!v->is_string()) wrong(key, "a string", *v);
    return v->get<std::string>();
  }
};

std::string list_names(const std::vector<std::string>& names, size_t limit = 10) {
  std::string s;
  for (size_t i = 0; i < names.size() && i < limit; i++) s += (i ? ", " : "") + names[i];
  if (names.size() > limit) s += cat(", ... (", names.size() - limit, " more)");
  return s;
}

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

json parse_json_file(const std::string& path) {
  std::string text = read_file(path);
  try {
    return json::parse(text);
  } catch (const json::parse_error& e) {
    fail(path, ": not valid JSON (error at byte ", e.byte, ")");
  } catch (const json::exception& e) {  // out_of_range: a number like 1e999
    fail(path, ": not valid JSON: ", json_error_text(e));
  }
}

}  // namespace

nlohmann::ordered_json hf_config_json(const ModelConfig& c, DType dtype) {
  nlohmann::ordered_json j;
  j["architectures"] = {"DeepseekV3ForCausalLM"};
  j["model_type"] = "deepseek_v3";
  j["vocab_size"] = c.vocab;
  j["hidden_size"] = c.hidden;
  j["intermediate_size"] = c.dense_inter;
  j["moe_intermediate_size"] = c.moe_inter;
  j["num_hidden_layers"] = c.layers;
  j["num_attention_heads"] = c.heads;
  j["num_key_value_heads"] = c.heads;  // MLA: every head has its own (decompressed) key
  j["n_shared_experts"] = c.shared_experts;
  j["n_routed_experts"] = c.experts > 0 ? json(c.experts) : json(nullptr);
  j["routed_scaling_factor"] = c.route_scale;
  j["n_group"] = c.groups;
  j["topk_group"] = c.topk_groups;
  j["num_experts_per_tok"] = c.topk;
  j["first_k_dense_replace"] = c.dense_layers;
  j["norm_topk_prob"] = c.norm_topk;
  j["kv_lora_rank"] = c.kv_lora;
  j["q_lora_rank"] = c.q_lora > 0 ? json(c.q_lora) : json(nullptr);
  j["qk_rope_head_dim"] = c.qk_rope;
  j["v_head_dim"] = c.v_head;
  j["qk_nope_head_dim"] = c.qk_nope;
  j["hidden_act"] = "silu";
  j["max_position_embeddings"] = c.max_seq;
  j["rms_norm_eps"] = c.rms_eps;
  j["rope_theta"] = c.rope_theta;
  if (c.yarn_factor == 1.0) {
    j["rope_scaling"] = nullptr;
  } else {
    // dsv3 has one YaRN mscale, applied to the softmax scale: HF's mscale == mscale_all_dim.
    nlohmann::ordered_json r;
    r["type"] = "yarn";
    r["rope_type"] = "yarn";
    r["factor"] = c.yarn_factor;
    r["original_max_position_embeddings"] = c.yarn_original_ctx;
    r["beta_fast"] = c.yarn_beta_fast;
    r["beta_slow"] = c.yarn_beta_slow;
    r["mscale"] = c.yarn_mscale;
    r["mscale_all_dim"] = c.yarn_mscale;
    j["rope_scaling"] = r;
  }
  j["tie_word_embeddings"] = false;
  j["num_nextn_predict_layers"] = c.mtp_depth;
  j["scoring_func"] = router_name(c.router);
  j["topk_method"] = c.router == RouterKind::Sigmoid ? "noaux_tc"
                     : c.groups > 1                  ? "group_limited_greedy"
                                                     : "greedy";
  j["initializer_range"] = c.init_std;
  j["attention_bias"] = false;
  j["torch_dtype"] = dtype == DType::BF16 ? "bfloat16" : "float32";
  return j;
}

ModelConfig config_from_hf_json(const json& j, const std::string& where,
                                std::vector<std::string>* defaulted) {
  DSV3_CHECK(j.is_object(), where, ": expected a JSON object, got ", j.type_name());
  Keys k{j, where};
  const std::string type = k.opt_str("model_type", "");
  DSV3_CHECK(j.contains("model_type"), where, ": missing required key 'model_type'");
  DSV3_CHECK(type == "deepseek_v3" || type == "deepseek_v2", where, ": model_type '", type,
             "' is not supported (expected deepseek_v3 or deepseek_v2)");
  const bool v3 = type == "deepseek_v3";

  ModelConfig c;
  c.vocab = k.req_int("vocab_size");
  c.hidden = k.req_int("hidden_size");
  c.layers = k.req_int("num_hidden_layers");
  c.heads = k.req_int("num_attention_heads");
  c.kv_lora = k.req_int("kv_lora_rank");
  c.q_lora = k.req_int_or_null("q_lora_rank", 0);
  c.qk_nope = k.req_int("qk_nope_head_dim");
  c.qk_rope = k.req_int("qk_rope_head_dim");
  c.v_head = k.req_int("v_head_dim");
  c.dense_inter = k.req_int("intermediate_size");
  c.experts = k.req_int_or_null("n_routed_experts", 0);
  if (c.experts > 0) {
    c.moe_inter = k.req_int("moe_intermediate_size");
    c.topk = k.req_int("num_experts_per_tok");
    c.dense_layers = k.req_int("first_k_dense_replace");
  } else {  // dense model: every layer has the dense FFN whatever first_k_dense_replace says
    c.moe_inter = k.opt_int("moe_intermediate_size", c.moe_inter);
    c.topk = k.opt_int("num_experts_per_tok", c.topk);
    c.dense_layers = c.layers;
  }
  // Keys a config.json may leave out take the defaults of transformers' DeepseekV3Config /
  // DeepseekV2Config (what from_pretrained would build), and the caller is told which.
  auto note = [&](const char* key, const std::string& value) {
    if (!k.get(key) && defaulted) defaulted->push_back(std::string(key) + " = " + value);
  };
  auto num_text = [](double v) {
    char b[32];
    std::snprintf(b, sizeof b, "%g", v);
    return std::string(b);
  };
  auto def_int = [&](const char* key, int v3_value, int v2_value) {
    const int v = v3 ? v3_value : v2_value;
    note(key, std::to_string(v));
    return k.opt_int(key, v);
  };
  auto def_num = [&](const char* key, double v3_value, double v2_value) {
    const double v = v3 ? v3_value : v2_value;
    note(key, num_text(v));
    return k.opt_num(key, v);
  };
  c.shared_experts = def_int("n_shared_experts", 1, 2);
  c.route_scale = def_num("routed_scaling_factor", 2.5, 1.0);
  note("norm_topk_prob", v3 ? "true" : "false");
  c.norm_topk = k.opt_bool("norm_topk_prob", v3);
  // Not a transformers key (DeepSeek's own config has it): absent means no MTP modules.
  c.mtp_depth = k.opt_int("num_nextn_predict_layers", 0);
  c.rms_eps = def_num("rms_norm_eps", 1e-6, 1e-6);
  c.max_seq = def_int("max_position_embeddings", 4096, 2048);
  c.rope_theta = def_num("rope_theta", 10000.0, 10000.0);
  c.init_std = def_num("initializer_range", 0.02, 0.02);

  const std::string scoring = k.opt_str("scoring_func", v3 ? "sigmoid" : "softmax");
  DSV3_CHECK(scoring == "sigmoid" || scoring == "softmax", where, ": scoring_func '", scoring,
             "' is not supported (expected sigmoid or softmax)");
  c.router = parse_router(scoring);
  std::string method = k.opt_str("topk_method", v3 ? "noaux_tc" : "greedy");
  if (method == "gready") method = "greedy";  // DeepSeek-V2's configuration file default
  DSV3_CHECK(method == "noaux_tc" || method == "greedy" || method == "group_limited_greedy",
             where, ": topk_method '", method,
             "' is not supported (expected noaux_tc, group_limited_greedy or greedy)");
  if (method == "greedy") {  // plain top-k: no groups
    c.groups = 1, c.topk_groups = 1;
  } else {  // V2 defaults None: no groups
    c.groups = def_int("n_group", 8, 1);
    c.topk_groups = def_int("topk_group", 4, 1);
  }

  // Settings dsv3 has no switch for must hold their only supported value.
  DSV3_CHECK(k.opt_str("hidden_act", "silu") == "silu", where, ": hidden_act '",
             k.opt_str("hidden_act", ""), "' is not supported (dsv3 uses silu)");
  DSV3_CHECK(!k.opt_bool("tie_word_embeddings", false), where,
             ": tie_word_embeddings true is not supported (DeepSeek never ties the output head)");
  DSV3_CHECK(!k.opt_bool("attention_bias", false), where,
             ": attention_bias true is not supported (MLA projections have no bias)");
  const int kv_heads = k.opt_int("num_key_value_heads", c.heads);
  DSV3_CHECK(kv_heads == c.heads, where, ": num_key_value_heads (", kv_heads,
             ") must equal num_attention_heads (", c.heads, ") for MLA");
  const int freq = k.opt_int("moe_layer_freq", 1);
  DSV3_CHECK(freq == 1, where, ": moe_layer_freq ", freq,
             " is not supported (every layer after first_k_dense_replace is MoE)");

  if (const json* r = k.get("rope_scaling")) {
    const std::string rwhere = where + ": rope_scaling";
    DSV3_CHECK(r->is_object(), rwhere, " must be an object or null, got ", r->type_name());
    Keys rk{*r, rwhere};
    const std::string rtype = rk.opt_str("rope_type", rk.opt_str("type", ""));
    DSV3_CHECK(rtype == "yarn" || rtype == "deepseek_yarn", rwhere, ": type '", rtype,
               "' is not supported (only yarn)");
    DSV3_CHECK(rk.get("factor"), rwhere, ": missing required key 'factor'");
    c.yarn_factor = rk.opt_num("factor", 1.0);
    c.yarn_original_ctx = rk.req_int("original_max_position_embeddings");
    c.yarn_beta_fast = rk.opt_num("beta_fast", 32.0);
    c.yarn_beta_slow = rk.opt_num("beta_slow", 1.0);
    // DeepSeek's defaults: mscale 1, mscale_all_dim 0.
    const double mscale = rk.opt_num("mscale", 1.0);
    const double mscale_all_dim = rk.opt_num("mscale_all_dim", 0.0);
    DSV3_CHECK(mscale == mscale_all_dim, rwhere, ": mscale (", mscale,
               ") differs from mscale_all_dim (", mscale_all_dim,
               "); dsv3 applies a single YaRN mscale to the attention softmax scale, which is "
               "DeepSeek's mscale == mscale_all_dim case; unequal values also rescale the rotary "
               "embedding and are not supported");
    c.yarn_mscale = mscale;
  }
  return c;
}

double param_count_lower_bound(const ModelConfig& c) {
  const double C = c.hidden;
  const double blocks = double(c.layers) + c.mtp_depth;
  const double moe_blocks = c.experts > 0 ? double(c.layers - c.dense_layers) + c.mtp_depth : 0;
  const double dense_blocks = blocks - moe_blocks;
  const double attn = 2 * C + c.kv_lora + double(c.heads) * (c.qk_nope + c.v_head) * c.kv_lora +
                      C * c.heads * c.v_head;  // norms, kv_b, o_proj (parts of every block)
  return 2.0 * c.vocab * C + blocks * attn + dense_blocks * 3.0 * C * c.dense_inter +
         moe_blocks * 3.0 * C * c.moe_inter * c.experts;
}

void export_hf(const std::string& dir, const ModelConfig& c, const ParamTable& t,
               const float* params, DType dtype) {
  validate(c);
  DSV3_CHECK(build_param_table(c).total == t.total, "export_hf: the parameter table (", t.total,
             " floats) does not belong to the config (", build_param_table(c).total, ")");
  std::error_code ec;
  fs::create_directories(dir, ec);
  DSV3_CHECK(!ec && fs::is_directory(dir), "cannot create directory ", dir, ": ", ec.message());
  const std::string text = hf_config_json(c, dtype).dump(2) + "\n";
  write_file_atomic((fs::path(dir) / "config.json").string(),
                    [&](std::FILE* f) { write_bytes(f, text.data(), text.size()); });
  std::vector<SafetensorsTensor> tensors;
  tensors.reserve(t.list.size());
  for (const auto& p : t.list) tensors.push_back({p.name, p.shape, params + p.offset});
  write_safetensors((fs::path(dir) / "model.safetensors").string(), tensors, dtype,
                    {{"format", "pt"}});
}

std::string hf_defaults_note(const HfModel& m) {
  if (m.defaulted.empty()) return "";
  return "note: config.json leaves out optional keys; transformers' defaults were used: " +
         list_names(m.defaulted, 20);
}

HfModel import_hf(const std::string& dir) {
  const fs::path d(dir);
  const std::string cfg_path = (d / "config.json").string();
  HfModel m;
  m.config = config_from_hf_json(parse_json_file(cfg_path), cfg_path, &m.defaulted);
  const std::string defaults =
      m.defaulted.empty() ? "" : " (not in the file, transformers' defaults: " +
                                     list_names(m.defaulted, 20) + ")";
  try {
    validate(m.config);
  } catch (const Error& e) {
    fail(cfg_path, ": invalid model config: ", e.what(), defaults);
  }

  // Open the tensor files: one model.safetensors, or the shards of the index.
  std::vector<std::unique_ptr<SafetensorsReader>> files;
  struct Loc {
    const SafetensorsReader* file;
    const SafetensorsEntry* entry;
  };
  std::map<std::string, Loc> found;
  auto add_file = [&](const std::string& path) {
    files.push_back(std::make_unique<SafetensorsReader>(path));
    for (const auto& e : files.back()->tensors()) {
      auto [it, fresh] = found.emplace(e.name, Loc{files.back().get(), &e});
      DSV3_CHECK(fresh, dir, ": tensor '", e.name, "' appears in both ", it->second.file->path(),
                 " and ", path);
    }
  };
  const std::string single = (d / "model.safetensors").string();
  const std::string index_path = (d / "model.safetensors.index.json").string();
  if (fs::exists(single)) {
    add_file(single);
  } else if (fs::exists(index_path)) {
    json index = parse_json_file(index_path);
    DSV3_CHECK(index.is_object() && index.contains("weight_map") && index["weight_map"].is_object(),
               index_path, ": expected an object with a 'weight_map' object");
    std::map<std::string, std::string> shard_of;  // tensor -> file name
    std::vector<std::string> shards;
    for (auto it = index["weight_map"].begin(); it != index["weight_map"].end(); ++it) {
      DSV3_CHECK(it.value().is_string(), index_path, ": weight_map value of '", it.key(),
                 "' must be a file name");
      const std::string f = it.value().get<std::string>();
      DSV3_CHECK(!f.empty() && f.find('/') == std::string::npos && f != "." && f != "..",
                 index_path, ": weight_map names '", f, "', expected a file name in ", dir);
      shard_of[it.key()] = f;
      if (std::find(shards.begin(), shards.end(), f) == shards.end()) shards.push_back(f);
    }
    DSV3_CHECK(!shards.empty(), index_path, ": weight_map is empty");
    for (const auto& f : shards) add_file((d / f).string());
    for (const auto& [name, f] : shard_of) {
      auto it = found.find(name);
      DSV3_CHECK(it != found.end() && it->second.file->path() == (d / f).string(), index_path,
                 ": says tensor '", name, "' is in ", f, ", but that file has no such tensor");
    }
  } else {
    fail(dir, ": has config.json but neither model.safetensors nor model.safetensors.index.json");
  }

  // A corrupt config could describe billions of tensors: check the files can hold it first.
  double in_files = 0;
  for (const auto& [name, loc] : found) in_files += double(loc.entry->numel);
  const double need = param_count_lower_bound(m.config);
  DSV3_CHECK(need <= in_files, dir, ": config.json describes a model of at least ", need,
             " parameters but the safetensors files hold only ", in_files);

  const ParamTable t = build_param_table(m.config);
  std::vector<std::string> missing, unknown;
  for (const auto& p : t.list) {
    auto it = found.find(p.name);
    if (it == found.end()) {
      missing.push_back(p.name);
      continue;
    }
    DSV3_CHECK(it->second.entry->shape == p.shape, it->second.file->path(), ": tensor '", p.name,
               "' has shape ", shape_str(it->second.entry->shape), ", config.json gives ",
               shape_str(p.shape));
  }
  DSV3_CHECK(missing.empty(), dir, ": missing tensors (", missing.size(), "): ",
             list_names(missing));
  auto allowed_extra = [&](const std::string& name) {
    if (ends_with(name, "inv_freq")) return true;  // rotary buffers some exporters save
    for (int k = 1; k <= m.config.mtp_depth; k++) {
      const std::string p = "model.layers." + std::to_string(m.config.layers + k - 1) + ".";
      if (name == p + "embed_tokens.weight" || name == p + "shared_head.head.weight") return true;
    }
    return false;
  };
  bool fp8 = false;
  for (const auto& [name, loc] : found)
    if (!t.find(name) && !allowed_extra(name)) {
      unknown.push_back(name);
      fp8 = fp8 || ends_with(name, "weight_scale_inv");
    }
  DSV3_CHECK(unknown.empty(), dir, ": tensors not in the model config.json describes (",
             unknown.size(), "): ", list_names(unknown),
             fp8 ? " -- an FP8 checkpoint: dequantize it to bf16 first" : "");

  m.params.assign(t.total, 0.0f);
  for (const auto& p : t.list) {
    const Loc& loc = found.at(p.name);
    float* dst = m.params.data() + p.offset;
    loc.file->read_f32(*loc.entry, dst);
    // A tensor whose bytes are another dtype's (relabelled, or a corrupt file) decodes to NaN or
    // inf somewhere: a model with such a weight gives NaN everywhere, so it is refused here.
    for (size_t i = 0; i < p.numel; i++)
      DSV3_CHECK(std::isfinite(dst[i]), loc.file->path(), ": tensor '", p.name, "' (",
                 loc.entry->dtype, ") holds ", dst[i], " at element ", i,
                 ": weights must be finite (is the dtype in the header the tensor's own?)");
  }
  return m;
}

}  // namespace dsv3
