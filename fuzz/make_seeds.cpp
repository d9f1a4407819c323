// Writes the seed corpus of every fuzz target: small valid files of each format, made by dsv3's
// own writers (so the seeds follow the formats as they change), plus a few hand-written variants.
//   make_seeds OUT_DIR   ->  OUT_DIR/<target>/seed_*
#include <zlib.h>
#include <zstd.h>

#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf.h"
#include "checkpoint/quantized.h"
#include "checkpoint/safetensors.h"
#include "checkpoint/sharded.h"
#include "core/io.h"
#include "core/rng.h"
#include "data/shard.h"
#include "data/token_file.h"
#include "model/params.h"
#include "model/quant.h"
#include "tokenizer/formats.h"

namespace fs = std::filesystem;
using namespace dsv3;

namespace {

std::string g_out;

void put(const std::string& target, const std::string& name, const std::string& bytes) {
  fs::create_directories(fs::path(g_out) / target);
  const std::string path = (fs::path(g_out) / target / name).string();
  write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, bytes.data(), bytes.size()); });
}
std::string slurp(const std::string& path) { return read_file(path); }
std::string tmp(const std::string& name) { return (fs::path(g_out) / (".tmp_" + name)).string(); }

// The smallest model with every part: MLA with q low-rank, a dense and a MoE block, MTP.
ModelConfig tiny_model() {
  ModelConfig c = preset("debug");
  c.vocab = 32, c.hidden = 8, c.layers = 2, c.dense_layers = 1, c.heads = 2;
  c.q_lora = 4, c.kv_lora = 4, c.qk_nope = 4, c.qk_rope = 2, c.v_head = 4;
  c.dense_inter = 8, c.moe_inter = 4, c.experts = 4, c.shared_experts = 1, c.topk = 2;
  c.groups = 2, c.topk_groups = 1, c.mtp_depth = 1, c.max_seq = 16;
  return c;
}

std::vector<float> values(size_t n, uint64_t seed) {
  Rng r(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = 0.1f * r.normal();
  return v;
}

void checkpoints() {
  const ModelConfig c = tiny_model();
  const ParamTable t = build_param_table(c);
  const auto p = values(t.total, 1), m = values(t.total, 2), v = values(t.total, 3);
  const nlohmann::json train = {
      {"run_id", "0123456789abcdef"}, {"steps_done", 4}, {"attempts", 4},
      {"optimizer_updates", 4}, {"tokens_seen", 512}, {"rng", {1u, 2u, 3u, 4u}},
      {"data", {{"position", 7}}}, {"loss_scaler", nullptr},
      {"guard", {{"window", {2.5, 2.4}}, {"bad_streak", 0}, {"rollbacks", 0}}}};
  save_checkpoint(tmp("a.dsv3"), c, train, p.data(), m.data(), v.data(), t.total);
  put("checkpoint", "seed_full", slurp(tmp("a.dsv3")));
  save_checkpoint(tmp("b.dsv3"), c, nlohmann::json::object(), p.data(), nullptr, nullptr, t.total);
  put("checkpoint", "seed_weights_only", slurp(tmp("b.dsv3")));
  for (QuantScheme q : {QuantScheme::W8A8, QuantScheme::W8A16}) {
    save_int8_model(tmp("q.dsv3q"), c, quantize_params(c, q, p), "make_seeds");
    put("int8_model", std::string("seed_") + quant_scheme_name(q), slurp(tmp("q.dsv3q")));
  }
}

// A 2-rank sharded checkpoint of the tiny model: rank 0 holds the first half of every tensor,
// rank 1 the rest, each with params and AdamW's moments; manifest first, then the two shards.
void sharded() {
  const ModelConfig c = tiny_model();
  const ParamTable t = build_param_table(c);
  const auto p = values(t.total, 1), m = values(t.total, 2), v = values(t.total, 3);
  const std::string dir = tmp("ckpt.shards");
  std::string input;
  for (int rank = 0; rank < 2; rank++) {
    ShardData d;
    d.arrays = {"params", "adam_m", "adam_v"};
    d.values.resize(3);
    for (const ParamInfo& pi : t.list) {
      const size_t half = pi.numel / 2, b = rank == 0 ? 0 : half, n = rank == 0 ? half : pi.numel - half;
      if (n == 0) continue;
      d.segments.push_back({pi.name, b, n});
      for (int a = 0; a < 3; a++) {
        const float* src = (a == 0 ? p : a == 1 ? m : v).data() + pi.offset + b;
        d.values[size_t(a)].insert(d.values[size_t(a)].end(), src, src + n);
      }
    }
    write_shard(dir, rank, 2, d);
  }
  write_manifest(dir, {{"step", 4}, {"model", fields_to_json(model_fields(), &c)},
                       {"train", {{"steps_done", 4}}}, {"shards", {"rank_00000.bin", "rank_00001.bin"}},
                       {"layout", {{"world", 2}, {"dp", 2}, {"tp", 1}, {"pp", 1}, {"ep", 1}, {"zero", 1}}}});
  const std::string sep = "\n=====\n";
  put("sharded", "seed_two_ranks", slurp(dir + "/manifest.json") + sep + slurp(shard_file(dir, 0)) + sep +
                                       slurp(shard_file(dir, 1)));
}

void safetensors_and_hf() {
  const ModelConfig c = tiny_model();
  const ParamTable t = build_param_table(c);
  const auto p = values(t.total, 4);
  std::vector<SafetensorsTensor> ts;
  for (size_t i = 0; i < t.list.size() && i < 6; i++)
    ts.push_back({t.list[i].name, t.list[i].shape, p.data() + t.list[i].offset});
  write_safetensors(tmp("f32.safetensors"), ts, DType::F32, {{"format", "pt"}});
  put("safetensors", "seed_f32", slurp(tmp("f32.safetensors")));
  write_safetensors(tmp("bf16.safetensors"), ts, DType::BF16);
  put("safetensors", "seed_bf16", slurp(tmp("bf16.safetensors")));

  put("hf_config", "seed_v3", hf_config_json(c, DType::BF16).dump(2));
  ModelConfig y = c;
  y.yarn_factor = 4, y.yarn_original_ctx = 8;
  put("hf_config", "seed_yarn", hf_config_json(y, DType::F32).dump(2));
  nlohmann::json v2 = hf_config_json(c, DType::BF16);
  v2["model_type"] = "deepseek_v2", v2["scoring_func"] = "softmax";
  v2["topk_method"] = "group_limited_greedy";
  v2.erase("routed_scaling_factor"), v2.erase("n_shared_experts");
  put("hf_config", "seed_v2_defaults", v2.dump());
  ModelConfig d = c;
  d.experts = 0, d.dense_layers = d.layers;
  put("hf_config", "seed_dense", hf_config_json(d, DType::F32).dump());
}

// 256 bytes, a few merges, two specials: what every tokenizer format can hold.
Tokenizer tiny_tokenizer(const std::string& pretok) {
  Tokenizer t;
  t.pretok = pretok_preset(pretok);
  for (int b = 0; b < 256; b++) t.vocab.push_back(std::string(1, char(b)));
  auto merge = [&](const std::string& a, const std::string& b) {
    int32_t ia = -1, ib = -1;
    for (size_t i = 0; i < t.vocab.size(); i++) {
      if (t.vocab[i] == a) ia = int32_t(i);
      if (t.vocab[i] == b) ib = int32_t(i);
    }
    t.merges.push_back({ia, ib});
    t.vocab.push_back(a + b);
  };
  merge("h", "e"), merge("l", "l"), merge("he", "ll"), merge(" ", "w"), merge("o", "r");
  merge(" w", "or"), merge("t", "h"), merge(" ", "th"), merge("i", "n"), merge("in", "g");
  for (const char* s : {"<|endoftext|>", "<|pad|>"}) {
    t.specials.push_back({int32_t(t.vocab.size()), s});
    t.vocab.push_back(s);
  }
  t.roles = infer_roles(t.specials);
  validate_tokenizer(t, "seed tokenizer");
  return t;
}

void tokenizers() {
  for (const char* pre : {"gpt2", "deepseek_v3"}) {
    const Tokenizer t = tiny_tokenizer(pre);
    const std::string tag = pre;
    save_dsv3_tokenizer(tmp("t.dsv3tok"), t);
    put("dsv3tok", "seed_" + tag, slurp(tmp("t.dsv3tok")));
    export_hf_tokenizer_json(tmp("tokenizer.json"), t);
    put("tokenizer_json", "seed_" + tag, slurp(tmp("tokenizer.json")));
  }
  const Tokenizer t = tiny_tokenizer("gpt2");
  export_gpt2_files(tmp("gpt2"), t);
  put("gpt2", "seed", slurp(tmp("gpt2") + "/encoder.json") + "\n=====\n" +
                          slurp(tmp("gpt2") + "/vocab.bpe"));
  export_tiktoken_file(tmp("r.tiktoken"), t);
  put("tiktoken", "seed", slurp(tmp("r.tiktoken")));
  // tokenizer.json pieces the exporter does not write: a post-processor and a Split sequence.
  nlohmann::json j = nlohmann::json::parse(slurp(tmp("tokenizer.json")));
  j["post_processor"] = {
      {"type", "TemplateProcessing"},
      {"single", {{{"SpecialToken", {{"id", "<|endoftext|>"}, {"type_id", 0}}}},
                  {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}}};
  j["model"]["dropout"] = nullptr;
  put("tokenizer_json", "seed_template", j.dump());
}

void shards() {
  Rng r(5);
  std::vector<int32_t> ids(200);
  for (auto& x : ids) x = int32_t(r.below(300));
  for (size_t i = 0; i < ids.size(); i += 37) ids[i] = 0;  // EOS 0 separates documents
  write_token_file(tmp("tok.bin"), ids);
  put("llmc_shard", "seed", slurp(tmp("tok.bin")));
  ShardInfo info;
  info.domain = "web", info.split = "train", info.vocab_size = 300, info.eos = 0;
  info.tokenizer = "seed";
  ShardWriter w(tmp("part.shard"), info);
  for (int d = 0; d < 5; d++) {
    std::vector<int32_t> doc(size_t(3 + d * 4));
    for (auto& x : doc) x = int32_t(1 + r.below(299));
    w.add_document(doc, doc.size() * 3);
  }
  w.finish();
  put("dsv3_shard", "seed", slurp(tmp("part.shard")));
}

void configs() {
  put("config", "seed_file", "# a run\nhidden = 32\nlayers = 2\nlr = 1e-3\nschedule = wsd\n"
                             "decay_frac = 0.2\nprecision = \"bf16\"\n");
  put("config", "seed_args", "keep = 2\n\n=====\n--preset\ndebug\n--heads\n4\n--norm-topk\n"
                             "--lr=3e-4\n--save_every\n10");
}

std::string gzip(const std::string& s) {
  z_stream z = {};
  deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY);
  std::string out(deflateBound(&z, uLong(s.size())) + 32, '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(s.data()));
  z.avail_in = uInt(s.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = uInt(out.size());
  deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

void jsonl() {
  const std::string lines =
      "{\"id\": \"a\", \"text\": \"Hello there.\\nSecond line.\", \"url\": \"x\"}\n"
      "{\"text\": \"caf\\u00e9 \\u4e2d\\u6587\", \"meta\": {\"k\": [1, 2]}}\n"
      "{\"id\": 7, \"text\": 3}\nnot json\n\n{\"text\": \"\"}\n";
  // the first byte is the harness's mode: bit 0 JSONL, bits 1-2 text unit, bit 3 small limit
  put("jsonl", "seed_jsonl", std::string(1, char(1)) + lines);
  put("jsonl", "seed_text_paragraphs", std::string(1, char(2)) + "One.\n\nTwo\nlines.\n\n\nThree");
  put("jsonl", "seed_gzip", std::string(1, char(1)) + gzip(lines));
  std::string z(ZSTD_compressBound(lines.size()), '\0');
  z.resize(ZSTD_compress(z.data(), z.size(), lines.data(), lines.size(), 3));
  put("jsonl", "seed_zstd", std::string(1, char(9)) + z);
}

void tasks() {  // one file per layout of `dsv3 evaluate`, with a bad line each
  put("tasks", "seed_hellaswag",
      "{\"activity_label\": \"A\", \"ctx_a\": \"x [title] y\", \"ctx_b\": \"Z\", "
      "\"endings\": [\"a [step] b\", \"c\"], \"label\": \"1\"}\n{\"ctx\": \"c\", \"endings\": [\"a\"], \"label\": 0}\n");
  put("tasks", "seed_arc",
      "{\"question\": \"q\", \"choices\": {\"text\": [\"a\", \"b\"], \"label\": [\"A\", \"B\"]}, "
      "\"answerKey\": \"B\"}\n{\"question\": \"q\", \"choices\": [\"a\", \"b\"], \"answer\": 1}\nnot json\n");
  put("tasks", "seed_gsm8k", "{\"question\": \"1+1?\", \"answer\": \"2\\n#### 2\"}\n{\"prompt\": \"p\", \"answer\": 3}\n[]\n");
  put("tasks", "seed_translation", "{\"source\": \"s\", \"reference\": [\"a\", \"b\"]}\n{\"source\": \"\", \"reference\": \"r\"}\n");
}

void request() {  // first byte: bit 0 chat, the rest the server's limits (fuzz_request.cpp)
  put("request", "seed_completion",
      std::string(1, char(0xF0)) + R"({"model": "dsv3", "prompt": "Hello", "max_tokens": 4, )"
      R"("temperature": 0.7, "top_p": 0.9, "top_k": 5, "stop": ["\n", "."], "seed": 3, )"
      R"("stream": true, "stream_options": {"include_usage": true}})");
  put("request", "seed_ids", std::string(1, char(0x40)) + R"({"prompt": [[1, 2, 255]], "n": 1, "logprobs": 0})");
  put("request", "seed_chat",
      std::string(1, char(0xF1)) + R"({"messages": [{"role": "system", "content": "S"}, )"
      R"({"role": "user", "content": [{"type": "text", "text": "A"}]}, {"role": "assistant", )"
      R"("content": "B"}, {"role": "user", "content": "C"}], "max_completion_tokens": 3, )"
      R"("min_p": 0.1, "repetition_penalty": 1.1, "tools": []})");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: make_seeds OUT_DIR\n");
    return 2;
  }
  g_out = argv[1];
  fs::create_directories(g_out);
  try {
    checkpoints();
    safetensors_and_hf();
    tokenizers();
    shards();
    configs();
    jsonl();
    tasks();
    request();
    sharded();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "make_seeds: %s\n", e.what());
    return 1;
  }
  for (const auto& e : fs::directory_iterator(g_out))
    if (e.path().filename().string().rfind(".tmp_", 0) == 0) fs::remove_all(e.path());
  return 0;
}
