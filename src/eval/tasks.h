// Benchmark task files (E2): JSONL in the layouts people already have, recognised by their
// fields (docs/evaluation.md has the table):
//   HellaSwag          ctx (or ctx_a + ctx_b), endings, label [, activity_label]
//   multiple choice    question, choices (list, or ARC's {text, label}), answer (index or
//                      letter) or answerKey                          (MMLU, ARC, ...)
//   generation         prompt (or question), answer                  (GSM8K, QA)
//   translation        source, reference (string or list)            (WMT, summaries)
// The layout is that of the file's first JSON object; a line that is not valid JSON or lacks
// what its layout needs is reported (file:line and why) and counted, never fatal. A first
// object that fits no layout is an error naming its fields.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

namespace dsv3::eval {

enum class TaskKind : uint8_t { HellaSwag, MultipleChoice, Generation, Translation };
const char* task_kind_name(TaskKind k);  // "hellaswag" | "multiple_choice" | ...

struct TaskItem {
  int64_t line = 0;                    // 1-based line in the file
  // HellaSwag: the query as lm-evaluation-harness builds it; multiple choice: the question;
  // generation: the prompt as given, or "Question: Q\nAnswer:"; translation: the source
  std::string context;
  std::vector<std::string> choices;    // HellaSwag endings, multiple-choice texts
  std::vector<std::string> references; // generation: the answer; translation: the references
  int gold = -1;                       // index into choices
};

struct BadLine {
  int64_t line;
  std::string why;
};

struct TaskFile {
  std::string path, name;  // name: the file name without directories and extensions
  TaskKind kind = TaskKind::Generation;
  std::vector<TaskItem> items;
  std::vector<BadLine> bad;  // malformed lines (all of them; the CLI prints the first few)
  int64_t lines = 0;         // non-blank lines read
};

// Parses a task file's text. Throws dsv3::Error when no line is a JSON object or the first
// object fits no layout; everything else bad is in `bad`.
TaskFile parse_tasks(std::string_view text, const std::string& path);
// Reads (plain, .gz or .zst) and parses a file; at least one item must be valid.
TaskFile read_task_file(const std::string& path);

// HellaSwag's text clean-up as lm-evaluation-harness does it: strip, " [title]" -> ". ",
// drop any "[...]" tag, "  " -> " ".
std::string hellaswag_preprocess(std::string_view text);

}  // namespace dsv3::eval
