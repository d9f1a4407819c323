// The settings parsers: a --config file and a command line, over the field tables of the model,
// losses, schedule, precision, checkpoints, guard and parallel layout. The input's first part is
// the file, the second the arguments (one per line).
#include <vector>

#include "checkpoint/checkpoint.h"
#include "checkpoint/hf.h"
#include "dist/layout.h"
#include "flags.h"
#include "fuzz_util.h"
#include "model/params.h"
#include "optim/precision.h"
#include "optim/schedule.h"
#include "train/guard.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace dsv3;
  fuzz::init_once();
  const auto parts = fuzz::split_parts(data, size, 2);
  ModelConfig model = preset("debug");
  TrainingLossConfig loss;
  ScheduleConfig schedule;
  PrecisionConfig precision;
  CheckpointConfig checkpoint;
  GuardConfig guard;
  dist::ParallelLayout parallel;
  const std::vector<FieldGroup> groups = {
      {"model", &model_fields(), &model},          {"losses", &loss_fields(), &loss},
      {"schedule", &schedule_fields(), &schedule}, {"precision", &precision_fields(), &precision},
      {"checkpoints", &checkpoint_fields(), &checkpoint}, {"guard", &guard_fields(), &guard},
      {"parallel", &dist::parallel_fields(), &parallel}};
  const std::string file = fuzz::write_input(reinterpret_cast<const uint8_t*>(parts[0].data()),
                                             parts[0].size(), "run.cfg");
  std::vector<std::string> args = {"dsv3", "train", "--config", file};
  for (size_t pos = 0; pos < parts[1].size() && args.size() < 64;) {
    size_t nl = parts[1].find('\n', pos);
    if (nl == std::string::npos) nl = parts[1].size();
    args.push_back(parts[1].substr(pos, nl - pos));
    pos = nl + 1;
  }
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  fuzz::run_expecting_errors([&] {
    cli::parse_args(int(argv.size()), argv.data(), 2, groups,
                    [&](const std::string& name) { model = preset(name); });
    validate(model);
    validate(schedule);
    validate(precision);
    validate(checkpoint);
    validate(guard);
    for (const FieldGroup& g : groups) check_field_ranges(*g.fields, g.target);
    if (param_count_lower_bound(model) < 1e6) build_param_table(model);
  });
  return 0;
}
