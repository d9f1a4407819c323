// Command-line and config-file settings, driven by the field tables (O5): each command lists
// which groups of fields it takes; the parser, the config-file reader and --help all read the
// same lists, so a setting cannot be documented under one name and parsed under another.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "core/fields.h"

namespace dsv3::cli {

using dsv3::FieldGroup;  // a component's field table and the struct it writes (core/fields.h)

struct ParsedArgs {
  std::vector<std::string> set_keys;     // every key set by file or flag, in order
  std::string preset;                    // --preset, if given
  bool json = false;                     // --json
  bool help = false;                     // --help / -h
};

// Parses argv[first..]: --key value, --key=value, --flag (bool true), --preset NAME,
// --config FILE, --json, --help. `apply_preset` is called with the preset name before the file
// and flags are applied (so they override it). Unknown keys and bad values throw an Error that
// names them.
ParsedArgs parse_args(int argc, char** argv, int first, const std::vector<FieldGroup>& groups,
                      const std::function<void(const std::string&)>& apply_preset);

// Reads `key = value` lines ('#' comments) into the groups; errors name file:line.
void apply_config_file(const std::string& path, const std::vector<FieldGroup>& groups,
                       std::vector<std::string>* set_keys);

// For commands without presets: parses argv[first..] into the groups. On --help it prints the
// help text and returns nullopt (the command then exits 0).
std::optional<ParsedArgs> parse_command(int argc, char** argv, int first,
                                        const std::vector<FieldGroup>& groups,
                                        const std::string& usage, const std::string& summary);

std::string help_text(const std::string& usage, const std::string& summary,
                      const std::vector<FieldGroup>& groups, bool takes_preset);

}  // namespace dsv3::cli
