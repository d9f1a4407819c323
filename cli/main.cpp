// dsv3: train, evaluate, sample and convert DeepSeek-V3-style MoE models.
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "commands.h"
#include "core/check.h"
#include "dist/agree.h"

namespace {

struct Command {
  const char* name;
  const char* summary;
  int (*run)(int, char**);
};

const Command kCommands[] = {
    {"train", "train a model (built-in corpus by default), with checkpoints and metrics",
     dsv3::cli::cmd_train},
    {"info", "parameters, active parameters, FLOPs/token and training memory of a config",
     dsv3::cli::cmd_info},
    {"bench", "time training steps on synthetic tokens: tokens/s, MFU, peak memory",
     dsv3::cli::cmd_bench},
    {"eval", "mean next-token loss of a model on an llm.c token file", dsv3::cli::cmd_eval},
    {"evaluate", "benchmark tasks (HellaSwag, MMLU/ARC, GSM8K, BLEU) scored like lm-eval-harness",
     dsv3::cli::cmd_evaluate},
    {"sample", "generate text from a model", dsv3::cli::cmd_sample},
    {"serve", "OpenAI-compatible HTTP server with continuous batching", dsv3::cli::cmd_serve},
    {"export", "write a model as Hugging Face safetensors + config.json", dsv3::cli::cmd_export},
    {"prepare", "tokenise text sources into shards with a train/validation split per domain",
     dsv3::cli::cmd_prepare},
    {"import", "read a Hugging Face DeepseekV3 directory into a dsv3 checkpoint",
     dsv3::cli::cmd_import},
    {"tokenizer", "byte-level BPE: train, encode, decode, export, info", dsv3::cli::cmd_tokenizer},
    {"curate", "filter, scrub, deduplicate and select text (JSONL/txt, .gz/.zst)", dsv3::cli::cmd_curate},
    {"synth", "synthetic text from seed prompts (topic/style/length templates), then curated",
     dsv3::cli::cmd_synth},
    {"augment", "synonym replacement and clause reordering on a share of sentences", dsv3::cli::cmd_augment},
    {"quantize", "int8 weights (w8a8 or w8a16) for eval, sample and serving", dsv3::cli::cmd_quantize},
    {"prune", "drop FFN channels and whole experts (L1 norm, measured load)", dsv3::cli::cmd_prune},
    {"report", "an HTML report of a run (loss, lr, throughput, expert load), runs overlaid",
     dsv3::cli::cmd_report},
    {"sweep", "hyperparameter search: grid, random or TPE trials of dsv3 train, ASHA stopping",
     dsv3::cli::cmd_sweep},
    {"launch", "run train under mpirun/srun, restarting from the last checkpoint on failures",
     dsv3::cli::cmd_launch},
    {"plan", "layouts that fit N GPUs, with predicted memory, tokens/s, days and cost",
     dsv3::cli::cmd_plan},
    {"finetune", "post-training: SFT on chat JSONL, DPO on preference pairs, GRPO with rule rewards",
     dsv3::cli::cmd_finetune},
    {"pipeline", "training stages (base, domain, SFT, DPO/GRPO) as one resumable job",
     dsv3::cli::cmd_pipeline},
};

void usage(std::FILE* f) {
  std::fprintf(f, "usage: dsv3 COMMAND [--key value ...]   (dsv3 COMMAND --help for settings)\n\n");
  for (const auto& c : kCommands) std::fprintf(f, "  %-8s %s\n", c.name, c.summary);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h") ||
      !std::strcmp(argv[1], "help")) {
    if (argc >= 3 && !std::strcmp(argv[1], "help")) {  // dsv3 help train == dsv3 train --help
      for (const auto& c : kCommands)
        if (argv[2] == std::string(c.name)) {
          char flag[] = "--help";
          char* args[] = {argv[0], argv[2], flag};
          return c.run(3, args);
        }
    }
    usage(argc < 2 ? stderr : stdout);
    return argc < 2 ? 2 : 0;
  }
  for (const auto& c : kCommands) {
    if (argv[1] != std::string(c.name)) continue;
    try {
      const int rc = c.run(argc, argv);
      // Output to a full disk or a closed pipe fails at the flush: say so instead of exiting 0
      // with the output cut short.
      errno = 0;
      if (std::fflush(stdout) != 0 || std::ferror(stdout))
        throw dsv3::Error(std::string("cannot write the standard output: ") +
                          (errno ? std::strerror(errno) : "write failed"));
      return rc;
    } catch (const dsv3::dist::QuietError&) {  // rank 0 of a distributed run reports it
      return 1;
    } catch (const dsv3::Error& e) {
      std::fprintf(stderr, "\ndsv3 %s: error: %s\n", c.name, e.what());
      return 1;
    } catch (const std::bad_alloc&) {
      std::fprintf(stderr, "\ndsv3 %s: error: out of memory (try a smaller --batch or "
                           "--seq_len, or --recompute block)\n", c.name);
      return 1;
    } catch (const std::exception& e) {
      std::fprintf(stderr, "\ndsv3 %s: error: %s\n", c.name, e.what());
      return 1;
    }
  }
  std::fprintf(stderr, "dsv3: unknown command '%s'\n\n", argv[1]);
  usage(stderr);
  return 2;
}
