// Group relative policy optimisation (DeepSeekMath, Shao et al. 2024), for `dsv3 finetune
// --method grpo`: G completions per prompt from the decode engine, rule-based rewards
// (post/reward.h), group-normalised advantages, the clipped ratio objective and a KL penalty to
// the starting weights:
//   A_i = (r_i - mean(r)) / (std(r) + 1e-4)           std unbiased (n - 1), as TRL
//   rho = exp(log p - log p_old),  KL_t = exp(ref - log p) - (ref - log p) - 1   (k3, >= 0)
//   L = -(1/G) sum_i (1/|o_i|) sum_t [ min(rho A_i, clip(rho, 1-eps, 1+eps) A_i) - beta KL_t ]
// One policy update per sampled batch (mu = 1, as DeepSeekMath): log p_old is the sampling
// policy's, so rho = 1 at the update; the clip matters once a batch is reused.
#pragma once
#include <vector>

#include "post/finetune.h"

namespace dsv3 {

std::vector<double> group_advantages(const std::vector<double>& rewards);

// One completion's tokens: the current, sampling-time and reference log-probs of each.
struct CompletionLogprobs {
  std::vector<double> logp, old_logp, ref_logp;
  double advantage = 0;
};
struct GrpoTerms {
  double loss = 0;
  std::vector<std::vector<double>> d_logp;  // dL/d log p of each token of each completion
  double kl = 0;                            // mean over completions of the mean token KL
  double clipped = 0;                       // share of tokens whose gradient the clip removed
};
GrpoTerms grpo_objective(const std::vector<CompletionLogprobs>& group, double clip, double beta);

}  // namespace dsv3
