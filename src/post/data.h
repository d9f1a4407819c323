// Post-training data (docs/post_training.md): chat, preference and prompt JSONL read line by
// line -- a malformed line is reported with file:line and counted, never fatal (a file with no
// usable line is) -- rendered with the tokenizer's chat template (infer/chat.h render_chat), and
// packed into fixed-length rows that carry their loss mask along.
#pragma once
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/chat.h"
#include "model/block.h"

namespace dsv3 {

// What reading a JSONL file found: lines used, lines skipped and the first problems.
struct JsonlReport {
  std::string path;
  int64_t lines = 0, used = 0, bad = 0;
  std::vector<std::string> problems;  // "file:line: what" (the first 20)
  void add_problem(int64_t line, const std::string& what);
  std::string summary() const;  // "chat.jsonl: 98 examples, 2 malformed lines skipped"
};

// Calls parse(json, line number) for every non-blank line of path; a line that is not JSON or
// whose parse throws dsv3::Error is counted as bad with its message. Throws when the file cannot
// be read or no line was usable.
void read_jsonl(const std::string& path, JsonlReport& rep,
                const std::function<void(const nlohmann::json&, int64_t)>& parse);

// {"messages": [{"role", "content"}...]} or a bare message list; throws a message naming the
// field that is wrong.
std::vector<ChatMessage> parse_messages(const nlohmann::json& j, const char* what);

// One rendered conversation: ids and the per-id mask (1 = trained on).
struct Sequence {
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;
};

// SFT: chat JSONL -> conversations, each with at least one assistant turn.
std::vector<Sequence> read_chat_jsonl(const std::string& path, const TextCodec& codec,
                                      JsonlReport& rep);

// Fixed-length rows of T+1 tokens and the weight of each of their T targets: whole sequences
// greedily placed one after another (a sequence longer than T+1 is cut to T+1 and counted), the
// rest of a row padded with weight 0. Target t of a row (its token t+1) has weight mask[t+1] of
// the sequence that token came from, so a row never learns across a sequence boundary either.
struct PackedRows {
  int T = 0;
  std::vector<int32_t> tokens;  // (rows, T+1)
  std::vector<float> weights;   // (rows, T)
  int64_t truncated = 0;        // sequences cut to T+1
  int64_t rows() const { return T > 0 ? int64_t(weights.size()) / T : 0; }
};
PackedRows pack_sequences(const std::vector<Sequence>& seqs, int T, int32_t pad_id);

// DPO: {"prompt", "chosen", "rejected"}, each a string (a user message / an assistant reply) or
// a message list. Both sides rendered in full; `mask` marks the response (the tokens after the
// common prompt that render_chat trains on).
struct PreferencePair {
  Sequence chosen, rejected;
};
std::vector<PreferencePair> read_preference_jsonl(const std::string& path, const TextCodec& codec,
                                                  JsonlReport& rep);

// GRPO: {"prompt": string or message list, "answer": string or number (optional)}.
struct RlPrompt {
  std::vector<int32_t> ids;  // rendered with the generation prompt
  std::string answer;        // the reference the reward rules compare with ("" = none)
};
std::vector<RlPrompt> read_prompt_jsonl(const std::string& path, const TextCodec& codec,
                                        JsonlReport& rep);

}  // namespace dsv3
