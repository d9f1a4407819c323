#include "core/fields.h"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

#include "core/check.h"

namespace dsv3 {

long long parse_int(const std::string& name, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  long long x = std::strtoll(v.c_str(), &end, 10);
  DSV3_CHECK(!v.empty() && end == v.c_str() + v.size() && errno == 0, "'", name,
             "' expects an integer, got '", v, "'");
  return x;
}

double parse_float(const std::string& name, const std::string& v) {
  errno = 0;
  char* end = nullptr;
  double x = std::strtod(v.c_str(), &end);
  DSV3_CHECK(!v.empty() && end == v.c_str() + v.size() && errno == 0 && std::isfinite(x), "'",
             name, "' expects a finite number, got '", v, "'");
  return x;
}

bool parse_bool(const std::string& name, const std::string& v) {
  if (v == "true" || v == "1" || v == "yes" || v == "on") return true;
  if (v == "false" || v == "0" || v == "no" || v == "off") return false;
  fail("'", name, "' expects true or false, got '", v, "'");
}

std::string format_float(double v) {
  char buf[40];
  for (int prec = 6; prec <= 17; prec++) {
    std::snprintf(buf, sizeof buf, "%.*g", prec, v);
    if (std::strtod(buf, nullptr) == v) break;
  }
  return buf;
}

std::string Range::text() const {
  auto num = [](double v) { return format_float(v); };
  if (lo > -HUGE_VAL && hi < HUGE_VAL)
    return "in " + std::string(lo_open ? "(" : "[") + num(lo) + ", " + num(hi) +
           (hi_open ? ")" : "]");
  if (lo > -HUGE_VAL) return (lo_open ? "> " : ">= ") + num(lo);
  if (hi < HUGE_VAL) return (hi_open ? "< " : "<= ") + num(hi);
  return "any number";
}

void check_range(const std::string& name, const Range& r, double v, const std::string& text) {
  DSV3_CHECK(r.contains(v), name, " must be ", r.text(), " (got ", text, ")");
}

void check_field_ranges(const std::vector<FieldSpec>& fields, const void* obj,
                        const std::string& where) {
  for (const FieldSpec& f : fields) {
    if (f.type != "int" && f.type != "float") continue;
    const std::string v = f.get(obj);
    DSV3_CHECK(f.range.contains(std::strtod(v.c_str(), nullptr)), where, f.name, " must be ",
               f.range.text(), " (got ", v, ")");
  }
}

const FieldSpec* find_field(const std::vector<FieldSpec>& fields, const std::string& name) {
  for (const auto& f : fields)
    if (f.name == name) return &f;
  return nullptr;
}

nlohmann::json fields_to_json(const std::vector<FieldSpec>& fields, const void* obj) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& f : fields) {
    std::string v = f.get(obj);
    if (f.type == "int") j[f.name] = std::stoll(v);
    else if (f.type == "float") j[f.name] = std::strtod(v.c_str(), nullptr);
    else if (f.type == "bool") j[f.name] = (v == "true");
    else j[f.name] = v;
  }
  return j;
}

void fields_from_json(const std::vector<FieldSpec>& fields, void* obj, const nlohmann::json& j,
                      const std::string& where) {
  DSV3_CHECK(j.is_object(), where, ": expected a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const FieldSpec* f = find_field(fields, it.key());
    DSV3_CHECK(f, where, ": unknown key '", it.key(), "'");
    const auto& v = it.value();
    std::string text;
    if (v.is_string()) text = v.get<std::string>();
    else if (v.is_boolean()) text = v.get<bool>() ? "true" : "false";
    else if (v.is_number_integer()) text = std::to_string(v.get<long long>());
    else if (v.is_number()) text = format_float(v.get<double>());
    else fail(where, ": key '", it.key(), "' has a value of the wrong type (", v.type_name(), ")");
    DSV3_CHECK(f->type == "string" || !v.is_string() || f->type.find('|') != std::string::npos,
               where, ": key '", it.key(), "' expects a ", f->type, ", got a string");
    try {
      f->set(obj, text);
    } catch (const Error& e) {
      fail(where, ": ", e.what());
    }
  }
}

const FieldSpec* find_field(const std::vector<FieldGroup>& groups, const std::string& name,
                            const FieldGroup** group) {
  for (const auto& g : groups)
    if (const FieldSpec* f = find_field(*g.fields, name)) {
      if (group) *group = &g;
      return f;
    }
  return nullptr;
}

nlohmann::json groups_to_json(const std::vector<FieldGroup>& groups) {
  nlohmann::json j = nlohmann::json::object();
  for (const auto& g : groups) j[g.title] = fields_to_json(*g.fields, g.target);
  return j;
}

void groups_from_json(const std::vector<FieldGroup>& groups, const nlohmann::json& j,
                      const std::string& where) {
  DSV3_CHECK(j.is_object(), where, ": expected a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    const FieldGroup* g = nullptr;
    for (const auto& cand : groups)
      if (cand.title == it.key()) g = &cand;
    DSV3_CHECK(g, where, ": unknown settings group '", it.key(), "'");
    fields_from_json(*g->fields, g->target, it.value(), where + " " + it.key());
  }
}

bool json_u64(const nlohmann::json& v, uint64_t* out) {
  if (v.is_number_unsigned()) return *out = v.get<uint64_t>(), true;
  if (v.is_number_integer() && v.get<int64_t>() >= 0) return *out = uint64_t(v.get<int64_t>()), true;
  return false;
}

}  // namespace dsv3
