// `dsv3 pipeline --stages FILE`: training stages as one resumable job (src/post/pipeline.h).
#include <unistd.h>

#include <climits>
#include <cstdio>

#include "commands.h"
#include "core/check.h"
#include "flags.h"
#include "post/pipeline.h"

namespace dsv3::cli {

namespace {
struct PipelineOptions {
  std::string stages;
};
const std::vector<FieldSpec>& pipeline_fields() {
  static const std::vector<FieldSpec> f = {
      field("stages", &PipelineOptions::stages, "stages file: out = DIR, then [stage NAME] "
                                                "sections with command = train|finetune and flags"),
  };
  return f;
}
}  // namespace

int cmd_pipeline(int argc, char** argv) {
  PipelineOptions o;
  const auto a = parse_command(argc, argv, 2, {{"pipeline", &pipeline_fields(), &o}},
                               "dsv3 pipeline --stages FILE",
                               "Runs base -> domain adaptation -> SFT -> preference/RL stages in "
                               "order, each from the\nprevious one's output (docs/post_training.md). "
                               "Rerun the same command after a failure or a kill:\nfinished stages "
                               "are skipped, the interrupted one resumes from its checkpoints.");
  if (!a) return 0;
  DSV3_CHECK(!o.stages.empty(), "--stages FILE is required");
  const PipelineSpec p = read_pipeline(o.stages);
  char self[PATH_MAX];
  const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
  DSV3_CHECK(n > 0, "cannot find the dsv3 executable (/proc/self/exe)");
  self[n] = 0;
  return run_pipeline(p, self);
}

}  // namespace dsv3::cli
