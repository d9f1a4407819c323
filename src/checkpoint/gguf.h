// GGUF export for llama.cpp (I6): the `deepseek2` architecture, keys and tensors as
// ../shared/design/gguf-deepseek2.md lists them (llama.cpp's converter and loader are the judge).
//
// Hand-written: GGUF is a flat little-endian container (header, typed key/value pairs, tensor
// infos, aligned data), the maintained writers are ggml's C library (not packaged in Debian 12)
// and gguf-py; the test reads our files back with gguf-py, and the benchmark with llama.cpp.
//
// What is written: every main-model tensor (MTP modules are not: llama.cpp's deepseek2 has none),
// kv_b_proj split per head into attn_k_b (transposed) and attn_v_b as llama.cpp's absorbed MLA
// wants, the experts stacked into ffn_{gate,up,down}_exps, the routing bias as exp_probs_b; the
// tokenizer as gpt2-style tokens (GPT-2's byte-to-unicode alphabet) and merges, or for a
// byte-level model the 256 byte tokens. Norms, routing biases and the routers (ffn_gate_inp)
// stay F32 in every dtype, as llama.cpp's converter keeps them; Q8_0 needs rows that are a
// multiple of 32 values and falls back to F16 for a tensor whose rows are not (as the converter
// does).
#pragma once
#include <string>
#include <vector>

#include "model/config.h"

namespace dsv3 {

struct Tokenizer;

enum class GgufDtype : uint8_t { F32, F16, BF16, Q8_0 };
GgufDtype parse_gguf_dtype(const std::string& s);  // "f32" | "f16" | "bf16" | "q8_0"
const char* gguf_dtype_name(GgufDtype t);

struct GgufExport {
  std::string name = "dsv3";    // general.name
  GgufDtype dtype = GgufDtype::F16;
  const Tokenizer* tokenizer = nullptr;  // null: byte-level ids
};

// Errors (before anything is written) for a config llama.cpp's deepseek2 cannot run, and a
// tokenizer llama.cpp cannot reproduce. Warnings (what is left out) go to `notes`.
void check_gguf_exportable(const ModelConfig& c, const Tokenizer* tok, std::vector<std::string>* notes);

// Writes path atomically from fp32 params in build_param_table(c) layout.
void export_gguf(const std::string& path, const ModelConfig& c, const std::vector<float>& params,
                 const GgufExport& opt);

}  // namespace dsv3
