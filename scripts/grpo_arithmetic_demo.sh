#!/usr/bin/env bash
# The issue-12 demonstration: a `tiny` model pretrained on the built-in corpus (which holds
# "x plus y is z." lines, x and y below 50), then SFT on arithmetic chat, then GRPO with the
# exact-answer reward. Exact-match accuracy (greedy, first number of the reply) before SFT, after
# SFT and after GRPO, for each seed of the SFT + GRPO stages, on two prompt sets:
#   held-out   30 single-digit sums "a plus b is" that neither SFT nor GRPO trains on;
#   trained    the other 70 single-digit sums, the prompts of both SFT and GRPO.
# Prints a table and writes $OUT/summary.json. A stage whose output exists is skipped (a rerun
# resumes); the base model is shared by the seeds.
#   scripts/grpo_arithmetic_demo.sh [OUT]      (env: DSV3, SEEDS, PRETRAIN_STEPS, SFT_STEPS,
#                                               GRPO_STEPS, SFT_LR, GRPO_LR, THREADS)
# Needs: a built dsv3 (build/dsv3), any python3 (data generation and the summary only).
# Results and what they show: docs/post_training.md ("Demonstration").
set -euo pipefail
OUT=${1:-runs/grpo_demo}
DSV3=${DSV3:-build/dsv3}
SEEDS=${SEEDS:-"1 2 3"}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-200}
SFT_STEPS=${SFT_STEPS:-200}
GRPO_STEPS=${GRPO_STEPS:-40}
SFT_LR=${SFT_LR:-2e-3}
GRPO_LR=${GRPO_LR:-1e-4}
export OMP_NUM_THREADS=${THREADS:-2}
mkdir -p "$OUT"
T0=$(date +%s)

python3 - "$OUT" <<'PY'
import json, os, random, sys
out = sys.argv[1]
r = random.Random(12)
pairs = [(a, b) for a in range(10) for b in range(10)]
r.shuffle(pairs)
held, train = pairs[:30], pairs[30:]
def prompt(a, b):
    return json.dumps({"prompt": "%d plus %d is" % (a, b), "answer": a + b}) + "\n"
files = {
    "sft.jsonl": "".join(json.dumps({"messages": [{"role": "user", "content": "%d plus %d is" % (a, b)},
                                                  {"role": "assistant", "content": "%d." % (a + b)}]}) + "\n"
                         for a, b in train),
    # GRPO trains on the first 70 lines; --eval_fraction 30.5/100 holds out exactly the last 30
    "grpo.jsonl": "".join(prompt(a, b) for a, b in train + held),
    # the trained prompts as an evaluation set: one filler line, then the 70 (--eval_fraction 70.5/71)
    "trained_eval.jsonl": prompt(0, 0) + "".join(prompt(a, b) for a, b in train),
}
for name, text in files.items():  # renamed into place: a concurrent run never reads half a file
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
PY
HELD_FRACTION=0.305
TRAINED_FRACTION=0.993

if [ ! -e "$OUT/base/ckpt_$(printf %08d "$PRETRAIN_STEPS").dsv3" ]; then
  "$DSV3" train --preset tiny --vocab 256 --seq_len 64 --batch 8 --steps "$PRETRAIN_STEPS" \
    --lr 2e-3 --warmup 20 --eval_every 0 --save_every 100 --sample_tokens 0 --out "$OUT/base"
fi
# a prompt is 28 bytes, a reply " 12.\n\n" at most 6
gen="--seq_len 40 --max_tokens 6"
# greedy accuracy of model $1 on the trained prompts, into $2 (0 steps = evaluation only)
eval_trained() {
  [ -e "$2/metrics.jsonl" ] || "$DSV3" finetune --method grpo --model "$1" --data "$OUT/trained_eval.jsonl" \
    --eval_fraction $TRAINED_FRACTION --steps 0 --out "$2" $gen --batch 1 --group 2
}
[ -e "$OUT/before_held/metrics.jsonl" ] || "$DSV3" finetune --method grpo --model "$OUT/base" \
  --data "$OUT/grpo.jsonl" --eval_fraction $HELD_FRACTION --steps 0 --out "$OUT/before_held" $gen --batch 1 --group 2
eval_trained "$OUT/base" "$OUT/before_trained"
for seed in $SEEDS; do
  [ -e "$OUT/sft_$seed/ckpt_$(printf %08d "$SFT_STEPS").dsv3" ] || \
  "$DSV3" finetune --method sft --model "$OUT/base" --data "$OUT/sft.jsonl" --out "$OUT/sft_$seed" \
    --steps "$SFT_STEPS" --batch 16 --seq_len 36 --lr "$SFT_LR" --warmup 10 --seed "$seed" --eval_fraction 0
  eval_trained "$OUT/sft_$seed" "$OUT/sft_${seed}_trained"
  # its first held-out evaluation (step 0) is the SFT model's, its last the GRPO model's
  [ -e "$OUT/grpo_$seed/ckpt_$(printf %08d "$GRPO_STEPS").dsv3" ] || \
  "$DSV3" finetune --method grpo --model "$OUT/sft_$seed" --data "$OUT/grpo.jsonl" \
    --eval_fraction $HELD_FRACTION --out "$OUT/grpo_$seed" --steps "$GRPO_STEPS" --batch 4 --group 8 \
    --temperature 1.0 --lr "$GRPO_LR" --warmup 0 --kl_beta 0.04 --seed "$seed" --eval_every 20 $gen
  eval_trained "$OUT/grpo_$seed" "$OUT/grpo_${seed}_trained"
done

python3 - "$OUT" "$(( $(date +%s) - T0 ))" $SEEDS <<'PY'
import json, statistics, sys
out, seconds, seeds = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
def evals(d):
    return [json.loads(l) for l in open(out + "/" + d + "/metrics.jsonl") if '"kind":"eval"' in l]
summary = {"before": {"held_out": evals("before_held")[-1]["accuracy"],
                      "trained": evals("before_trained")[-1]["accuracy"]},
           "prompts": {"held_out": evals("before_held")[-1]["prompts"],
                       "trained": evals("before_trained")[-1]["prompts"]},
           "seconds": seconds, "seeds": []}
for s in seeds:
    h = evals("grpo_" + s)
    summary["seeds"].append({"seed": int(s),
        "after_sft": {"held_out": h[0]["accuracy"], "trained": evals("sft_%s_trained" % s)[-1]["accuracy"]},
        "after_grpo": {"held_out": h[-1]["accuracy"], "trained": evals("grpo_%s_trained" % s)[-1]["accuracy"]}})
for k in ("after_sft", "after_grpo"):
    summary[k] = {}
    for p in ("held_out", "trained"):
        v = [r[k][p] for r in summary["seeds"]]
        summary[k][p] = {"mean": statistics.mean(v), "min": min(v), "max": max(v),
                         "stdev": statistics.stdev(v) if len(v) > 1 else 0.0}
json.dump(summary, open(out + "/summary.json", "w"), indent=1)
n = summary["prompts"]
print("exact match, greedy: held-out (%d prompts) | trained (%d prompts)" % (n["held_out"], n["trained"]))
print("  before SFT:          %.3f | %.3f" % (summary["before"]["held_out"], summary["before"]["trained"]))
for r in summary["seeds"]:
    print("  seed %d: after SFT   %.3f | %.3f;  after GRPO %.3f | %.3f" % (r["seed"], r["after_sft"]["held_out"],
          r["after_sft"]["trained"], r["after_grpo"]["held_out"], r["after_grpo"]["trained"]))
for k in ("after_sft", "after_grpo"):
    print("  %-10s mean +- stdev: held-out %.3f +- %.3f | trained %.3f +- %.3f" % (k, summary[k]["held_out"]["mean"],
          summary[k]["held_out"]["stdev"], summary[k]["trained"]["mean"], summary[k]["trained"]["stdev"]))
print("wall time of this invocation: %d s" % seconds)
PY
