#include "eval/tiers.h"

#include <filesystem>
#include <set>

#include "core/check.h"
#include "core/io.h"

namespace dsv3::eval {

std::vector<Tier> parse_tiers(const std::string& text, const std::string& path) {
  using nlohmann::json;
  const json j = json::parse(text, nullptr, false);
  DSV3_CHECK(!j.is_discarded(), path, ": not valid JSON");
  DSV3_CHECK(j.is_object() && j.contains("tiers") && j["tiers"].is_array() && !j["tiers"].empty(),
             path, ": a tiers file is {\"tiers\": [{\"name\": ..., \"tasks\": [...]}, ...]} with at least one tier");
  const std::filesystem::path dir = std::filesystem::path(path).parent_path();
  static const std::set<std::string> kMetrics = {"acc", "acc_norm", "exact_match", "numeric_match", "bleu"};
  std::vector<Tier> tiers;
  for (size_t i = 0; i < j["tiers"].size(); i++) {
    const json& t = j["tiers"][i];
    const std::string where = path + ": tier " + std::to_string(i + 1);
    DSV3_CHECK(t.is_object() && t.contains("tasks") && t["tasks"].is_array() && !t["tasks"].empty(),
               where, " needs a non-empty \"tasks\" list");
    Tier tier;
    tier.name = t.contains("name") && t["name"].is_string() ? t["name"].get<std::string>()
                                                            : "tier " + std::to_string(i + 1);
    for (size_t k = 0; k < t["tasks"].size(); k++) {
      const json& e = t["tasks"][k];
      const std::string w = where + " task " + std::to_string(k + 1);
      DSV3_CHECK(e.is_object() && e.contains("path") && e["path"].is_string(), w, " needs a \"path\"");
      DSV3_CHECK(e.contains("metric") && e["metric"].is_string() && kMetrics.count(e["metric"].get<std::string>()),
                 w, " needs a \"metric\": acc, acc_norm, exact_match, numeric_match or bleu");
      DSV3_CHECK(e.contains("threshold") && e["threshold"].is_number(), w, " needs a numeric \"threshold\"");
      TierTask tt;
      const std::filesystem::path p = e["path"].get<std::string>();
      tt.path = p.is_absolute() || dir.empty() ? p.string() : (dir / p).string();
      tt.metric = e["metric"].get<std::string>();
      tt.threshold = e["threshold"].get<double>();
      if (e.contains("shots")) {
        DSV3_CHECK(e["shots"].is_number_integer() && e["shots"].get<int64_t>() >= 0 && e["shots"].get<int64_t>() <= 64,
                   w, ": \"shots\" must be an integer in [0, 64]");
        tt.shots = int(e["shots"].get<int64_t>());
      }
      tier.tasks.push_back(tt);
    }
    tiers.push_back(std::move(tier));
  }
  return tiers;
}

std::vector<Tier> read_tiers(const std::string& path) {
  DSV3_CHECK(std::filesystem::is_regular_file(path), "tiers file ", path, " does not exist");
  return parse_tiers(read_file(path), path);
}

}  // namespace dsv3::eval
