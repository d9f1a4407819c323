// dsv3 plan --preset P|--config F --gpus N --gpu KIND --tokens T: the layouts that fit and what
// they cost (O4, train/plan.h; docs/planner.md).
#include <cstdio>

#include "commands.h"
#include "core/check.h"
#include "flags.h"
#include "train/plan.h"

namespace dsv3::cli {

int cmd_plan(int argc, char** argv) {
  ModelConfig model = preset("tiny");
  PlanConfig pc;
  const std::vector<FieldGroup> groups = {{"model", &model_fields(), &model},
                                          {"plan", &plan_fields(), &pc}};
  const ParsedArgs a =
      parse_args(argc, argv, 2, groups, [&](const std::string& p) { model = preset(p); });
  if (a.help) {
    std::printf("%s", help_text(
        "dsv3 plan --preset NAME|--config FILE --gpus N --gpu h800|h100|h200|b200|cpu --tokens T\n"
        "                 [--gpu_hour_cost USD] [--global_batch G] [--seq_len T] [--top K] [--json]",
        "Enumerates training layouts (dp x tp x pp with ep inside dp, ZeRO stage, recomputation,\n"
        "micro-batch, pipeline schedule 1F1B or DualPipe), predicts each one's memory per device\n"
        "and step time (FLOPs at a stated efficiency, communication volumes over stated\n"
        "bandwidths, pipeline bubbles by the schedule's formula) and prints the fastest that fit,\n"
        "with tokens/s, days, GPU-hours and cost. Fix any dimension with --dp/--tp/--pp/--ep/\n"
        "--zero/--recompute/--batch/--schedule. Hardware figures: src/train/hardware.cpp;\n"
        "the model and what it leaves out: docs/planner.md.",
        groups, true).c_str());
    return 0;
  }
  const Plan plan = make_plan(model, pc);
  if (a.json) std::printf("%s\n", plan_json(model, pc, plan).dump().c_str());
  else std::printf("%s", plan_text(model, pc, plan).c_str());
  return 0;
}

}  // namespace dsv3::cli
