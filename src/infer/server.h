// `dsv3 serve` (I2): an OpenAI-compatible HTTP server over the decode engine, on cpp-httplib
// (Debian's libcpp-httplib-dev; docs/inference.md "Server" lists endpoints, fields and errors).
//   POST /v1/completions, POST /v1/chat/completions (SSE streaming with "stream": true),
//   GET /v1/models, GET /health, GET /metrics (Prometheus text format).
// One engine thread runs the continuous-batching scheduler (infer/scheduler.h); HTTP threads
// parse, validate and tokenise requests, queue them, and stream the engine's text back. A full
// queue answers 429, a request the server can never run 400, a KV cache that is full for now
// makes requests wait. A client that goes away cancels its sequence at the next step. SIGTERM or
// SIGINT stops accepting (503), finishes what is in flight, and serve() returns.
#pragma once
#include <functional>
#include <string>
#include <vector>

#include "core/fields.h"
#include "model/weights.h"
#include "tokenizer/text_codec.h"

namespace dsv3 {

struct ServerConfig {
  std::string host = "127.0.0.1";  // loopback unless told otherwise
  int port = 8000;                 // 0 = any free port (printed)
  std::string api_key;             // Bearer token required on /v1/* when set
  std::string served_name = "dsv3";  // the model id clients name
  int max_running = 32;            // sequences decoding together
  int max_queue = 64;              // requests waiting beyond those; more get 429
  int max_batch_tokens = 256;      // tokens per engine step (prompt chunks + decode rows)
  double kv_cache_mb = 256;        // latent KV cache budget
  int context = 0;                 // longest sequence (prompt + output); 0 = the model's max_seq
  int max_tokens_limit = 2048;     // per-request cap on max_tokens
  int max_prompt_tokens = 0;       // per-request cap on the prompt; 0 = the context
  int max_body_kb = 1024;          // request body limit (413 beyond)
  bool speculative = false;        // MTP drafts verified by the main model
  int http_threads = 0;            // 0 = max_running + max_queue + 16
};
const std::vector<FieldSpec>& server_fields();
void validate(const ServerConfig& c);

// Serves until SIGTERM/SIGINT, then drains and returns. on_listening(port) is called once the
// socket is bound (the port is also printed to stderr).
void serve(const ModelWeights& w, const TextCodec& codec, const ServerConfig& cfg,
           const std::function<void(int)>& on_listening = {});

// Constant-time comparison of a presented credential with the expected one.
bool equal_constant_time(const std::string& a, const std::string& b);

}  // namespace dsv3
