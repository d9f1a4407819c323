// Direct preference optimisation (Rafailov et al. 2023) and its IPO variant (Azar et al. 2023),
// for `dsv3 finetune --method dpo`. A pair's log-likelihoods are sums of token log-probs over
// its response; the reference's are computed once from the starting weights and cached.
#pragma once
#include <vector>

#include "post/data.h"
#include "post/finetune.h"

namespace dsv3 {

// With h = (pc - rc) - (pr - rr) (policy and reference log-likelihoods of chosen and rejected):
//   sigmoid: loss = -(1 - ls) log sigmoid(beta h) - ls log sigmoid(-beta h)
//   ipo:     loss = (h - 1 / (2 beta))^2
// d_chosen = dloss/dpc, d_rejected = dloss/dpr; rewards are beta (policy - reference).
struct DpoTerms {
  double loss = 0, d_chosen = 0, d_rejected = 0;
  double chosen_reward = 0, rejected_reward = 0;
};
DpoTerms dpo_terms(double pc, double pr, double rc, double rr, const DpoConfig& c);

// A pair as one micro-batch of two rows (chosen, rejected) of T+1 tokens; weights: the response
// mask per target. False when the response does not survive the cut to T+1 tokens.
struct PairRows {
  std::vector<int32_t> tokens;  // (2, T+1)
  std::vector<float> mask;      // (2, T)
};
bool pair_rows(const PreferencePair& p, int T, int32_t pad_id, PairRows& out);

// Sums of the response tokens' log-probs of both rows under the weights w: {chosen, rejected}.
std::pair<double, double> pair_logprobs(const ModelWeights& w, Workspace& ws,
                                        const TrainingLossConfig& loss, const PairRows& rows,
                                        std::vector<float>* token_logprobs = nullptr);

// The CE coefficients (MicroBatch::ce_coef) whose gradient is that of the pair's loss.
std::vector<float> dpo_coefficients(const PairRows& rows, const DpoTerms& t);

// A pair's micro-batch for the optimizer step: the policy's log-probs (a forward pass), the
// pair's terms against the cached reference (rc, rr) and, in *coef, the CE coefficients the
// returned micro-batch points at.
MicroBatch dpo_micro_batch(const ModelWeights& w, Workspace& ws, const TrainingLossConfig& loss,
                           const PairRows& rows, double rc, double rr, const DpoConfig& c,
                           std::vector<float>* coef, DpoTerms* terms);

}  // namespace dsv3
