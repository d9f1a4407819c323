// `dsv3 finetune` (T9): SFT, DPO and GRPO from a model's weights (src/post, docs/post_training.md).
#include <cstdio>

#include "commands.h"
#include "core/check.h"
#include "flags.h"
#include "post/finetune.h"

namespace dsv3::cli {

int cmd_finetune(int argc, char** argv) {
  FinetuneSpec spec;
  const auto groups = finetune_groups(spec);
  const auto a = parse_command(
      argc, argv, 2, groups,
      "dsv3 finetune --method sft|dpo|grpo --model M --data F.jsonl --out DIR [--key value ...]",
      "Post-training from a model's weights (fresh optimizer). sft: chat JSONL {\"messages\": "
      "[...]}, rendered\nwith the tokenizer's chat template, packed, the loss on assistant tokens "
      "only. dpo: {\"prompt\",\n\"chosen\", \"rejected\"} against the frozen starting weights. "
      "grpo: {\"prompt\", \"answer\"} with G\nsampled completions per prompt and the declared "
      "reward rule. A killed run resumes from --out.");
  if (!a) return 0;
  for (const auto& k : a->set_keys) {
    const bool dpo_key = k == "beta" || k == "label_smoothing" || k == "dpo_loss";
    const FieldSpec* gf = find_field(grpo_fields(), k);
    DSV3_CHECK(!dpo_key || spec.run.method == FinetuneMethod::Dpo, "--", k, " is a DPO setting "
               "(needs --method dpo)");
    DSV3_CHECK(!gf || spec.run.method == FinetuneMethod::Grpo, "--", k, " is a GRPO setting "
               "(needs --method grpo)");
  }
  run_finetune(spec);
  return 0;
}

}  // namespace dsv3::cli
