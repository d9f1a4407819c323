// `dsv3 pipeline --stages FILE` (T9 stages): base -> domain adaptation -> SFT -> preference/RL
// as one resumable job. The stages file is the project's `key = value` config format with
// `[stage NAME]` sections:
//
//   out = runs/pipeline            # where every stage writes (OUT/NAME); before any section
//   [stage base]
//   command = train                # train or finetune
//   preset = tiny
//   steps = 2000
//   [stage sft]
//   command = finetune
//   method = sft
//   data = chat.jsonl
//
// Each stage runs the dsv3 command with its keys as flags and --out OUT/NAME; a stage after the
// first starts from the one before: --init_from PREV (train: weights only, fresh optimizer,
// model flags limited to what the weights allow) or --model PREV (finetune), unless it names
// its own. A finished stage leaves OUT/NAME/STAGE_DONE; a rerun of the pipeline skips finished
// stages and resumes the unfinished one from its own checkpoints (train --resume, finetune's
// resume from --out).
#pragma once
#include <string>
#include <utility>
#include <vector>

namespace dsv3 {

struct StagesFileStage {
  std::string name, command;
  std::vector<std::pair<std::string, std::string>> keys;  // flags, in file order
  int line = 0;                                           // of its [stage] header
};
struct PipelineSpec {
  std::string out;
  std::vector<StagesFileStage> stages;
};
// Parses the file; errors name file:line.
PipelineSpec read_pipeline(const std::string& path);

// The command line (without the program) stage i runs, given whether its directory already
// holds checkpoints (a resume).
std::vector<std::string> stage_arguments(const PipelineSpec& p, size_t i, bool resume);

// Runs the stages in order with the dsv3 executable `self`; returns the exit code.
int run_pipeline(const PipelineSpec& p, const std::string& self);

}  // namespace dsv3
