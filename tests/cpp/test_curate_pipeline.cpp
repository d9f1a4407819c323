// `dsv3 curate` end to end through the real command (D1-D7, issue items 1, 7, 8 and bad input):
// outputs and provenance, the summary and report, every kind of bad input counted with file
// and line (and fatal under --strict), stage lists and config files, the classifier, TF-IDF,
// diversity and perplexity stages, determinism across thread counts, and a killed run that
// resumes without redoing finished inputs.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>

#include "checkpoint/checkpoint.h"
#include "cli_util.h"
#include "curate/pipeline.h"
#include "curate_test_util.h"
#include "model/config.h"
#include "model/params.h"

namespace dsv3::test {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::vector<json> read_dir(const fs::path& dir) {
  std::vector<json> out;
  std::vector<std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files.push_back(e.path().string());
  std::sort(files.begin(), files.end());
  for (const auto& f : files)
    for (auto& j : curate::read_jsonl(f)) out.push_back(std::move(j));
  return out;
}

json summary_of(const fs::path& out) {
  return json::parse(read_file_bytes((out / "summary.json").string()));
}

std::string q(const fs::path& p) {
  std::string s = "'";
  s += p.string();
  s += '\'';
  return s;
}


TEST(CuratePipeline, DefaultRunWritesCuratedRejectsSummaryAndReport) {
  const auto dir = temp_dir("curate_default");
  Rng r(1);
  std::vector<json> rows;
  for (int i = 0; i < 40; i++) rows.push_back({{"id", "doc" + std::to_string(i)}, {"text", prose(r, 12)}, {"lang", "en"}});
  rows.push_back({{"id", "copy"}, {"text", rows[3]["text"]}});                   // exact duplicate
  // line ends, trailing blanks and a decomposed accent: equal after normalisation
  std::string same = rows[5]["text"].get<std::string>() + " Caf\u00e9.";
  std::string spelled = same;
  for (size_t at = 0; (at = spelled.find('\n', at)) != std::string::npos; at += 4) spelled.replace(at, 1, "  \r\n");
  spelled.replace(spelled.find("\u00e9"), 2, "e\u0301");
  rows[5]["text"] = same;
  rows.push_back({{"id", "spelled"}, {"text", spelled}});
  rows.push_back({{"id", "pii"}, {"text", prose(r, 8) + " Mail jane.roe@example.org or call +44 20 7946 0958."}});
  rows.push_back({{"id", "short"}, {"text", "Too short to keep."}});
  rows.push_back({{"id", "lorem"}, {"text", prose(r, 8) + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit."}});
  write_text(dir / "a.jsonl", jsonl(rows));
  write_gz(dir / "b.txt.gz", prose(r, 12));
  const auto out = dir / "out";
  const CmdResult res = run_cli("curate --input " + q(dir / "a.jsonl") + " " + q(dir / "b.txt.gz") +
                                " --output " + q(out));
  ASSERT_EQ(res.code, 0) << res.out;
  EXPECT_NE(res.out.find("curated"), std::string::npos) << res.out;
  const auto data = read_dir(out / "data");
  const auto rejects = read_dir(out / "rejects");
  EXPECT_TRUE(fs::exists(out / "data" / "part-00000.jsonl.zst"));
  EXPECT_FALSE(fs::exists(out / "work"));  // removed after a successful run
  // provenance and metadata kept
  std::map<std::string, json> by_id;
  for (const auto& d : data) by_id[d["id"]] = d;
  ASSERT_TRUE(by_id.count("doc0"));
  EXPECT_EQ(by_id["doc0"]["lang"], "en");
  EXPECT_EQ(by_id["doc0"]["curate"]["source"], (dir / "a.jsonl").string());
  EXPECT_EQ(by_id["doc0"]["curate"]["line"], 1);
  const std::string txt_id = (dir / "b.txt.gz").string() + ":1";  // a text file is one document
  std::map<std::string, json> rej;
  for (const auto& d : rejects) rej[d["id"]] = d;
  EXPECT_TRUE(by_id.count(txt_id)) << rej[txt_id].dump() << res.out;
  ASSERT_TRUE(by_id.count("pii")) << rej["pii"].dump();
  const std::string pii_text = by_id["pii"]["text"];
  EXPECT_NE(pii_text.find("|||EMAIL_ADDRESS|||"), std::string::npos);
  EXPECT_NE(pii_text.find("|||PHONE_NUMBER|||"), std::string::npos);
  EXPECT_EQ(by_id["pii"]["curate"]["pii"]["email"], 1);
  // rejects say where and why
  EXPECT_EQ(rej["copy"]["curate"]["stage"], "exact_dedup");
  EXPECT_EQ(rej["copy"]["curate"]["detail"], "duplicate of doc3");
  EXPECT_EQ(rej["spelled"]["curate"]["detail"], "duplicate of doc5");
  EXPECT_EQ(rej["short"]["curate"]["rule"], "gopher_short_doc");
  EXPECT_EQ(rej["lorem"]["curate"]["rule"], "lorem_ipsum");
  // summary: every record accounted for, per stage and per rule
  const json s = summary_of(out);
  const json& st = s["stats"];
  EXPECT_EQ(st["docs_read"], rows.size() + 1);
  EXPECT_EQ(st["docs_written"].get<size_t>(), data.size());
  EXPECT_EQ(st["docs_rejected"].get<size_t>(), rejects.size());
  EXPECT_EQ(data.size() + rejects.size(), rows.size() + 1);
  EXPECT_EQ(st["stages"]["exact_dedup"]["rules"]["duplicate"]["docs"], 2);
  EXPECT_EQ(st["stages"]["gopher_quality"]["rules"]["gopher_short_doc"]["examples"][0]["id"], "short");
  EXPECT_EQ(st["pii"]["email"], 1);
  EXPECT_GT(st["stages"]["gopher_quality"]["seconds"].get<double>(), 0);
  EXPECT_EQ(s["stages"][0], "normalize");
  const std::string report = read_file_bytes((out / "report.md").string());
  EXPECT_NE(report.find("| gopher_quality |"), std::string::npos);
  EXPECT_NE(report.find("exact_dedup / duplicate: 2"), std::string::npos);
  fs::remove_all(dir);
}

TEST(CuratePipeline, BadInputIsCountedWithFileAndLineAndNeverCrashes) {
  const auto dir = temp_dir("curate_bad");
  Rng r(2);
  const std::string good = json({{"text", prose(r, 12)}}).dump();
  std::string lines = good + "\n";
  lines += "{\"text\": \"unterminated\n";                                  // 2 broken JSON
  lines += "{\"body\": \"no text field\"}\n";                                // 3 missing text
  lines += "{\"text\": 42}\n";                                              // 4 not a string
  lines += "[\"an\", \"array\"]\n";                                         // 5 not an object
  lines += "{\"text\": \"\"}\n";                                            // 6 empty
  std::string latin1 = json({{"text", "At the cafX she " + prose(r, 12)}}).dump();
  latin1[latin1.rfind('X')] = '\xe9';
  lines += latin1 + "\n";                                                  // 7 invalid UTF-8 (repaired)
  lines += json({{"text", prose(r, 12) + std::string(1, '\0') + "x"}}).dump() + "\n";  // 8 NUL
  lines += "{\"text\": \"" + std::string(300000, 'y') + "\"}\n";            // 9 too large
  lines += good + "\n";                                                     // 10 fine (a duplicate)
  write_text(dir / "bad.jsonl", lines);
  std::string z = std::string(2000, 'q');
  write_zst(dir / "cut.jsonl.zst", jsonl({{{"text", prose(r, 12)}}, {{"text", z}}}));
  std::string bytes = read_file_bytes((dir / "cut.jsonl.zst").string());
  write_text(dir / "cut.jsonl.zst", bytes.substr(0, bytes.size() - 8));     // truncated stream
  const auto out = dir / "out";
  // an unreadable input stops the run unless --skip_unreadable (issue 9): then it is counted
  const CmdResult res = run_cli("curate --input " + q(dir / "bad.jsonl") + " " + q(dir / "cut.jsonl.zst") +
                                " --output " + q(out) + " --max_doc_bytes 100000 --part_mb 0 "
                                "--skip_unreadable");
  ASSERT_EQ(res.code, 0) << res.out;
  EXPECT_NE(res.out.find("warning: 1 input(s) could not be read"), std::string::npos) << res.out;
  const json st = summary_of(out)["stats"];
  const json& bad = st["bad_input"];
  EXPECT_EQ(bad["broken_json"], 1);
  EXPECT_EQ(bad["missing_text"], 1);
  EXPECT_EQ(bad["text_not_string"], 1);
  EXPECT_EQ(bad["not_an_object"], 1);
  EXPECT_EQ(bad["empty"], 1);
  EXPECT_EQ(bad["invalid_utf8"], 1);
  EXPECT_EQ(bad["nul_bytes"], 1);
  EXPECT_EQ(bad["too_large"], 1);
  EXPECT_EQ(bad["read_error"], 1);
  // each with its file and line
  std::map<std::string, uint64_t> line_of;
  for (const auto& b : st["bad_input_examples"])
    if (!line_of.count(b["kind"])) line_of[b["kind"]] = b["line"];
  EXPECT_EQ(line_of["broken_json"], 2u);
  EXPECT_EQ(line_of["too_large"], 9u);
  EXPECT_EQ(line_of["nul_bytes"], 8u);
  const std::string report = read_file_bytes((out / "report.md").string());
  EXPECT_NE(report.find((dir / "bad.jsonl").string() + ":2: broken_json"), std::string::npos) << report;
  EXPECT_NE(report.find("cut.jsonl.zst"), std::string::npos);
  // the repaired ones are curated, the unusable ones rejected with the reason
  const auto rejects = read_dir(out / "rejects");
  size_t read_rejects = 0;
  for (const auto& j : rejects)
    if (j["curate"]["stage"] == "read") read_rejects++;
  EXPECT_EQ(read_rejects, 6u);
  bool saw_repaired = false;
  for (const auto& j : read_dir(out / "data"))
    saw_repaired |= j["text"].get<std::string>().find("caf\xEF\xBF\xBD") != std::string::npos;
  EXPECT_TRUE(saw_repaired);
  // --strict: the first problem is fatal and named
  const CmdResult strict = run_cli("curate --input " + q(dir / "bad.jsonl") + " --output " +
                                   q(dir / "out2") + " --strict");
  EXPECT_NE(strict.code, 0);
  EXPECT_NE(strict.out.find((dir / "bad.jsonl").string() + ":2: broken_json"), std::string::npos)
      << strict.out;
  fs::remove_all(dir);
}

TEST(CuratePipeline, StagesSkipConfigFileAndErrors) {
  const auto dir = temp_dir("curate_stages");
  Rng r(3);
  write_text(dir / "a.jsonl", jsonl({{{"text", "Short one."}}, {{"text", prose(r, 12)}}}));
  write_text(dir / "c.conf", "# only two stages\nstages = normalize, gopher_quality, pii\nskip = pii\ncompression = none\n");
  const CmdResult res = run_cli("curate --config " + q(dir / "c.conf") + " --input " + q(dir / "a.jsonl") +
                                " --output " + q(dir / "out"));
  ASSERT_EQ(res.code, 0) << res.out;
  const json s = summary_of(dir / "out");
  EXPECT_EQ(s["stages"], json({"normalize", "gopher_quality"}));
  EXPECT_TRUE(fs::exists(dir / "out" / "data" / "part-00000.jsonl"));
  EXPECT_EQ(s["stats"]["docs_written"], 1);
  // bad settings are refused by name
  auto err = run_cli("curate --input " + q(dir / "a.jsonl") + " --output " + q(dir / "o") + " --stages normalize,bogus");
  EXPECT_NE(err.code, 0);
  EXPECT_NE(err.out.find("unknown stage 'bogus'"), std::string::npos) << err.out;
  err = run_cli("curate --input " + q(dir / "a.jsonl") + " --output " + q(dir / "o") + " --minhash_bands 100");
  EXPECT_NE(err.code, 0);
  EXPECT_NE(err.out.find("minhash_bands"), std::string::npos) << err.out;
  err = run_cli("curate --input " + q(dir / "a.jsonl") + " --output " + q(dir / "o") + " --stages tfidf");
  EXPECT_NE(err.out.find("needs --tfidf_target"), std::string::npos) << err.out;
  err = run_cli("curate --input " + q(dir / "missing.jsonl") + " --output " + q(dir / "o"));
  EXPECT_NE(err.out.find("does not exist"), std::string::npos) << err.out;
  const CmdResult help = run_cli("curate --help");
  EXPECT_EQ(help.code, 0);
  EXPECT_NE(help.out.find("--minhash_threshold"), std::string::npos);
  fs::remove_all(dir);
}

TEST(CuratePipeline, SameOutputWhateverTheThreadCount) {
  const auto dir = temp_dir("curate_threads");
  Rng r(4);
  std::vector<json> rows;
  for (int i = 0; i < 300; i++) {
    std::string t = prose(r, 10);
    if (i % 7 == 0 && i) t = rows[size_t(i - 7)]["text"];  // duplicates across batches
    rows.push_back({{"text", t}});
  }
  write_text(dir / "a.jsonl", jsonl(rows));
  for (int t : {1, 2})
    ASSERT_EQ(run_cli("curate --input " + q(dir / "a.jsonl") + " --output " + q(dir / ("o" + std::to_string(t))) +
                      " --threads " + std::to_string(t)).code, 0);
  for (const char* f : {"data/part-00000.jsonl.zst", "rejects/part-00000.jsonl.zst"})
    EXPECT_EQ(read_file_bytes((dir / "o1" / f).string()), read_file_bytes((dir / "o2" / f).string())) << f;
  fs::remove_all(dir);
}

TEST(CuratePipeline, KilledRunResumesWithoutRedoingFinishedInputs) {
  const auto dir = temp_dir("curate_resume");
  Rng r(5);
  std::vector<std::string> inputs;
  for (int f = 0; f < 4; f++) {
    std::vector<json> rows;
    for (int i = 0; i < 30; i++) rows.push_back({{"text", prose(r, 10)}});
    rows.push_back({{"text", "tiny"}});
    const auto p = dir / ("in" + std::to_string(f) + ".jsonl");
    write_text(p, jsonl(rows));
    inputs.push_back(q(p));
  }
  std::string in;
  for (const auto& s : inputs) in += " " + s;
  const std::string common = "curate --part_mb 0 --input" + in;
  // reference: one clean run
  ASSERT_EQ(run_cli(common + " --output " + q(dir / "clean")).code, 0);
  // a run killed (SIGKILL) right after finishing its second input
  const CmdResult killed = run_shell("DSV3_CURATE_KILL_AFTER_PARTS=2 " + std::string(DSV3_BIN) + " " +
                                     common + " --output " + q(dir / "out"));
  EXPECT_EQ(killed.code, 128 + 9) << killed.out;
  EXPECT_FALSE(fs::exists(dir / "out" / "summary.json"));
  EXPECT_TRUE(fs::exists(dir / "out" / "work" / "part-00001.keys"));
  EXPECT_FALSE(fs::exists(dir / "out" / "work" / "part-00002.keys"));
  // the restart reuses the two finished inputs and produces the clean run's output
  const CmdResult again = run_cli(common + " --output " + q(dir / "out"));
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_EQ(again.out.find("part-00000 ("), std::string::npos) << again.out;  // not redone
  EXPECT_NE(again.out.find("part-00002 ("), std::string::npos) << again.out;
  const json s = summary_of(dir / "out"), c = summary_of(dir / "clean");
  EXPECT_EQ(s["resumed_parts"], 2);
  EXPECT_EQ(s["stats"]["docs_written"], c["stats"]["docs_written"]);
  EXPECT_EQ(s["stats"]["stages"]["gopher_quality"]["rules"], c["stats"]["stages"]["gopher_quality"]["rules"]);
  for (int p = 0; p < 4; p++) {
    const std::string f = "part-0000" + std::to_string(p) + ".jsonl.zst";
    EXPECT_EQ(read_file_bytes((dir / "out" / "data" / f).string()),
              read_file_bytes((dir / "clean" / "data" / f).string())) << f;
    EXPECT_EQ(read_file_bytes((dir / "out" / "rejects" / f).string()),
              read_file_bytes((dir / "clean" / "rejects" / f).string())) << f;
  }
  fs::remove_all(dir);
}

TEST(CuratePipeline, ClassifierTfidfDiversityAndPerplexityStages) {
  const auto dir = temp_dir("curate_models");
  Rng r(6);
  // labelled data: prose is "hq", keyword spam is "lq"
  std::vector<json> labelled;
  static const char* spam[] = {"buy", "cheap", "pills", "click", "here", "free", "casino", "win"};
  auto spammy = [&] {
    std::string s = "The best offer of the year and the cheapest deal.";
    for (int i = 0; i < 60; i++) s += std::string(" ") + spam[r.below(8)] + (i % 9 == 8 ? "." : "");
    return s + " Act now.";
  };
  for (int i = 0; i < 150; i++) {
    labelled.push_back({{"text", prose(r, 8)}, {"label", "hq"}});
    labelled.push_back({{"text", spammy()}, {"label", "lq"}});
  }
  write_text(dir / "train.jsonl", jsonl(labelled));
  CmdResult res = run_cli("curate train-classifier --input " + q(dir / "train.jsonl") + " --output " +
                          q(dir / "m.dsv3cls") + " --log2_buckets 14 --json");
  ASSERT_EQ(res.code, 0) << res.out;
  const json tr = json::parse(res.out.substr(res.out.find('{')));
  EXPECT_GT(tr["valid_accuracy"].get<double>(), 0.95) << res.out;
  // corpus: prose about two topics plus spam; target domain: boats and rivers
  std::vector<json> rows;
  for (int i = 0; i < 30; i++) rows.push_back({{"id", std::string("p").append(std::to_string(i))}, {"text", prose(r, 12)}});
  for (int i = 0; i < 10; i++) rows.push_back({{"id", "s" + std::to_string(i)}, {"text", spammy()}});
  write_text(dir / "a.jsonl", jsonl(rows));
  write_text(dir / "target.txt", "The river carried a wooden boat across the eastern bridge.");
  // a tiny random model for the perplexity stage
  const ModelConfig mc = preset("debug");
  std::vector<float> params(build_param_table(mc).total);
  Rng pr(1);
  for (auto& p : params) p = pr.normal() * 0.02f;
  save_checkpoint((dir / "lm.dsv3").string(), mc, json::object(), params.data(), nullptr, nullptr, params.size());
  res = run_cli("curate --input " + q(dir / "a.jsonl") + " --output " + q(dir / "out") +
                " --classifier_model " + q(dir / "m.dsv3cls") + " --classifier_threshold 0.5" +
                " --tfidf_target " + q(dir / "target.txt") + " --select_docs 12 --diversity_clusters 4" +
                " --perplexity_model " + q(dir / "lm.dsv3") + " --perplexity_tokens 64 --perplexity_max 1e9");
  ASSERT_EQ(res.code, 0) << res.out;
  const json s = summary_of(dir / "out");
  EXPECT_EQ(s["stages"], json({"normalize", "gopher_quality", "gopher_repetition", "c4", "fineweb",
                               "classifier", "perplexity", "pii", "exact_dedup", "minhash_dedup",
                               "tfidf", "diversity"}));
  const auto data = read_dir(dir / "out" / "data");
  EXPECT_EQ(data.size(), 12u);  // diversity keeps exactly select_docs
  for (const auto& d : data) {
    EXPECT_EQ(d["id"].get<std::string>()[0], 'p') << d;  // spam dropped by the classifier
    EXPECT_GE(d["curate"]["classifier"].get<double>(), 0.5);
    EXPECT_TRUE(std::isfinite(d["curate"]["perplexity"].get<double>()));
    EXPECT_GT(d["curate"]["perplexity"].get<double>(), 1.0);
    EXPECT_TRUE(d["curate"].contains("tfidf"));
  }
  const json& st = s["stats"]["stages"];
  EXPECT_EQ(st["classifier"]["rules"]["below_threshold"]["docs"], 10);
  EXPECT_EQ(st["diversity"]["docs_out"], 12);
  EXPECT_EQ(s["dedup"]["diversity"]["clusters"], 4);
  // the tfidf filter: documents sharing the target's words score higher
  res = run_cli("curate --input " + q(dir / "a.jsonl") + " --output " + q(dir / "out2") +
                " --tfidf_target " + q(dir / "target.txt") + " --tfidf_min_score 0.05");
  ASSERT_EQ(res.code, 0) << res.out;
  for (const auto& d : read_dir(dir / "out2" / "data")) {
    EXPECT_GE(d["curate"]["tfidf"].get<double>(), 0.05);
  }
  for (const auto& d : read_dir(dir / "out2" / "rejects")) {
    if (d["curate"]["stage"] == "tfidf") {
      EXPECT_LT(d["curate"]["tfidf"].get<double>(), 0.05);
    }
  }
  fs::remove_all(dir);
}

}  // namespace
}  // namespace dsv3::test
