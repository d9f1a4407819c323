// dsv3 tokenizer train | encode | decode | export | info  (D9)
#include <omp.h>

#include <algorithm>
#include <charconv>
#include <cstdio>
#include <filesystem>
#include <iostream>
#include <iterator>

#include "commands.h"
#include "core/check.h"
#include "core/io.h"
#include "core/timer.h"
#include "data/token_file.h"
#include "flags.h"
#include "tokenizer/bpe.h"
#include "tokenizer/bpe_train.h"
#include "tokenizer/formats.h"

namespace dsv3::cli {

namespace {

namespace fs = std::filesystem;

void print_json(const nlohmann::json& j) { std::printf("%s\n", j.dump().c_str()); }

int resolve_threads(int t) { return t > 0 ? t : std::max(1, omp_get_max_threads()); }

// "a.txt,dir,b.txt" -> files; a directory contributes its regular files, recursively, sorted.
// "-" is standard input.
std::vector<std::string> expand_inputs(const std::string& list) {
  DSV3_CHECK(!list.empty(), "--input is required (files or directories, comma-separated, or -)");
  std::vector<std::string> files;
  size_t pos = 0;
  while (pos <= list.size()) {
    size_t comma = list.find(',', pos);
    if (comma == std::string::npos) comma = list.size();
    const std::string item = list.substr(pos, comma - pos);
    pos = comma + 1;
    if (item.empty()) continue;
    if (item == "-") {
      files.push_back(item);
      continue;
    }
    std::error_code ec;
    DSV3_CHECK(fs::exists(item, ec), "input ", item, " does not exist");
    if (fs::is_directory(item, ec)) {
      std::vector<std::string> found;
      for (const auto& e : fs::recursive_directory_iterator(item, ec))
        if (e.is_regular_file()) found.push_back(e.path().string());
      DSV3_CHECK(!ec, "cannot list ", item, ": ", ec.message());
      std::sort(found.begin(), found.end());
      DSV3_CHECK(!found.empty(), "input directory ", item, " has no files");
      files.insert(files.end(), found.begin(), found.end());
    } else {
      files.push_back(item);
    }
  }
  DSV3_CHECK(!files.empty(), "--input names no files");
  return files;
}

std::string read_input(const std::string& path) {
  if (path != "-") return read_file(path);
  std::string s((std::istreambuf_iterator<char>(std::cin)), std::istreambuf_iterator<char>());
  return s;
}

// Writes to stdout, or atomically to `path` when it is not empty.
void write_output(const std::string& path, const std::string& data) {
  if (path.empty() || path == "-") {
    DSV3_CHECK(std::fwrite(data.data(), 1, data.size(), stdout) == data.size(),
               "cannot write to standard output");
    std::fflush(stdout);
  } else {
    write_file_atomic(path, [&](std::FILE* f) { write_bytes(f, data.data(), data.size()); });
  }
}


// ---------------------------------------------------------------------------------------------
struct TrainOpts {
  std::string input, out, pretokenizer = "gpt2", specials = "default";
  int vocab_size = 32000, min_frequency = 2, reserved = 6, threads = 0;
};
const std::vector<FieldSpec>& train_fields() {
  using T = TrainOpts;
  static const std::vector<FieldSpec> f = {
      field("input", &T::input, "text files or directories, comma-separated (each file is one text)"),
      field("out", &T::out, "tokenizer file to write (.dsv3tok)"),
      field("vocab_size", &T::vocab_size, "all ids: 256 bytes + merged tokens + special tokens", in_range(256, 1 << 24)),
      field("min_frequency", &T::min_frequency, "stop when the best pair occurs fewer times", at_least(1)),
      field("pretokenizer", &T::pretokenizer, "gpt2, deepseek_v3 or none (one piece per file)"),
      field("specials", &T::specials,
            "default (bos eos pad, FIM and chat markers, reserved), none, or texts a,b,c"),
      field("reserved", &T::reserved, "reserved special tokens added by --specials default", in_range(0, 1 << 20)),
      field("threads", &T::threads, "threads for counting (0 = all)", in_range(0, 65536)),
  };
  return f;
}

int train(int argc, char** argv) {
  TrainOpts o;
  std::vector<FieldGroup> groups = {{"train", &train_fields(), &o}};
  const auto a = parse_command(argc, argv, 3, groups, "dsv3 tokenizer train --input FILES --out FILE.dsv3tok "
                                "[--vocab_size N] [--key value ...]",
                                "Learns a byte-level BPE from text. Ties between pairs of equal "
                                "count go to the smaller\n(left id, right id); see "
                                "docs/tokenizer.md.");
  if (!a) return 0;
  DSV3_CHECK(!o.out.empty(), "--out is required (the tokenizer file to write)");
  DSV3_CHECK(o.reserved >= 0, "--reserved must be >= 0");
  TrainOptions t;
  t.vocab_size = o.vocab_size;
  t.min_frequency = o.min_frequency;
  t.pretokenizer = pretok_preset(o.pretokenizer).name;
  t.threads = resolve_threads(o.threads);
  t.progress = !a->json;
  if (o.specials == "default") {
    t.specials = default_special_texts(o.reserved);
  } else if (o.specials != "none" && !o.specials.empty()) {
    for (size_t pos = 0; pos <= o.specials.size();) {
      size_t comma = o.specials.find(',', pos);
      if (comma == std::string::npos) comma = o.specials.size();
      if (comma > pos) t.specials.push_back(o.specials.substr(pos, comma - pos));
      pos = comma + 1;
    }
  }
  const std::vector<std::string> files = expand_inputs(o.input);
  DSV3_CHECK(std::find(files.begin(), files.end(), "-") == files.end(),
             "train reads files, not standard input");
  const double t0 = now_seconds();
  TrainReport r;
  Tokenizer tok = train_bpe_files(files, t, &r);
  const double dt = now_seconds() - t0;
  save_dsv3_tokenizer(o.out, tok);
  const double peak = double(peak_rss_bytes());
  if (a->json) {
    print_json({{"out", o.out}, {"vocab_size", tok.vocab.size()}, {"merges", tok.merges.size()},
                {"specials", tok.specials.size()}, {"files", files.size()}, {"bytes", r.bytes},
                {"pieces", r.pieces}, {"words", r.words}, {"seconds", dt},
                {"count_seconds", r.count_seconds}, {"merge_seconds", r.merge_seconds},
                {"threads", t.threads}, {"peak_rss_bytes", peak},
                {"stopped_by_frequency", r.stopped_by_frequency}});
  } else {
    std::printf("trained %zu ids (256 bytes + %zu merges + %zu special) on %.2f MB in %zu files: "
                "%.1f s (counting %.1f s, merging %.1f s), peak memory %.0f MiB -> %s\n",
                tok.vocab.size(), tok.merges.size(), tok.specials.size(), double(r.bytes) / 1e6,
                files.size(), dt, r.count_seconds, r.merge_seconds, peak / 1048576.0,
                o.out.c_str());
    if (r.stopped_by_frequency)
      std::printf("note: stopped early, no pair occurs %d times or more (the corpus is small for "
                  "this vocabulary)\n", o.min_frequency);
  }
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct EncodeOpts {
  std::string tokenizer, pretokenizer, input, text, out;
  bool allow_special = false, bos = false, eos = false, count_only = false;
  int threads = 0;
};
const std::vector<FieldSpec>& encode_fields() {
  using E = EncodeOpts;
  static const std::vector<FieldSpec> f = {
      field("tokenizer", &E::tokenizer,
            "dsv3 .dsv3tok, tokenizer.json, encoder.json/vocab.bpe, .tiktoken, or a directory"),
      field("pretokenizer", &E::pretokenizer,
            "for GPT-2 and .tiktoken files, which store none: gpt2 (default) or deepseek_v3"),
      field("input", &E::input, "text files or directories, comma-separated, or - for stdin"),
      field("text", &E::text, "encode this text instead of --input"),
      field("out", &E::out, "write an llm.c token shard (uint16 ids) instead of printing ids"),
      field("allow_special", &E::allow_special, "turn special-token texts in the input into them"),
      field("bos", &E::bos, "put the bos token before each text"),
      field("eos", &E::eos, "put the eos token after each text"),
      field("count_only", &E::count_only, "print only counts and speed (with --json: as JSON)"),
      field("threads", &E::threads, "threads (0 = all); long texts are cut between words", in_range(0, 65536)),
  };
  return f;
}

std::string ids_as_lines(const std::vector<int32_t>& ids) {
  std::string s;
  s.resize(ids.size() * 12);
  char* p = s.data();
  for (int32_t id : ids) {
    p = std::to_chars(p, p + 11, id).ptr;
    *p++ = '\n';
  }
  s.resize(size_t(p - s.data()));
  return s;
}

int encode(int argc, char** argv) {
  EncodeOpts o;
  std::vector<FieldGroup> groups = {{"encode", &encode_fields(), &o}};
  const auto a = parse_command(argc, argv, 3, groups, "dsv3 tokenizer encode --tokenizer T (--input FILES | --text S) "
                                "[--out SHARD.bin] [--key value ...]",
                                "Encodes text. Prints the ids, one per line, or writes them as an "
                                "llm.c token shard.\nEach input file is one text (--bos/--eos "
                                "mark them).");
  if (!a) return 0;
  DSV3_CHECK(!o.tokenizer.empty(), "--tokenizer is required");
  const bool have_text = std::find(a->set_keys.begin(), a->set_keys.end(), "text") != a->set_keys.end();
  DSV3_CHECK(have_text != !o.input.empty(), "give exactly one of --input and --text");
  const double t_load = now_seconds();
  std::string what;
  Encoder enc(load_tokenizer_any(o.tokenizer, o.pretokenizer, &what), o.tokenizer);
  const double load_s = now_seconds() - t_load;
  const SpecialRoles& roles = enc.tokenizer().roles;
  DSV3_CHECK(!o.bos || roles.bos >= 0, o.tokenizer, " has no bos token (--bos)");
  DSV3_CHECK(!o.eos || roles.eos >= 0, o.tokenizer, " has no eos token (--eos)");

  const std::vector<std::string> files = have_text ? std::vector<std::string>{} : expand_inputs(o.input);
  const EncodeOptions eo{o.allow_special, resolve_threads(o.threads)};
  std::vector<int32_t> ids;
  int64_t bytes = 0;
  double encode_s = 0;
  auto add = [&](const std::string& text) {
    if (o.bos) ids.push_back(roles.bos);
    const double t0 = now_seconds();
    std::vector<int32_t> got = enc.encode(text, eo);
    encode_s += now_seconds() - t0;
    bytes += int64_t(text.size());
    ids.insert(ids.end(), got.begin(), got.end());
    if (o.eos) ids.push_back(roles.eos);
  };
  if (have_text) add(o.text);
  for (const std::string& f : files) add(read_input(f));

  if (o.count_only) {
    const double mbs = encode_s > 0 ? double(bytes) / encode_s / 1e6 : 0;
    if (a->json) {
      print_json({{"tokenizer", what}, {"files", files.size()}, {"bytes", bytes},
                  {"tokens", ids.size()}, {"threads", eo.threads}, {"encode_seconds", encode_s},
                  {"load_seconds", load_s}, {"mb_per_s", mbs}});
    } else {
      std::printf("%zu tokens from %lld bytes (%.3f tokens/byte); encoding took %.3f s = %.1f MB/s "
                  "on %d threads\n",
                  ids.size(), (long long)bytes, bytes ? double(ids.size()) / double(bytes) : 0.0,
                  encode_s, mbs, eo.threads);
    }
    return 0;
  }
  if (!o.out.empty()) {
    DSV3_CHECK(enc.vocab_size() <= 65536, "cannot write ", o.out, ": the vocabulary has ",
               enc.vocab_size(), " ids, but llm.c token shards hold uint16 ids (< 65536)");
    write_token_file(o.out, ids);
    std::fprintf(stderr, "wrote %zu tokens from %lld bytes to %s\n", ids.size(), (long long)bytes,
                 o.out.c_str());
    return 0;
  }
  write_output("", ids_as_lines(ids));
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct DecodeOpts {
  std::string tokenizer, pretokenizer, input, ids, out;
};
const std::vector<FieldSpec>& decode_fields() {
  using D = DecodeOpts;
  static const std::vector<FieldSpec> f = {
      field("tokenizer", &D::tokenizer, "the tokenizer (as for encode)"),
      field("pretokenizer", &D::pretokenizer, "as for encode (decoding does not use it)"),
      field("input", &D::input, "llm.c token shard, or a text file of ids (- for stdin)"),
      field("ids", &D::ids, "ids given inline, separated by spaces or commas"),
      field("out", &D::out, "write the bytes to this file instead of stdout"),
  };
  return f;
}

// Integers separated by whitespace or commas.
std::vector<int32_t> parse_ids(const std::string& s, const std::string& where) {
  std::vector<int32_t> ids;
  size_t line = 1;
  for (size_t i = 0; i < s.size();) {
    const char c = s[i];
    if (c == '\n') line++;
    if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == ',') {
      i++;
      continue;
    }
    int64_t v = 0;
    auto [p, ec] = std::from_chars(s.data() + i, s.data() + s.size(), v);
    const size_t end = size_t(p - s.data());
    const bool sep_after = end == s.size() || std::string(" \t\r\n,").find(s[end]) != std::string::npos;
    DSV3_CHECK(ec == std::errc() && sep_after && v >= 0 && v <= INT32_MAX, where, ":", line, ": '",
               quote_bytes(s.substr(i, std::min<size_t>(20, s.find_first_of(" \t\r\n,", i) - i))),
               "' is not a token id");
    ids.push_back(int32_t(v));
    i = end;
  }
  return ids;
}

int decode(int argc, char** argv) {
  DecodeOpts o;
  std::vector<FieldGroup> groups = {{"decode", &decode_fields(), &o}};
  const auto a = parse_command(argc, argv, 3, groups,
                               "dsv3 tokenizer decode --tokenizer T (--input FILE | --ids \"1 2 3\") "
                               "[--out FILE]",
                               "Turns ids back into bytes (exactly the encoded bytes).");
  if (!a) return 0;
  DSV3_CHECK(!o.tokenizer.empty(), "--tokenizer is required");
  DSV3_CHECK(o.input.empty() != o.ids.empty(), "give exactly one of --input and --ids");
  Encoder enc(load_tokenizer_any(o.tokenizer, o.pretokenizer), o.tokenizer);
  std::vector<int32_t> ids;
  if (!o.ids.empty()) {
    ids = parse_ids(o.ids, "--ids");
  } else if (o.input != "-" && sniff_file_kind(o.input) == "an llm.c token file") {
    ids = read_token_file(o.input);
  } else if (const std::string kind = o.input == "-" ? "text" : sniff_file_kind(o.input);
             kind != "text" && kind != "an empty file") {
    InFile check(o.input);  // a missing file: "cannot open", not "binary"
    fail(o.input, " is not token ids (", kind.empty() ? "binary data" : kind,
         "): --input takes an llm.c token file or a text file of ids separated by spaces, commas "
         "or newlines",
         kind == "a dsv3 token shard" ? "; a prepared shard is read by dsv3 train --data" : "");
  } else {
    ids = parse_ids(read_input(o.input), o.input);
  }
  std::string bytes;
  try {
    bytes = enc.decode(ids);
  } catch (const Error& e) {
    fail(o.ids.empty() ? o.input : "--ids", ": ", e.what());
  }
  write_output(o.out, bytes);
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct ExportOpts {
  std::string tokenizer, pretokenizer, format = "hf", out;
};
const std::vector<FieldSpec>& export_fields() {
  using X = ExportOpts;
  static const std::vector<FieldSpec> f = {
      field("tokenizer", &X::tokenizer, "the tokenizer (as for encode)"),
      field("pretokenizer", &X::pretokenizer, "as for encode"),
      field("format", &X::format,
            "hf (tokenizer.json), gpt2 (encoder.json + vocab.bpe), tiktoken, or dsv3"),
      field("out", &X::out, "file to write; a directory for gpt2 (and for hf: DIR/tokenizer.json)"),
  };
  return f;
}

int export_tokenizer(int argc, char** argv) {
  ExportOpts o;
  std::vector<FieldGroup> groups = {{"export", &export_fields(), &o}};
  const auto a = parse_command(argc, argv, 3, groups, "dsv3 tokenizer export --tokenizer T --format hf|gpt2|tiktoken|dsv3 "
                                "--out PATH",
                                "Writes a tokenizer in a format other tools read.");
  if (!a) return 0;
  DSV3_CHECK(!o.tokenizer.empty(), "--tokenizer is required");
  DSV3_CHECK(!o.out.empty(), "--out is required");
  std::string what;
  const Tokenizer t = load_tokenizer_any(o.tokenizer, o.pretokenizer, &what);
  std::string wrote = o.out;
  if (o.format == "hf") {
    if (fs::is_directory(o.out)) wrote = (fs::path(o.out) / "tokenizer.json").string();
    export_hf_tokenizer_json(wrote, t);
  } else if (o.format == "gpt2") {
    export_gpt2_files(o.out, t);
    wrote = o.out + "/{encoder.json,vocab.bpe}";
  } else if (o.format == "tiktoken") {
    export_tiktoken_file(o.out, t);
  } else if (o.format == "dsv3") {
    save_dsv3_tokenizer(o.out, t);
  } else {
    fail("unknown --format '", o.format, "' (hf, gpt2, tiktoken or dsv3)");
  }
  std::printf("exported %s to %s (%s)\n", what.c_str(), wrote.c_str(), o.format.c_str());
  return 0;
}

// ---------------------------------------------------------------------------------------------
struct InfoOpts {
  std::string tokenizer, pretokenizer;
};
const std::vector<FieldSpec>& info_fields() {
  static const std::vector<FieldSpec> f = {
      field("tokenizer", &InfoOpts::tokenizer, "the tokenizer (as for encode)"),
      field("pretokenizer", &InfoOpts::pretokenizer, "as for encode"),
  };
  return f;
}

int info(int argc, char** argv) {
  InfoOpts o;
  std::vector<FieldGroup> groups = {{"info", &info_fields(), &o}};
  const auto a = parse_command(argc, argv, 3, groups, "dsv3 tokenizer info --tokenizer T [--json]",
                                "Vocabulary size, merges, special tokens and roles, pre-tokenizer.");
  if (!a) return 0;
  DSV3_CHECK(!o.tokenizer.empty(), "--tokenizer is required");
  std::string what;
  Encoder enc(load_tokenizer_any(o.tokenizer, o.pretokenizer, &what), o.tokenizer);
  const Tokenizer& t = enc.tokenizer();
  int64_t holes = 0;
  for (size_t id = 0; id < t.vocab.size(); id++) holes += t.vocab[id].empty();
  nlohmann::json specials = nlohmann::json::array(), roles = nlohmann::json::object();
  for (const SpecialToken& s : t.specials) specials.push_back({{"id", s.id}, {"text", s.text}});
  for (const std::string& r : special_role_names())
    if (role_id(t.roles, r) >= 0) roles[r] = role_id(t.roles, r);
  if (a->json) {
    print_json({{"source", what}, {"vocab_size", t.vocab.size()}, {"merges", t.merges.size()},
                {"specials", specials}, {"roles", roles}, {"holes", holes},
                {"pretokenizer", {{"name", t.pretok.name}, {"patterns", t.pretok.patterns}}},
                {"ignore_merges", t.ignore_merges},
                {"unreachable_tokens", enc.unreachable_tokens()}});
    return 0;
  }
  std::printf("%s\n", what.c_str());
  std::printf("  vocabulary   %zu ids: %zu special, %lld holes\n", t.vocab.size(),
              t.specials.size(), (long long)holes);
  std::printf("  merges       %zu%s\n", t.merges.size(),
              t.ignore_merges ? " (whole pieces that are tokens are used as is: tiktoken's rule)"
                              : "");
  if (enc.unreachable_tokens())
    std::printf("  unreachable  %lld tokens are not the result of merging their own bytes\n",
                (long long)enc.unreachable_tokens());
  std::printf("  pre-tokenizer %s", t.pretok.name.c_str());
  for (const std::string& p : t.pretok.patterns) std::printf("\n    %s", p.c_str());
  std::printf("\n  roles        ");
  for (const auto& [r, id] : roles.items()) std::printf("%s=%d ", r.c_str(), id.get<int>());
  std::printf("\n  specials     ");
  const size_t show = std::min<size_t>(t.specials.size(), 16);
  for (size_t i = 0; i < show; i++)
    std::printf("%s%d:%s", i ? " " : "", t.specials[i].id, t.specials[i].text.c_str());
  if (show < t.specials.size()) std::printf(" ... (%zu more)", t.specials.size() - show);
  std::printf("\n");
  return 0;
}

struct Sub {
  const char* name;
  const char* summary;
  int (*run)(int, char**);
};
const Sub kSubs[] = {
    {"train", "learn a byte-level BPE from text files", train},
    {"encode", "text -> ids (printed one per line, or an llm.c shard)", encode},
    {"decode", "ids -> text", decode},
    {"export", "write a tokenizer as tokenizer.json, GPT-2 files, .tiktoken or dsv3", export_tokenizer},
    {"info", "what a tokenizer holds", info},
};

}  // namespace

int cmd_tokenizer(int argc, char** argv) {
  const std::string sub = argc >= 3 ? argv[2] : "";
  for (const Sub& s : kSubs)
    if (sub == s.name) return s.run(argc, argv);
  const bool help = sub == "--help" || sub == "-h" || sub == "help";
  std::FILE* f = help ? stdout : stderr;
  if (!help && !sub.empty()) std::fprintf(f, "dsv3 tokenizer: unknown subcommand '%s'\n\n", sub.c_str());
  std::fprintf(f, "usage: dsv3 tokenizer SUBCOMMAND [--key value ...]   (SUBCOMMAND --help for "
                  "settings)\n\n");
  for (const Sub& s : kSubs) std::fprintf(f, "  %-7s %s\n", s.name, s.summary);
  std::fprintf(f, "\nTokenizer files: dsv3 (.dsv3tok), Hugging Face tokenizer.json, GPT-2 "
                  "encoder.json + vocab.bpe,\n.tiktoken rank files, or a directory holding one.\n");
  return help ? 0 : 2;
}

}  // namespace dsv3::cli
