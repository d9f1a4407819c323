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

}  // namespace dsv3
