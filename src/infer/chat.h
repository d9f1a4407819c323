// Chat prompts (I2): messages -> token ids with the tokenizer's chat template.
// - DeepSeek-V3's template when the tokenizer has its markers (<｜User｜>, <｜Assistant｜>):
//     <｜begin▁of▁sentence｜>{system}<｜User｜>{user}<｜Assistant｜>{assistant}<｜end▁of▁sentence｜>
//     ... <｜User｜>{user}<｜Assistant｜>          (generation starts here; stops at end▁of▁sentence)
// - otherwise a plain-text default (docs/inference.md), for byte-level and GPT-2 style models:
//     {system}\n\nUser: {user}\n\nAssistant: {assistant}\n\n ... User: {user}\n\nAssistant:
//   which stops at the end-of-sequence token (when the tokenizer has one) or at "\nUser:".
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "tokenizer/text_codec.h"

namespace dsv3 {

struct ChatMessage {
  std::string role;  // system, user, assistant (developer is read as system)
  std::string content;
};

struct ChatPrompt {
  std::vector<int32_t> ids;
  std::vector<int32_t> stop_ids;
  std::vector<std::string> stop_strings;
  const char* template_name = "";  // "deepseek-v3" or "plain"
};

// Throws dsv3::Error for an unknown role or an empty conversation.
ChatPrompt apply_chat_template(const TextCodec& codec, const std::vector<ChatMessage>& messages);

}  // namespace dsv3
