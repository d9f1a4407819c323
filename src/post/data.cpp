#include "post/data.h"

#include <algorithm>
#include <fstream>

#include "core/check.h"

namespace dsv3 {

void JsonlReport::add_problem(int64_t line, const std::string& what) {
  bad++;
  if (problems.size() < 20) problems.push_back(path + ":" + std::to_string(line) + ": " + what);
}

std::string JsonlReport::summary() const {
  std::string s = path + ": " + std::to_string(used) + " examples";
  if (bad > 0) s += ", " + std::to_string(bad) + " malformed line" + (bad == 1 ? "" : "s") + " skipped";
  return s;
}

void read_jsonl(const std::string& path, JsonlReport& rep,
                const std::function<void(const nlohmann::json&, int64_t)>& parse) {
  std::ifstream in(path, std::ios::binary);
  DSV3_CHECK(in, "cannot open ", path);
  rep.path = path;
  std::string line;
  int64_t no = 0;
  while (std::getline(in, line)) {
    no++;
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    rep.lines++;
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      rep.add_problem(no, "not JSON (" + json_error_text(e) + ")");
      continue;
    }
    try {
      parse(j, no);
      rep.used++;
    } catch (const Error& e) {
      rep.add_problem(no, e.what());
    }
  }
  DSV3_CHECK(!in.bad(), "read error in ", path);
  DSV3_CHECK(rep.used > 0, path, ": no usable line (", rep.lines, " non-blank, ", rep.bad,
             " malformed", rep.problems.empty() ? std::string() : "; first: " + rep.problems[0], ")");
}

namespace {
std::string text_field(const nlohmann::json& j, const char* key, const char* what) {
  DSV3_CHECK(j.is_object() && j.contains(key), what, " needs \"", key, "\"");
  const auto& v = j.at(key);
  DSV3_CHECK(v.is_string(), what, ": \"", key, "\" must be a string (got ", v.type_name(), ")");
  return v.get<std::string>();
}

void check_ids(const std::vector<int32_t>& ids) {
  DSV3_CHECK(!ids.empty(), "renders to no tokens");
}
}  // namespace

std::vector<ChatMessage> parse_messages(const nlohmann::json& j, const char* what) {
  const nlohmann::json* list = &j;
  if (j.is_object()) {
    DSV3_CHECK(j.contains("messages"), what, " needs \"messages\"");
    list = &j.at("messages");
  }
  DSV3_CHECK(list->is_array() && !list->empty(), what, ": \"messages\" must be a non-empty list");
  std::vector<ChatMessage> out;
  for (const auto& m : *list) {
    DSV3_CHECK(m.is_object(), what, ": a message must be an object with role and content");
    ChatMessage cm{text_field(m, "role", "a message"), text_field(m, "content", "a message")};
    DSV3_CHECK(cm.role == "system" || cm.role == "developer" || cm.role == "user" ||
                   cm.role == "assistant",
               "message role '", cm.role, "' is not system, developer, user or assistant");
    out.push_back(std::move(cm));
  }
  return out;
}

std::vector<Sequence> read_chat_jsonl(const std::string& path, const TextCodec& codec,
                                      JsonlReport& rep) {
  std::vector<Sequence> out;
  read_jsonl(path, rep, [&](const nlohmann::json& j, int64_t) {
    const auto msgs = parse_messages(j, "a chat example");
    DSV3_CHECK(std::any_of(msgs.begin(), msgs.end(), [](const ChatMessage& m) { return m.role == "assistant"; }),
               "a chat example needs at least one assistant message (nothing to train on)");
    RenderedChat r = render_chat(codec, msgs, false);
    check_ids(r.ids);
    out.push_back({std::move(r.ids), std::move(r.assistant)});
  });
  return out;
}

PackedRows pack_sequences(const std::vector<Sequence>& seqs, int T, int32_t pad_id) {
  DSV3_CHECK(T >= 1, "sequence length must be >= 1");
  PackedRows p;
  p.T = T;
  std::vector<int32_t> row;
  std::vector<uint8_t> mask;
  auto flush = [&] {
    if (row.empty()) return;
    mask.resize(size_t(T) + 1, 0);
    row.resize(size_t(T) + 1, pad_id);
    p.tokens.insert(p.tokens.end(), row.begin(), row.end());
    for (int t = 0; t < T; t++) p.weights.push_back(float(mask[size_t(t) + 1]));
    row.clear();
    mask.clear();
  };
  for (const Sequence& s : seqs) {
    size_t n = s.ids.size();
    if (n > size_t(T) + 1) n = size_t(T) + 1, p.truncated++;
    if (row.size() + n > size_t(T) + 1) flush();
    row.insert(row.end(), s.ids.begin(), s.ids.begin() + ptrdiff_t(n));
    mask.push_back(0);  // a sequence's first token is never a target of the one before it
    mask.insert(mask.end(), s.mask.begin() + 1, s.mask.begin() + ptrdiff_t(n));
  }
  flush();
  return p;
}

namespace {
// A prompt side: a string is one user message, a list is the messages as they are.
std::vector<ChatMessage> prompt_messages(const nlohmann::json& j) {
  DSV3_CHECK(j.contains("prompt"), "needs \"prompt\"");
  const auto& p = j.at("prompt");
  if (p.is_string()) return {{"user", p.get<std::string>()}};
  DSV3_CHECK(p.is_array(), "\"prompt\" must be a string or a message list");
  return parse_messages(p, "\"prompt\"");
}
// A response side: a string is one assistant message, a list is appended to the prompt.
std::vector<ChatMessage> response_messages(const nlohmann::json& j, const char* key) {
  DSV3_CHECK(j.contains(key), "needs \"", key, "\"");
  const auto& r = j.at(key);
  if (r.is_string()) return {{"assistant", r.get<std::string>()}};
  DSV3_CHECK(r.is_array(), "\"", key, "\" must be a string or a message list");
  auto m = parse_messages(r, key);
  DSV3_CHECK(std::any_of(m.begin(), m.end(), [](const ChatMessage& x) { return x.role == "assistant"; }),
             "\"", key, "\" has no assistant message");
  return m;
}
Sequence render_side(const TextCodec& codec, std::vector<ChatMessage> prompt,
                     const std::vector<ChatMessage>& response) {
  prompt.insert(prompt.end(), response.begin(), response.end());
  RenderedChat r = render_chat(codec, prompt, false);
  check_ids(r.ids);
  return {std::move(r.ids), std::move(r.assistant)};
}
}  // namespace

std::vector<PreferencePair> read_preference_jsonl(const std::string& path, const TextCodec& codec,
                                                  JsonlReport& rep) {
  std::vector<PreferencePair> out;
  read_jsonl(path, rep, [&](const nlohmann::json& j, int64_t) {
    DSV3_CHECK(j.is_object(), "a preference example must be an object with prompt, chosen, rejected");
    const auto prompt = prompt_messages(j);
    PreferencePair p{render_side(codec, prompt, response_messages(j, "chosen")),
                     render_side(codec, prompt, response_messages(j, "rejected"))};
    // only the response is scored: assistant turns inside the prompt are context
    const Sequence ctx = render_side(codec, prompt, {});
    for (Sequence* s : {&p.chosen, &p.rejected}) {
      for (size_t i = 0; i < ctx.ids.size() && i < s->mask.size(); i++) s->mask[i] = 0;
    }
    out.push_back(std::move(p));
  });
  return out;
}

std::vector<RlPrompt> read_prompt_jsonl(const std::string& path, const TextCodec& codec,
                                        JsonlReport& rep) {
  std::vector<RlPrompt> out;
  read_jsonl(path, rep, [&](const nlohmann::json& j, int64_t) {
    DSV3_CHECK(j.is_object(), "a prompt example must be an object with \"prompt\"");
    RlPrompt p;
    RenderedChat r = render_chat(codec, prompt_messages(j), true);
    check_ids(r.ids);
    p.ids = std::move(r.ids);
    if (j.contains("answer")) {
      const auto& a = j.at("answer");
      DSV3_CHECK(a.is_string() || a.is_number(), "\"answer\" must be a string or a number");
      p.answer = a.is_string() ? a.get<std::string>() : a.dump();
    }
    out.push_back(std::move(p));
  });
  return out;
}

}  // namespace dsv3
