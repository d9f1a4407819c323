#include "eval/tasks.h"

#include <algorithm>
#include <cctype>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "core/check.h"
#include "core/text_lines.h"
#include "data/reader.h"

namespace dsv3::eval {

const char* task_kind_name(TaskKind k) {
  switch (k) {
    case TaskKind::HellaSwag: return "hellaswag";
    case TaskKind::MultipleChoice: return "multiple_choice";
    case TaskKind::Generation: return "generation";
    case TaskKind::Translation: return "translation";
  }
  return "?";
}

namespace {

using nlohmann::json;

// Python's str.replace(a, b): every non-overlapping occurrence, left to right.
std::string replace_all(std::string s, std::string_view a, std::string_view b) {
  std::string out;
  size_t pos = 0;
  for (size_t hit; (hit = s.find(a, pos)) != std::string::npos; pos = hit + a.size())
    out.append(s, pos, hit - pos).append(b);
  return out.append(s, pos, std::string::npos);
}

bool is_space(char c) { return c == ' ' || (c >= '\t' && c <= '\r'); }

std::string strip(std::string_view s) {
  size_t a = 0, b = s.size();
  while (a < b && is_space(s[a])) a++;
  while (b > a && is_space(s[b - 1])) b--;
  return std::string(s.substr(a, b - a));
}

// Python's str.capitalize() on ASCII letters: the first upper-case, the rest lower-case.
std::string capitalize(std::string s) {
  for (size_t i = 0; i < s.size(); i++) {
    const unsigned char c = s[i];
    if (c < 128) s[i] = char(i == 0 ? std::toupper(c) : std::tolower(c));
  }
  return s;
}

bool has(const json& j, const char* k) { return j.contains(k); }

// The layout of a first object, or none (fills `kind`).
bool detect(const json& j, TaskKind& kind) {
  if ((has(j, "ctx") || (has(j, "ctx_a") && has(j, "ctx_b"))) && has(j, "endings") && has(j, "label"))
    kind = TaskKind::HellaSwag;
  else if (has(j, "question") && has(j, "choices") && (has(j, "answer") || has(j, "answerKey")))
    kind = TaskKind::MultipleChoice;
  else if ((has(j, "prompt") || has(j, "question")) && has(j, "answer"))
    kind = TaskKind::Generation;
  else if (has(j, "source") && has(j, "reference"))
    kind = TaskKind::Translation;
  else
    return false;
  return true;
}

const std::string& need_string(const json& j, const char* k) {
  DSV3_CHECK(j.contains(k), "no \"", k, "\" field");
  DSV3_CHECK(j[k].is_string(), "\"", k, "\" is not a string");
  return j[k].get_ref<const std::string&>();
}

std::vector<std::string> need_strings(const json& j, const char* k) {
  DSV3_CHECK(j.contains(k), "no \"", k, "\" field");
  DSV3_CHECK(j[k].is_array(), "\"", k, "\" is not a list");
  std::vector<std::string> out;
  for (const auto& e : j[k]) {
    DSV3_CHECK(e.is_string(), "\"", k, "\" holds a non-string");
    out.push_back(e.get<std::string>());
  }
  return out;
}

// An index given as a number or a decimal string ("3", as HF's hellaswag stores it).
int as_index(const json& v, const char* k) {
  if (v.is_number_integer()) return int(std::clamp<int64_t>(v.get<int64_t>(), -1, 1 << 30));
  DSV3_CHECK(v.is_string(), "\"", k, "\" is neither an index nor a string");
  const std::string& s = v.get_ref<const std::string&>();
  DSV3_CHECK(!s.empty() && s.size() < 9 && s.find_first_not_of("0123456789") == std::string::npos,
             "\"", k, "\" is '", s, "', not an index");
  return std::stoi(s);
}

TaskItem parse_item(const json& j, TaskKind kind) {
  DSV3_CHECK(j.is_object(), "not a JSON object");
  TaskItem it;
  switch (kind) {
    case TaskKind::HellaSwag: {
      std::string ctx = j.contains("ctx_a") && j.contains("ctx_b")
                            ? need_string(j, "ctx_a") + " " + capitalize(need_string(j, "ctx_b"))
                            : need_string(j, "ctx");
      if (j.contains("activity_label")) ctx = need_string(j, "activity_label") + ": " + ctx;
      it.context = hellaswag_preprocess(ctx);
      for (const auto& e : need_strings(j, "endings")) it.choices.push_back(hellaswag_preprocess(e));
      DSV3_CHECK(j.contains("label"), "no \"label\" field");
      it.gold = as_index(j["label"], "label");
      break;
    }
    case TaskKind::MultipleChoice: {
      it.context = need_string(j, "question");
      std::vector<std::string> labels;
      DSV3_CHECK(j.contains("choices"), "no \"choices\" field");
      if (j["choices"].is_object()) {  // ARC: {"text": [...], "label": ["A", ...]}
        it.choices = need_strings(j["choices"], "text");
        if (j["choices"].contains("label")) labels = need_strings(j["choices"], "label");
        DSV3_CHECK(labels.empty() || labels.size() == it.choices.size(),
                   "choices has ", it.choices.size(), " texts but ", labels.size(), " labels");
      } else {
        it.choices = need_strings(j, "choices");
      }
      DSV3_CHECK(j.contains("answer") || j.contains("answerKey"), "no \"answer\" field");
      const json& a = j.contains("answer") ? j["answer"] : j["answerKey"];
      const char* akey = j.contains("answer") ? "answer" : "answerKey";
      if (a.is_number_integer()) {
        it.gold = as_index(a, akey);
      } else {
        DSV3_CHECK(a.is_string(), "\"", akey, "\" is neither an index nor a letter");
        const std::string& s = a.get_ref<const std::string&>();
        for (size_t i = 0; i < labels.size() && it.gold < 0; i++)
          if (labels[i] == s) it.gold = int(i);
        if (it.gold < 0 && s.size() == 1 && s[0] >= 'A' && s[0] <= 'Z') it.gold = s[0] - 'A';
        DSV3_CHECK(it.gold >= 0, "\"", akey, "\" '", s, "' is not a choice label or a letter A-Z");
      }
      break;
    }
    case TaskKind::Generation: {
      // a bare question (GSM8K's own layout) gets lm-evaluation-harness's gsm8k template
      it.context = j.contains("prompt") ? need_string(j, "prompt")
                                        : "Question: " + need_string(j, "question") + "\nAnswer:";
      DSV3_CHECK(j.contains("answer"), "no \"answer\" field");
      const json& a = j["answer"];
      if (a.is_number()) it.references.push_back(a.dump());  // "answer": 42
      else it.references.push_back(need_string(j, "answer"));
      break;
    }
    case TaskKind::Translation: {
      it.context = need_string(j, "source");
      DSV3_CHECK(j.contains("reference"), "no \"reference\" field");
      if (j["reference"].is_array()) it.references = need_strings(j, "reference");
      else it.references.push_back(need_string(j, "reference"));
      DSV3_CHECK(!it.references.empty(), "\"reference\" is an empty list");
      break;
    }
  }
  if (kind == TaskKind::HellaSwag || kind == TaskKind::MultipleChoice) {
    DSV3_CHECK(it.choices.size() >= 2, "needs at least 2 choices, has ", it.choices.size());
    DSV3_CHECK(it.gold >= 0 && it.gold < int(it.choices.size()), "the answer index ", it.gold,
               " is outside the ", it.choices.size(), " choices");
  }
  DSV3_CHECK(!strip(it.context).empty(), "the context/question/prompt/source is empty");
  return it;
}

std::string field_list(const json& j) {
  std::string s;
  for (auto it = j.begin(); it != j.end(); ++it) s += (s.empty() ? "" : ", ") + it.key();
  return s.empty() ? "none" : s;
}

}  // namespace

std::string hellaswag_preprocess(std::string_view text) {
  std::string s = replace_all(strip(text), " [title]", ". ");
  std::string out;  // re.sub("\\[.*?\\]", "", s): '.' does not match a newline
  for (size_t i = 0; i < s.size();) {
    if (s[i] == '[') {
      size_t j = i + 1;
      while (j < s.size() && s[j] != ']' && s[j] != '\n') j++;
      if (j < s.size() && s[j] == ']') {
        i = j + 1;
        continue;
      }
    }
    out += s[i++];
  }
  return replace_all(out, "  ", " ");
}

TaskFile parse_tasks(std::string_view text, const std::string& path) {
  TaskFile f;
  f.path = path;
  std::string name = std::filesystem::path(path).filename().string();
  name = name.substr(0, name.find('.'));
  f.name = name.empty() ? path : name;
  bool detected = false;
  for_each_line(text, [&](int64_t line, std::string_view l) {
    if (strip(l).empty()) return;
    f.lines++;
    json j = json::parse(l, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded()) {
      f.bad.push_back({line, "not valid JSON"});
      return;
    }
    if (!j.is_object()) {
      f.bad.push_back({line, "not a JSON object"});
      return;
    }
    if (!detected) {
      DSV3_CHECK(detect(j, f.kind), path, ":", line, ": unknown task layout (fields: ", field_list(j),
                 "); expected HellaSwag {ctx, endings, label}, multiple choice {question, choices, "
                 "answer}, generation {prompt, answer} or translation {source, reference}");
      detected = true;
    }
    try {
      TaskItem it = parse_item(j, f.kind);
      it.line = line;
      f.items.push_back(std::move(it));
    } catch (const Error& e) {
      f.bad.push_back({line, e.what()});
    } catch (const json::exception& e) {
      f.bad.push_back({line, e.what()});
    }
  });
  DSV3_CHECK(detected, path, ": no line is a JSON object (", f.bad.size(), " malformed of ",
             f.lines, " non-blank lines): not a task file");
  return f;
}

TaskFile read_task_file(const std::string& path) {
  DSV3_CHECK(std::filesystem::is_regular_file(path), "task file ", path, " does not exist");
  std::string text;
  {
    ByteSource src(path);
    char buf[1 << 16];
    for (size_t n; (n = src.read(buf, sizeof buf)) > 0;) text.append(buf, n);
  }
  TaskFile f = parse_tasks(text, path);
  DSV3_CHECK(!f.items.empty(), path, ": none of its ", f.lines, " lines is a valid ",
             task_kind_name(f.kind), " item (first problem, line ", f.bad.empty() ? 0 : f.bad[0].line,
             ": ", f.bad.empty() ? "none" : f.bad[0].why, ")");
  return f;
}

}  // namespace dsv3::eval
