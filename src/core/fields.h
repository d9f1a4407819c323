// Config fields as data (O5): each component lists its settings once -- name, type, help,
// and how to read and write the struct member. The CLI builds its parser and --help from these
// lists, config files and checkpoints use the same names, so nothing is parsed in two places.
#pragma once
#include <cmath>
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace dsv3 {

// The values a numeric setting accepts, checked whenever it is set (flag, config file,
// checkpoint) and shown by --help: [lo, hi], either end open or absent.
struct Range {
  double lo = -HUGE_VAL, hi = HUGE_VAL;
  bool lo_open = false, hi_open = false;
  bool bounded() const { return lo > -HUGE_VAL || hi < HUGE_VAL; }
  bool contains(double v) const {
    return (lo_open ? v > lo : v >= lo) && (hi_open ? v < hi : v <= hi);
  }
  std::string text() const;  // ">= 1", "> 0", "in [0, 1)", "in [1, 1048576]"
};
inline Range at_least(double lo) { return {lo, HUGE_VAL, false, false}; }
inline Range above(double lo) { return {lo, HUGE_VAL, true, false}; }
inline Range in_range(double lo, double hi) { return {lo, hi, false, false}; }    // [lo, hi]
inline Range in_range_open_hi(double lo, double hi) { return {lo, hi, false, true}; }  // [lo, hi)
inline Range in_range_open_lo(double lo, double hi) { return {lo, hi, true, false}; }  // (lo, hi]

struct FieldSpec {
  std::string name;  // snake_case; flags accept --name or --name-with-dashes
  std::string type;  // "int", "float", "bool", "string" or "a|b|c" for a choice
  std::string help;
  std::function<std::string(const void*)> get;        // value as text
  std::function<void(void*, const std::string&)> set;  // throws Error naming name and value
  Range range;  // int and float fields: the values `set` accepts
};

// Throws "NAME must be >= 1 (got 0)" unless v is in r.
void check_range(const std::string& name, const Range& r, double v, const std::string& text);
// Every numeric field's current value against its range (defaults and presets do not pass
// through `set`); `where` prefixes the message.
void check_field_ranges(const std::vector<FieldSpec>& fields, const void* obj,
                        const std::string& where = "");

// Strict parsers: the whole text must be a value of the type.
long long parse_int(const std::string& name, const std::string& v);
double parse_float(const std::string& name, const std::string& v);
bool parse_bool(const std::string& name, const std::string& v);
std::string format_float(double v);  // shortest text that round-trips

template <typename S>
FieldSpec field(const char* name, int S::*m, const char* help, Range r = {}) {
  return {name, "int", help,
          [m](const void* o) { return std::to_string(static_cast<const S*>(o)->*m); },
          [m, name, r](void* o, const std::string& v) {
            long long x = parse_int(name, v);
            if (x < -2147483647LL || x > 2147483647LL) parse_int(name, "overflow:" + v);
            check_range(name, r, double(x), v);
            static_cast<S*>(o)->*m = int(x);
          },
          r};
}
template <typename S>
FieldSpec field(const char* name, long long S::*m, const char* help, Range r = {}) {
  return {name, "int", help,
          [m](const void* o) { return std::to_string(static_cast<const S*>(o)->*m); },
          [m, name, r](void* o, const std::string& v) {
            const long long x = parse_int(name, v);
            check_range(name, r, double(x), v);
            static_cast<S*>(o)->*m = x;
          },
          r};
}
template <typename S>
FieldSpec field(const char* name, double S::*m, const char* help, Range r = {}) {
  return {name, "float", help,
          [m](const void* o) { return format_float(static_cast<const S*>(o)->*m); },
          [m, name, r](void* o, const std::string& v) {
            const double x = parse_float(name, v);
            check_range(name, r, x, v);
            static_cast<S*>(o)->*m = x;
          },
          r};
}
template <typename S>
FieldSpec field(const char* name, bool S::*m, const char* help) {
  return {name, "bool", help,
          [m](const void* o) { return std::string(static_cast<const S*>(o)->*m ? "true" : "false"); },
          [m, name](void* o, const std::string& v) { static_cast<S*>(o)->*m = parse_bool(name, v); },
          Range{}};
}
template <typename S>
FieldSpec field(const char* name, std::string S::*m, const char* help) {
  return {name, "string", help, [m](const void* o) { return static_cast<const S*>(o)->*m; },
          [m](void* o, const std::string& v) { static_cast<S*>(o)->*m = v; },
          Range{}};
}
// An enum or other choice: to_text / from_text convert (from_text throws on a bad value).
template <typename S, typename E>
FieldSpec choice(const char* name, E S::*m, const char* choices, const char* help,
                 const char* (*to_text)(E), E (*from_text)(const std::string&)) {
  return {name, choices, help, [m, to_text](const void* o) {
            return std::string(to_text(static_cast<const S*>(o)->*m));
          },
          [m, from_text](void* o, const std::string& v) { static_cast<S*>(o)->*m = from_text(v); },
          Range{}};
}

const FieldSpec* find_field(const std::vector<FieldSpec>& fields, const std::string& name);

// One component's settings (O5): its field table and the struct the fields read and write.
// The CLI parses flags into a list of groups; checkpoints store a run's groups by title.
struct FieldGroup {
  std::string title;  // "model", "optimizer", ...
  const std::vector<FieldSpec>* fields;
  void* target;
};
// The field of `name` in any group (nullptr if none), and the group it belongs to.
const FieldSpec* find_field(const std::vector<FieldGroup>& groups, const std::string& name,
                            const FieldGroup** group = nullptr);
// {"title": {fields...}, ...}
nlohmann::json groups_to_json(const std::vector<FieldGroup>& groups);
// The inverse: every key must belong to its group; groups absent from j keep their values.
void groups_from_json(const std::vector<FieldGroup>& groups, const nlohmann::json& j,
                      const std::string& where);

// A JSON non-negative integer as uint64; false for anything else (a float, a negative number, a
// string): the headers of dsv3's binary formats store sizes and offsets this way.
bool json_u64(const nlohmann::json& v, uint64_t* out);

// Struct <-> JSON object with typed values; from_json rejects unknown keys and bad values.
nlohmann::json fields_to_json(const std::vector<FieldSpec>& fields, const void* obj);
void fields_from_json(const std::vector<FieldSpec>& fields, void* obj, const nlohmann::json& j,
                      const std::string& where);

}  // namespace dsv3
