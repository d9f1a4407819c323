// OpenAI completion and chat-completion request bodies (I2) -> what the scheduler runs. This is
// the server's parser of external input, kept apart from the HTTP plumbing so that it can be
// tested and fuzzed alone (fuzz/fuzz_request.cpp). A field of the wrong type or out of range, or
// one this server does not implement set to anything but its neutral value, is a BadRequest
// naming the field (HTTP 400 invalid_request_error).
#pragma once
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/sampler.h"
#include "tokenizer/text_codec.h"

namespace dsv3 {

struct BadRequest {
  std::string message;
  std::string param;  // the offending field ("" when it is the body as a whole)
};

// The server's fixed bounds on a request.
struct RequestLimits {
  int context = 0;            // longest sequence, prompt + output
  int vocab = 0;              // token ids in a prompt must be below this
  int max_prompt_tokens = 0;  // 0: the context
  int max_tokens_limit = 0;   // largest max_tokens accepted
};

struct CompletionRequest {
  std::optional<std::string> model;  // as sent; the server compares it with its served name
  std::vector<int32_t> prompt;
  std::vector<int32_t> stop_ids;
  std::vector<std::string> stop;
  SamplingParams sampling;
  int max_tokens = 16;
  bool stream = false, include_usage = false;
};

// chat: /v1/chat/completions (messages through the chat template), else /v1/completions (a
// prompt string or token ids). default_seed seeds sampling when the request sends no "seed".
// Throws BadRequest only.
CompletionRequest parse_completion_request(const nlohmann::json& body, bool chat,
                                           const TextCodec& codec, const RequestLimits& limits,
                                           uint64_t default_seed);

}  // namespace dsv3
