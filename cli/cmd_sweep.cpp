// dsv3 sweep --space '...' --trials N --algo grid|random|tpe --jobs J -- train ...: hyperparameter
// search over child `dsv3 train` runs (O3, train/sweep.h).
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "commands.h"
#include "core/check.h"
#include "flags.h"
#include "train/sweep.h"

namespace dsv3::cli {

int cmd_sweep(int argc, char** argv) {
  int dash = argc;
  for (int i = 2; i < argc; i++)
    if (!std::strcmp(argv[i], "--")) {
      dash = i;
      break;
    }
  SweepConfig c;
  std::vector<FieldGroup> groups = {{"sweep", &sweep_fields(), &c}};
  const auto a = parse_command(
      dash, argv, 2, groups,
      "dsv3 sweep --space SPACE [--trials N] [--algo grid|random|tpe] [--jobs J] [--metric val_loss]\n"
      "                  [--early_stop asha] --out DIR -- train [train settings ...]",
      "Runs `dsv3 train` trials as child processes, J at a time, each in DIR/trial_NNNN (an ordinary\n"
      "run directory), with the swept settings added to the command after --. ASHA stops trials\n"
      "whose metric is not among the best 1/eta at a rung. Writes DIR/trials.jsonl and\n"
      "DIR/best.json and prints a table. Run the same command again to resume a killed sweep:\n"
      "finished trials are kept, unfinished ones run again.\n"
      "SPACE: 'lr=log(1e-4,3e-3); batch=[8,16]; warmup=int(10,100); beta2=uniform(0.9,0.99)'");
  if (!a) return 0;
  DSV3_CHECK(dash < argc, "give the trial command after --: dsv3 sweep --space ... -- train --preset tiny ...");
  std::vector<std::string> train_args(argv + dash + 1, argv + argc);
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  run_sweep(c, train_args, exe);
  return 0;
}

}  // namespace dsv3::cli
