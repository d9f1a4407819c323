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

// A whole conversation for training (SFT, DPO, GRPO; docs/post_training.md), rendered with the
// same template segment by segment, and `assistant` marking the tokens the model is trained to
// produce: each assistant turn's content and its end marker (<｜end▁of▁sentence｜>; in the plain
// template " {content}\n\n" and the end-of-sequence token when there is one), never the role
// markers, system or user text. Message contents are encoded as text (a marker string inside a
// message stays text). generation_prompt: end with the assistant marker (GRPO's prompts).
struct RenderedChat {
  std::vector<int32_t> ids;
  std::vector<uint8_t> assistant;  // per id: 1 inside an assistant turn's trained part
  std::vector<int32_t> stop_ids;
  const char* template_name = "";
};
RenderedChat render_chat(const TextCodec& codec, const std::vector<ChatMessage>& messages,
                         bool generation_prompt);

}  // namespace dsv3
