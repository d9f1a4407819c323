#include "flags.h"

#include <algorithm>
#include <cstdio>
#include <map>
#include <sstream>

#include "core/check.h"
#include "core/io.h"

namespace dsv3::cli {

namespace {

std::string normalise(std::string key) {
  std::replace(key.begin(), key.end(), '-', '_');
  return key;
}

// Finds the field for `key` in the groups; throws naming the key and the closest names.
std::pair<const FieldSpec*, void*> lookup(const std::vector<FieldGroup>& groups,
                                          const std::string& key, const std::string& where) {
  for (const auto& g : groups)
    if (const FieldSpec* f = find_field(*g.fields, key)) return {f, g.target};
  std::string hint;
  for (const auto& g : groups)
    for (const auto& f : *g.fields)
      if (f.name.find(key) != std::string::npos || key.find(f.name) != std::string::npos)
        hint += (hint.empty() ? "" : ", ") + f.name;
  fail(where, "unknown setting '", key, "'", hint.empty() ? "" : " (did you mean: " + hint + "?)",
       "; see --help");
}

void set(const std::vector<FieldGroup>& groups, const std::string& key, const std::string& value,
         const std::string& where, std::vector<std::string>* set_keys) {
  auto [f, target] = lookup(groups, key, where);
  try {
    f->set(target, value);
  } catch (const Error& e) {
    fail(where, e.what());
  }
  if (set_keys) set_keys->push_back(key);
}

std::string trim(const std::string& s) {
  const size_t b = s.find_first_not_of(" \t\r"), e = s.find_last_not_of(" \t\r");
  return b == std::string::npos ? "" : s.substr(b, e - b + 1);
}

}  // namespace

void apply_config_file(const std::string& path, const std::vector<FieldGroup>& groups,
                       std::vector<std::string>* set_keys) {
  std::string text;
  try {
    text = read_file(path);  // refuses a directory, names the reason it cannot open
  } catch (const Error& e) {
    fail("cannot read config file: ", e.what());
  }
  // A UTF-8 byte-order mark (Windows editors write one) is not part of the first key.
  if (text.compare(0, 3, "\xef\xbb\xbf") == 0) text.erase(0, 3);
  DSV3_CHECK(text.find('\0') == std::string::npos, path,
             ": contains NUL bytes: not a text config file",
             sniff_file_kind(path).empty() ? "" : " (it looks like " + sniff_file_kind(path) + ")");
  std::map<std::string, int> first_line;  // a key set twice in one file is a mistake
  std::istringstream in(text);
  std::string line;
  for (int n = 1; std::getline(in, line); n++) {
    const std::string where = path + ":" + std::to_string(n) + ": ";
    if (const size_t hash = line.find('#'); hash != std::string::npos) line.resize(hash);
    line = trim(line);
    if (line.empty()) continue;
    const size_t eq = line.find('=');
    DSV3_CHECK(eq != std::string::npos, where, "expected 'key = value', got '", quote_bytes(line),
               "'");
    std::string key = normalise(trim(line.substr(0, eq))), value = trim(line.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
      value = value.substr(1, value.size() - 2);
    DSV3_CHECK(!key.empty(), where, "missing key before '='");
    DSV3_CHECK(key != "preset" && key != "config", where, "'", key,
               "' goes on the command line, not in a config file");
    const auto [it, fresh] = first_line.emplace(key, n);
    DSV3_CHECK(fresh, where, "'", key, "' is set again (first at line ", it->second,
               "): one value per key in a config file (flags on the command line override it)");
    set(groups, key, value, where, set_keys);
  }
}

ParsedArgs parse_args(int argc, char** argv, int first, const std::vector<FieldGroup>& groups,
                      const std::function<void(const std::string&)>& apply_preset) {
  ParsedArgs out;
  std::vector<std::pair<std::string, std::string>> pairs;
  std::string config;
  for (int i = first; i < argc; i++) {
    std::string arg = argv[i];
    if (arg == "-h" || arg == "--help") {
      out.help = true;
      continue;
    }
    DSV3_CHECK(arg.rfind("--", 0) == 0 && arg.size() > 2, "unexpected argument '", arg,
               "' (settings are --key value; see --help)");
    std::string key = normalise(arg.substr(2)), value;
    bool has_value = false;
    if (const size_t eq = key.find('='); eq != std::string::npos) {
      value = arg.substr(2 + eq + 1);
      key = key.substr(0, eq);
      has_value = true;
    }
    if (key == "json" && !has_value) {
      out.json = true;
      continue;
    }
    if (!has_value) {
      // a bool field may stand alone: --norm_topk means true
      bool is_bool = false;
      for (const auto& g : groups)
        if (const FieldSpec* f = find_field(*g.fields, key)) is_bool = f->type == "bool";
      const bool next_is_value = i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0;
      if (is_bool && !next_is_value) {
        value = "true";
      } else {
        DSV3_CHECK(i + 1 < argc, "--", key, " needs a value");
        value = argv[++i];
      }
    }
    if (key == "preset") out.preset = value;
    else if (key == "config") config = value;
    else pairs.emplace_back(key, value);
  }
  if (out.help) return out;
  if (!out.preset.empty()) apply_preset(out.preset);
  if (!config.empty()) apply_config_file(config, groups, &out.set_keys);
  for (const auto& [k, v] : pairs) set(groups, k, v, "", &out.set_keys);
  return out;
}

std::optional<ParsedArgs> parse_command(int argc, char** argv, int first,
                                        const std::vector<FieldGroup>& groups,
                                        const std::string& usage, const std::string& summary) {
  ParsedArgs a = parse_args(argc, argv, first, groups, [](const std::string&) {
    fail("--preset is for train, info and bench; this command takes a model or files");
  });
  if (!a.help) return a;
  std::printf("%s", help_text(usage, summary, groups, false).c_str());
  return std::nullopt;
}

std::string help_text(const std::string& usage, const std::string& summary,
                      const std::vector<FieldGroup>& groups, bool takes_preset) {
  std::ostringstream os;
  os << "usage: " << usage << "\n\n" << summary << "\n";
  if (takes_preset)
    os << "\n  --preset NAME            start from a preset: debug, tiny, small, v2-lite, v3-671b\n"
       << "  --config FILE            'key = value' lines (same keys as the flags), applied\n"
       << "                           after the preset and before the flags\n";
  for (const auto& g : groups) {
    os << "\n" << g.title << ":\n";
    for (const auto& f : *g.fields) {
      std::string left = "  --" + f.name + " " + (f.type == "bool" ? "[true|false]" : f.type);
      const std::string def = f.get(g.target);
      if (left.size() < 27) left.resize(27, ' ');
      else left += "\n" + std::string(27, ' ');
      os << left << f.help << " [" << (def.empty() ? "\"\"" : def) << "]";
      if (f.range.bounded()) os << " (" << f.range.text() << ")";
      os << "\n";
    }
  }
  return os.str();
}

}  // namespace dsv3::cli
