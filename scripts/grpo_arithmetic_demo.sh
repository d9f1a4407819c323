#!/usr/bin/env bash
# The issue-12 demonstration: a `tiny` model pretrained on the built-in corpus (which holds
# "x plus y is z." lines, x and y below 50), then SFT on arithmetic chat, then GRPO with the
# exact-answer reward. Exact-match accuracy (greedy, first number of the reply) before SFT, after
# SFT and after GRPO, for each seed of the SFT + GRPO stages, on three prompt sets drawn once
# (fixed seed) from the RANGE x RANGE sums "a plus b is" (a, b < RANGE):
#   held-out   HELD sums that neither SFT nor GRPO trains on;
#   sft        SFT_PROMPTS sums with a demonstration ("a plus b is" / "c."), also GRPO prompts;
#   grpo-only  up to 100 of the other RANGE^2 - HELD - SFT_PROMPTS sums: GRPO prompts without a
#              demonstration (reward only).
# GRPO draws its prompts from all RANGE^2 - HELD non-held-out sums.
#   RANGE=10 (default): 100 single-digit sums, HELD 30, SFT_PROMPTS 56, GRPO on 70 (14 grpo-only).
#   RANGE=20: 400 sums, HELD 100, SFT_PROMPTS 100, GRPO on 300 (200 never demonstrated), 2000
#             pretraining steps, GRPO 200 steps at lr 1e-4.
#   RANGE=50: 2500 sums, HELD 100, SFT_PROMPTS 200, GRPO on 2400, 2000 pretraining steps: SFT does
#             not learn two-digit sums within this budget (held-out below 0.1), see the docs.
# Prints a table and writes $OUT/summary.json. A stage whose output exists is skipped (a rerun
# resumes); the base model is shared by the seeds. Stages are recognised by their output only:
# after changing a knob, use a new OUT.
#   scripts/grpo_arithmetic_demo.sh [OUT]      (env: DSV3, SEEDS, THREADS, RANGE, HELD, PRETRAIN_STEPS,
#       SFT_PROMPTS, SFT_STEPS, SFT_LR, GRPO_STEPS, GRPO_LR, GRPO_BATCH, GROUP, TEMPERATURE, KL_BETA)
# Needs: a built dsv3 (build/dsv3), any python3 (data generation and the summary only).
# Results and what they show: docs/post_training.md ("Demonstration").
set -euo pipefail
OUT=${1:-runs/grpo_demo}
DSV3=${DSV3:-build/dsv3}
SEEDS=${SEEDS:-"1 2 3"}
RANGE=${RANGE:-10}
# per range: held-out and demonstrated sums, SFT row length, pretraining and GRPO defaults
case "$RANGE" in
  10) d=(30 56 36 200 100 5e-5) ;;
  20) d=(100 100 38 2000 200 1e-4) ;;  # "User: 19 plus 19 is" / "Assistant: 38." fits 38 tokens
  50) d=(100 200 38 2000 100 5e-5) ;;
  *) echo "RANGE must be 10, 20 or 50 (the corpus's sums have operands below 50)" >&2; exit 2 ;;
esac
HELD=${HELD:-${d[0]}}
SFT_PROMPTS=${SFT_PROMPTS:-${d[1]}}
SFT_SEQ=${d[2]}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-${d[3]}}
SFT_STEPS=${SFT_STEPS:-400}
SFT_LR=${SFT_LR:-1e-3}
GRPO_STEPS=${GRPO_STEPS:-${d[4]}}
GRPO_LR=${GRPO_LR:-${d[5]}}
GRPO_BATCH=${GRPO_BATCH:-8}
GROUP=${GROUP:-8}
TEMPERATURE=${TEMPERATURE:-1.0}
KL_BETA=${KL_BETA:-0.04}
export OMP_NUM_THREADS=${THREADS:-2}
mkdir -p "$OUT"
T0=$(date +%s)

python3 - "$OUT" "$RANGE" "$HELD" "$SFT_PROMPTS" <<'PY'
import json, os, random, sys
out, n_range, n_held, n_sft = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
assert 1 <= n_held < n_range ** 2, "HELD must be in [1, RANGE^2)"
assert 1 <= n_sft <= n_range ** 2 - n_held, "SFT_PROMPTS must be in [1, RANGE^2 - HELD]"
r = random.Random(12)
pairs = [(a, b) for a in range(n_range) for b in range(n_range)]
r.shuffle(pairs)
held, train = pairs[:n_held], pairs[n_held:]
sft = train[:n_sft]
def prompt(a, b):
    return json.dumps({"prompt": "%d plus %d is" % (a, b), "answer": a + b}) + "\n"
# an evaluation set: one filler line, then the prompts (--eval_fraction holds out exactly them)
def eval_set(ps):
    return prompt(0, 0) + "".join(prompt(a, b) for a, b in ps)
files = {
    "sft.jsonl": "".join(json.dumps({"messages": [{"role": "user", "content": "%d plus %d is" % (a, b)},
                                                  {"role": "assistant", "content": "%d." % (a + b)}]}) + "\n"
                         for a, b in sft),
    # GRPO trains on the first len(train) lines; --eval_fraction holds out exactly the last n_held
    "grpo.jsonl": "".join(prompt(a, b) for a, b in train + held),
    "sft_eval.jsonl": eval_set(sft),
    "grpo_only_eval.jsonl": eval_set(train[n_sft:n_sft + 100]),
}
for name, text in files.items():  # renamed into place: a concurrent run never reads half a file
    with open(os.path.join(out, name + ".tmp"), "w") as f:
        f.write(text)
    os.replace(os.path.join(out, name + ".tmp"), os.path.join(out, name))
PY
TRAIN=$((RANGE * RANGE - HELD))  # GRPO's prompts
ONLY=$((TRAIN - SFT_PROMPTS < 100 ? TRAIN - SFT_PROMPTS : 100))  # the grpo-only evaluation set
HELD_FRACTION=$(python3 -c "print(($HELD + 0.5) / $RANGE ** 2)")  # holds out exactly the last HELD
# the eval fraction that holds out all but the filler line of an evaluation set of n prompts
fraction() { python3 -c "print(($1 + 0.5) / ($1 + 1))"; }
SFT_FRACTION=$(fraction "$SFT_PROMPTS")
ONLY_FRACTION=$(fraction "$ONLY")

if [ ! -e "$OUT/base/ckpt_$(printf %08d "$PRETRAIN_STEPS").dsv3" ]; then
  "$DSV3" train --preset tiny --vocab 256 --seq_len 64 --batch 8 --steps "$PRETRAIN_STEPS" \
    --lr 2e-3 --warmup 20 --eval_every 0 --save_every 100 --sample_tokens 0 --out "$OUT/base"
fi
# a prompt is at most 32 tokens (bytes and BOS), a reply " 98.\n\n" at most 6
gen="--seq_len 40 --max_tokens 6"
# greedy accuracy of model $1 on evaluation set $2 (fraction $3) into $4 (0 steps = evaluation only)
evaluate() {
  [ -e "$4/metrics.jsonl" ] || "$DSV3" finetune --method grpo --model "$1" --data "$OUT/$2" \
    --eval_fraction "$3" --steps 0 --out "$4" $gen --batch 1 --group 2
}
# the three sets for model $1, into $2_held, $2_sft, $2_grpo_only
evaluate_all() {
  evaluate "$1" grpo.jsonl $HELD_FRACTION "$2_held"
  evaluate "$1" sft_eval.jsonl "$SFT_FRACTION" "$2_sft"
  [ "$ONLY" -eq 0 ] || evaluate "$1" grpo_only_eval.jsonl "$ONLY_FRACTION" "$2_grpo_only"
}
evaluate_all "$OUT/base" "$OUT/before"
for seed in $SEEDS; do
  [ -e "$OUT/sft_$seed/ckpt_$(printf %08d "$SFT_STEPS").dsv3" ] || \
  "$DSV3" finetune --method sft --model "$OUT/base" --data "$OUT/sft.jsonl" --out "$OUT/sft_$seed" \
    --steps "$SFT_STEPS" --batch 16 --seq_len $SFT_SEQ --lr "$SFT_LR" --schedule cosine --min_lr 1e-4 \
    --warmup 10 --seed "$seed" --eval_fraction 0
  evaluate_all "$OUT/sft_$seed" "$OUT/sft_$seed"
  # its held-out evaluations (every 20 steps) are the learning curve; the first is the SFT model's
  [ -e "$OUT/grpo_$seed/ckpt_$(printf %08d "$GRPO_STEPS").dsv3" ] || \
  "$DSV3" finetune --method grpo --model "$OUT/sft_$seed" --data "$OUT/grpo.jsonl" \
    --eval_fraction $HELD_FRACTION --out "$OUT/grpo_$seed" --steps "$GRPO_STEPS" --batch "$GRPO_BATCH" \
    --group "$GROUP" --temperature "$TEMPERATURE" --lr "$GRPO_LR" --warmup 0 --kl_beta "$KL_BETA" \
    --seed "$seed" --eval_every 20 $gen
  evaluate_all "$OUT/grpo_$seed" "$OUT/grpo_$seed"
done

python3 - "$OUT" "$(( $(date +%s) - T0 ))" "$ONLY" $SEEDS <<'PY'
import json, os, statistics, sys
out, seconds, n_only, seeds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def last_eval(d):
    return [json.loads(l) for l in open(os.path.join(out, d, "metrics.jsonl")) if '"kind":"eval"' in l][-1]
sets = ["held", "sft"] + (["grpo_only"] if n_only > 0 else [])
def row(stage):
    return {s: last_eval(stage + "_" + s)["accuracy"] for s in sets}
def stats(v):
    return {"mean": statistics.mean(v), "stdev": statistics.stdev(v) if len(v) > 1 else 0.0,
            "min": min(v), "max": max(v)}
summary = {"sets": sets, "prompts": {s: last_eval("before_" + s)["prompts"] for s in sets},
           "before": row("before"), "seconds": seconds, "seeds": []}
for seed in seeds:
    curve = [(e["step"], e["accuracy"]) for e in
             (json.loads(l) for l in open(os.path.join(out, "grpo_" + seed, "metrics.jsonl")))
             if e["kind"] == "eval"]
    summary["seeds"].append({"seed": int(seed), "after_sft": row("sft_" + seed),
                             "after_grpo": row("grpo_" + seed), "grpo_held_curve": curve})
for k in ("after_sft", "after_grpo"):
    summary[k] = {s: stats([r[k][s] for r in summary["seeds"]]) for s in sets}
summary["grpo_minus_sft"] = {s: stats([r["after_grpo"][s] - r["after_sft"][s] for r in summary["seeds"]])
                             for s in sets}
summary["grpo_better_same_worse"] = {s: [sum(1 for r in summary["seeds"] if c(r["after_grpo"][s] - r["after_sft"][s]))
                                         for c in (lambda d: d > 1e-9, lambda d: abs(d) <= 1e-9, lambda d: d < -1e-9)]
                                     for s in sets}
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
names = {"held": "held-out", "sft": "sft", "grpo_only": "grpo-only"}
print("exact match, greedy, on " + ", ".join("%s (%d prompts)" % (names[s], summary["prompts"][s]) for s in sets))
fmt = lambda d: " | ".join("%s %.3f" % (names[s], d[s]) for s in sets)
print("  before SFT:      " + fmt(summary["before"]))
for r in summary["seeds"]:
    print("  seed %d  SFT:     %s" % (r["seed"], fmt(r["after_sft"])))
    print("          GRPO:    %s   (held-out during GRPO: %s)" % (fmt(r["after_grpo"]),
          " ".join("%d:%.2f" % c for c in r["grpo_held_curve"])))
for k, label in (("after_sft", "SFT"), ("after_grpo", "GRPO"), ("grpo_minus_sft", "GRPO - SFT")):
    print("  %-11s mean +- stdev: %s" % (label, " | ".join("%s %+.3f +- %.3f" % (names[s], summary[k][s]["mean"],
          summary[k][s]["stdev"]) if k == "grpo_minus_sft" else "%s %.3f +- %.3f" % (names[s],
          summary[k][s]["mean"], summary[k][s]["stdev"]) for s in sets)))
print("  GRPO vs SFT, seeds better/same/worse: " + ", ".join("%s %d/%d/%d" % ((names[s],) + tuple(
      summary["grpo_better_same_worse"][s])) for s in sets))
print("wall time of this invocation: %d s" % seconds)
PY
