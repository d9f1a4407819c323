// The server's request bodies (/v1/completions, /v1/chat/completions; infer/request.h). The first
// byte picks the endpoint and the server's limits, the rest is the body. Oracle: a body that is
// not JSON is the server's 400 before the parser; after it only BadRequest may escape (anything
// else would be an HTTP 500), and every request accepted satisfies what the scheduler relies on.
#include <cmath>
#include <cstdlib>

#include "fuzz_util.h"
#include "infer/request.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  if (size < 1) return 0;
  const bool chat = data[0] & 1;
  const RequestLimits lim{16 + (data[0] >> 1), 256, (data[0] & 2) ? 12 : 0, 1 + (data[0] >> 3)};
  nlohmann::json body;
  try {
    body = nlohmann::json::parse(reinterpret_cast<const char*>(data + 1),
                                 reinterpret_cast<const char*>(data + size));
  } catch (const nlohmann::json::exception&) {
    return 0;  // the server's "not valid JSON" 400
  }
  static const TextCodec bytes;  // byte-level: the plain chat template
  try {
    const CompletionRequest r = parse_completion_request(body, chat, bytes, lim, 1);
    const int cap = lim.max_prompt_tokens > 0 ? std::min(lim.max_prompt_tokens, lim.context) : lim.context;
    if (r.prompt.empty() || int(r.prompt.size()) > cap) std::abort();
    for (int32_t id : r.prompt)
      if (id < 0 || id >= lim.vocab) std::abort();
    if (r.max_tokens < 1 || r.max_tokens > lim.max_tokens_limit) std::abort();
    if (int(r.prompt.size()) + r.max_tokens > lim.context) std::abort();
    const SamplingParams& s = r.sampling;
    if (!(s.temperature >= 0 && s.temperature <= 2 && s.top_p > 0 && s.top_p <= 1 && s.top_k >= 0 &&
          s.min_p >= 0 && s.min_p <= 1 && s.repetition_penalty > 0))
      std::abort();
    if (r.stop.size() > 16) std::abort();
  } catch (const BadRequest& e) {
    if (e.message.empty()) std::abort();  // a 400 says what is wrong
  }
  return 0;
}
