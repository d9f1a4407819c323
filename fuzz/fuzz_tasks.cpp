// Benchmark task files of `dsv3 evaluate` (eval/tasks.h): layout detection from the first JSON
// object, each layout's fields (strings, lists, ARC's {text, label}, indices as numbers or
// strings, answer letters), HellaSwag's clean-up. Oracle: only dsv3::Error may escape (an unknown
// layout, no object at all); every item kept satisfies what the scorer relies on.
#include <cstdlib>

#include "eval/tasks.h"
#include "fuzz_util.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  fuzz::run_expecting_errors([&] {
    const eval::TaskFile f = eval::parse_tasks(text, "input.jsonl");
    for (const auto& it : f.items) {
      if (it.context.empty() || it.line < 1) std::abort();
      const bool choice = f.kind == eval::TaskKind::HellaSwag || f.kind == eval::TaskKind::MultipleChoice;
      if (choice && (it.choices.size() < 2 || it.gold < 0 || it.gold >= int(it.choices.size()))) std::abort();
      if (!choice && it.references.empty()) std::abort();
    }
  });
  return 0;
}
