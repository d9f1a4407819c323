#include "infer/chat.h"

#include "core/check.h"

namespace dsv3 {

namespace {
constexpr const char* kBos = "<\xEF\xBD\x9C" "begin\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
constexpr const char* kEos = "<\xEF\xBD\x9C" "end\xE2\x96\x81of\xE2\x96\x81sentence\xEF\xBD\x9C>";
constexpr const char* kUser = "<\xEF\xBD\x9CUser\xEF\xBD\x9C>";
constexpr const char* kAssistant = "<\xEF\xBD\x9C" "Assistant\xEF\xBD\x9C>";

std::string role_of(const std::string& r) {
  if (r == "developer") return "system";
  DSV3_CHECK(r == "system" || r == "user" || r == "assistant", "message role '", r,
             "' is not supported (system, developer, user, assistant)");
  return r;
}
}  // namespace

ChatPrompt apply_chat_template(const TextCodec& codec, const std::vector<ChatMessage>& messages) {
  DSV3_CHECK(!messages.empty(), "messages must not be empty");
  ChatPrompt p;
  std::string system, text;
  if (codec.special_id(kUser) >= 0 && codec.special_id(kAssistant) >= 0) {
    p.template_name = "deepseek-v3";
    for (const auto& m : messages)
      if (role_of(m.role) == "system") system += (system.empty() ? "" : "\n\n") + m.content;
    if (codec.special_id(kBos) >= 0) text += kBos;
    text += system;
    for (const auto& m : messages) {
      const std::string r = role_of(m.role);
      if (r == "user") text += std::string(kUser) + m.content;
      else if (r == "assistant") text += std::string(kAssistant) + m.content + kEos;
    }
    text += kAssistant;
    p.ids = codec.encode_with_specials(text);
    if (codec.special_id(kEos) >= 0) p.stop_ids.push_back(codec.special_id(kEos));
    return p;
  }
  p.template_name = "plain";
  for (const auto& m : messages) {
    const std::string r = role_of(m.role);
    if (r == "system") text += m.content + "\n\n";
    else if (r == "user") text += "User: " + m.content + "\n\n";
    else text += "Assistant: " + m.content + "\n\n";
  }
  text += "Assistant:";
  p.ids = codec.encode(text);
  if (codec.eos_id() >= 0) p.stop_ids.push_back(codec.eos_id());
  p.stop_strings.push_back("\nUser:");
  return p;
}

RenderedChat render_chat(const TextCodec& codec, const std::vector<ChatMessage>& messages,
                         bool generation_prompt) {
  DSV3_CHECK(!messages.empty(), "messages must not be empty");
  RenderedChat r;
  auto put = [&](const std::vector<int32_t>& ids, uint8_t trained) {
    r.ids.insert(r.ids.end(), ids.begin(), ids.end());
    r.assistant.insert(r.assistant.end(), ids.size(), trained);
  };
  auto special = [&](const char* s) { return std::vector<int32_t>{codec.special_id(s)}; };
  const bool v3 = codec.special_id(kUser) >= 0 && codec.special_id(kAssistant) >= 0;
  const int32_t eos = v3 ? codec.special_id(kEos) : codec.eos_id();
  if (eos >= 0) r.stop_ids.push_back(eos);
  if (v3) {
    r.template_name = "deepseek-v3";
    std::string system;  // every system message first, as apply_chat_template does
    for (const auto& m : messages)
      if (role_of(m.role) == "system") system += (system.empty() ? "" : "\n\n") + m.content;
    if (codec.special_id(kBos) >= 0) put(special(kBos), 0);
    if (!system.empty()) put(codec.encode(system), 0);
    for (const auto& m : messages) {
      const std::string role = role_of(m.role);
      if (role == "user") {
        put(special(kUser), 0);
        put(codec.encode(m.content), 0);
      } else if (role == "assistant") {
        put(special(kAssistant), 0);
        put(codec.encode(m.content), 1);
        if (eos >= 0) put({eos}, 1);
      }
    }
    if (generation_prompt) put(special(kAssistant), 0);
    return r;
  }
  r.template_name = "plain";
  for (const auto& m : messages) {
    const std::string role = role_of(m.role);
    if (role == "system") put(codec.encode(m.content + "\n\n"), 0);
    else if (role == "user") put(codec.encode("User: " + m.content + "\n\n"), 0);
    else {
      put(codec.encode("Assistant:"), 0);
      put(codec.encode(" " + m.content + "\n\n"), 1);
      if (eos >= 0) put({eos}, 1);
    }
  }
  if (generation_prompt) put(codec.encode("Assistant:"), 0);
  return r;
}

}  // namespace dsv3
