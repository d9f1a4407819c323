#include "infer/request.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/check.h"
#include "core/fields.h"
#include "infer/chat.h"

namespace dsv3 {

using json = nlohmann::json;

namespace {

// ---- typed field access: a known field of the wrong type or out of range is a 400
const json* field_of(const json& j, const char* name) {
  auto it = j.find(name);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}
double number_field(const json& j, const char* name, double def, double lo, double hi,
                    bool lo_open = false) {
  const json* v = field_of(j, name);
  if (!v) return def;
  if (!v->is_number()) throw BadRequest{std::string(name) + " must be a number", name};
  const double x = v->get<double>();
  if (!std::isfinite(x) || x < lo || x > hi || (lo_open && x == lo))
    throw BadRequest{std::string(name) + " must be in " + (lo_open ? "(" : "[") + format_float(lo) +
                         ", " + format_float(hi) + "], not " + format_float(x),
                     name};
  return x;
}
long long int_field(const json& j, const char* name, long long def, long long lo, long long hi) {
  const json* v = field_of(j, name);
  if (!v) return def;
  if (!v->is_number_integer()) throw BadRequest{std::string(name) + " must be an integer", name};
  const long long x = v->get<long long>();
  if (x < lo || x > hi)
    throw BadRequest{std::string(name) + " must be in [" + std::to_string(lo) + ", " +
                         std::to_string(hi) + "], not " + std::to_string(x),
                     name};
  return x;
}
bool bool_field(const json& j, const char* name, bool def) {
  const json* v = field_of(j, name);
  if (!v) return def;
  if (!v->is_boolean()) throw BadRequest{std::string(name) + " must be a boolean", name};
  return v->get<bool>();
}
// Fields this server does not implement: accepted only at their neutral value.
void unsupported_unless(const json& j, const char* name, const json& neutral) {
  const json* v = field_of(j, name);
  if (v && *v != neutral && !(v->is_object() && v->empty()) && !(v->is_array() && v->empty()))
    throw BadRequest{std::string(name) + " is not supported by this server", name};
}

CompletionRequest parse_unguarded(const json& body, bool chat, const TextCodec& codec,
                                  const RequestLimits& lim, uint64_t default_seed) {
  if (!body.is_object()) throw BadRequest{"the request body must be a JSON object", ""};
  CompletionRequest p;
  if (const json* m = field_of(body, "model")) {
    if (!m->is_string()) throw BadRequest{"model must be a string", "model"};
    p.model = m->get<std::string>();
  }
  if (chat) {
    const json* msgs = field_of(body, "messages");
    if (!msgs || !msgs->is_array() || msgs->empty())
      throw BadRequest{"messages must be a non-empty array", "messages"};
    std::vector<ChatMessage> ms;
    for (const json& m : *msgs) {
      if (!m.is_object() || !m.contains("role") || !m["role"].is_string())
        throw BadRequest{"each message needs a string role", "messages"};
      ChatMessage cm{m["role"].get<std::string>(), ""};
      const json* c = field_of(m, "content");
      if (c && c->is_string()) {
        cm.content = c->get<std::string>();
      } else if (c && c->is_array()) {
        for (const json& part : *c) {
          if (!part.is_object() || !part.contains("type") || part["type"] != "text" ||
              !part.contains("text") || !part["text"].is_string())
            throw BadRequest{"message content parts must be {\"type\": \"text\", \"text\": ...}",
                             "messages"};
          cm.content += part["text"].get<std::string>();
        }
      } else if (c) {
        throw BadRequest{"message content must be a string or an array of text parts", "messages"};
      }
      ms.push_back(std::move(cm));
    }
    ChatPrompt cp;
    try {
      cp = apply_chat_template(codec, ms);
    } catch (const Error& e) {
      throw BadRequest{e.what(), "messages"};
    }
    p.prompt = std::move(cp.ids);
    p.stop_ids = std::move(cp.stop_ids);
    p.stop = std::move(cp.stop_strings);
  } else {
    const json* pr = field_of(body, "prompt");
    if (!pr) throw BadRequest{"prompt is required", "prompt"};
    const json* one = pr;
    if (pr->is_array() && pr->size() == 1 && ((*pr)[0].is_string() || (*pr)[0].is_array()))
      one = &(*pr)[0];  // a batch of one
    if (one->is_string()) {
      p.prompt = codec.encode(one->get<std::string>());
    } else if (one->is_array() && !one->empty() &&
               std::all_of(one->begin(), one->end(), [](const json& x) { return x.is_number_integer(); })) {
      for (const json& x : *one) {
        const long long id = x.get<long long>();
        if (id < 0 || id >= lim.vocab)
          throw BadRequest{"prompt token id " + std::to_string(id) + " is outside the vocabulary (" +
                               std::to_string(lim.vocab) + ")",
                           "prompt"};
        p.prompt.push_back(int32_t(id));
      }
    } else {
      throw BadRequest{"prompt must be a string, an array of token ids, or a batch of one of "
                       "those (batches of several prompts: send several requests)",
                       "prompt"};
    }
    if (p.prompt.empty()) throw BadRequest{"prompt is empty", "prompt"};
    if (codec.eos_id() >= 0) p.stop_ids.push_back(codec.eos_id());
    unsupported_unless(body, "echo", false);
    unsupported_unless(body, "suffix", json());
    unsupported_unless(body, "best_of", 1);
    unsupported_unless(body, "logprobs", 0);
  }
  if (chat) {
    unsupported_unless(body, "logprobs", false);
    unsupported_unless(body, "tools", json::array());
  }
  unsupported_unless(body, "n", 1);
  unsupported_unless(body, "presence_penalty", 0);
  unsupported_unless(body, "frequency_penalty", 0);
  unsupported_unless(body, "logit_bias", json::object());
  const int prompt_cap = lim.max_prompt_tokens > 0 ? std::min(lim.max_prompt_tokens, lim.context) : lim.context;
  if (int(p.prompt.size()) > prompt_cap)
    throw BadRequest{"the prompt has " + std::to_string(p.prompt.size()) + " tokens; this server "
                     "accepts at most " + std::to_string(prompt_cap), chat ? "messages" : "prompt"};
  const int room = lim.context - int(p.prompt.size());
  const char* mt = chat && field_of(body, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  const bool given = field_of(body, mt) != nullptr;
  const long long def = chat ? std::min(lim.max_tokens_limit, std::max(room, 1)) : 16;
  p.max_tokens = int(int_field(body, mt, def, 1, lim.max_tokens_limit));
  if (given && p.max_tokens > room)
    throw BadRequest{"the prompt (" + std::to_string(p.prompt.size()) + " tokens) plus " + mt + " (" +
                         std::to_string(p.max_tokens) + ") exceeds the context of " +
                         std::to_string(lim.context) + " tokens",
                     mt};
  // unsent: the default, within the context and the server's limit (found by fuzz_request: a
  // completion's default of 16 went past a --max_tokens_limit below 16)
  if (!given) p.max_tokens = std::max(1, std::min({p.max_tokens, room, lim.max_tokens_limit}));
  if (room < 1) throw BadRequest{"the prompt fills the context of " + std::to_string(lim.context) +
                                     " tokens; nothing can be generated", chat ? "messages" : "prompt"};
  p.sampling.temperature = number_field(body, "temperature", 1.0, 0, 2);
  p.sampling.top_p = number_field(body, "top_p", 1.0, 0, 1, /*lo_open=*/true);
  const long long top_k = int_field(body, "top_k", 0, -1, 1 << 30);
  p.sampling.top_k = top_k < 0 ? 0 : int(top_k);
  p.sampling.min_p = number_field(body, "min_p", 0.0, 0, 1);
  p.sampling.repetition_penalty = number_field(body, "repetition_penalty", 1.0, 0, 100, true);
  p.sampling.seed = uint64_t(int_field(body, "seed", (long long)default_seed,
                                       std::numeric_limits<long long>::min(),
                                       std::numeric_limits<long long>::max()));
  p.stream = bool_field(body, "stream", false);
  if (const json* so = field_of(body, "stream_options")) {
    if (!so->is_object()) throw BadRequest{"stream_options must be an object", "stream_options"};
    p.include_usage = bool_field(*so, "include_usage", false);
  }
  if (const json* s = field_of(body, "stop")) {
    if (s->is_string()) {
      p.stop.push_back(s->get<std::string>());
    } else if (s->is_array() && s->size() <= 16 &&
               std::all_of(s->begin(), s->end(), [](const json& x) { return x.is_string(); })) {
      for (const json& x : *s) p.stop.push_back(x.get<std::string>());
    } else {
      throw BadRequest{"stop must be a string or an array of at most 16 strings", "stop"};
    }
  }
  return p;
}

}  // namespace

CompletionRequest parse_completion_request(const json& body, bool chat, const TextCodec& codec,
                                           const RequestLimits& lim, uint64_t default_seed) {
  // Every field is type-checked before it is read; this keeps a check that was missed a 400
  // naming the request rather than an escaped nlohmann exception (a 500).
  try {
    return parse_unguarded(body, chat, codec, lim, default_seed);
  } catch (const json::exception& e) {
    throw BadRequest{std::string("malformed request: ") + e.what(), ""};
  }
}

}  // namespace dsv3
