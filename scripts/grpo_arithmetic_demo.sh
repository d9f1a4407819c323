#!/usr/bin/env bash
# The issue-12 demonstration: a `tiny` model pretrained on the built-in corpus (which holds
# "x plus y is z." lines), then SFT on arithmetic chat, then GRPO with the exact-answer reward;
# exact-match accuracy on held-out prompts (greedy) before SFT, after SFT and after GRPO, for
# each seed of the SFT + GRPO stages. Prints a table and writes $OUT/summary.json.
#   scripts/grpo_arithmetic_demo.sh [OUT]        (env: DSV3, SEEDS, PRETRAIN_STEPS, SFT_STEPS,
#                                                 GRPO_STEPS, THREADS)
# Needs: a built dsv3 (build/dsv3), any python3 (data generation and the summary only).
# Defaults are modest for a shared 2-core machine (about 45 minutes per seed there); raise the steps on a quiet one.
set -euo pipefail
OUT=${1:-runs/grpo_demo}
DSV3=${DSV3:-build/dsv3}
SEEDS=${SEEDS:-"1 2 3"}
PRETRAIN_STEPS=${PRETRAIN_STEPS:-200}
SFT_STEPS=${SFT_STEPS:-100}
GRPO_STEPS=${GRPO_STEPS:-30}
export OMP_NUM_THREADS=${THREADS:-2}
mkdir -p "$OUT"

# held-out prompts never appear in the SFT or GRPO files
python3 - "$OUT" <<'PY'
import json, random, sys
out = sys.argv[1]
r = random.Random(12)
pairs = [(x, y) for x in range(50) for y in range(50)]
r.shuffle(pairs)
held, grpo, sft = pairs[:100], pairs[100:600], pairs[600:1400]
with open(out + "/sft.jsonl", "w") as f:
    for x, y in sft:
        f.write(json.dumps({"messages": [{"role": "user", "content": "%d plus %d is" % (x, y)},
                                         {"role": "assistant", "content": "%d." % (x + y)}]}) + "\n")
# the prompt file ends with the 100 held-out prompts; --eval_fraction 100.5/600 holds out exactly those
with open(out + "/grpo.jsonl", "w") as f:
    for x, y in grpo + held:
        f.write(json.dumps({"prompt": "%d plus %d is" % (x, y), "answer": x + y}) + "\n")
PY
EVAL_FRACTION=0.1675

if [ ! -e "$OUT/base/ckpt_$(printf %08d "$PRETRAIN_STEPS").dsv3" ]; then
  "$DSV3" train --preset tiny --vocab 256 --seq_len 64 --batch 8 --steps "$PRETRAIN_STEPS" \
    --lr 2e-3 --warmup 20 --eval_every 0 --save_every 100 --sample_tokens 0 --out "$OUT/base"
fi
common="--seq_len 48 --max_tokens 6 --temperature 1.0"
# before: the pretrained model on the held-out prompts (0 steps = evaluation only)
"$DSV3" finetune --method grpo --model "$OUT/base" --data "$OUT/grpo.jsonl" --eval_fraction $EVAL_FRACTION \
  --steps 0 --out "$OUT/before" $common --batch 1 --group 2
for seed in $SEEDS; do
  "$DSV3" finetune --method sft --model "$OUT/base" --data "$OUT/sft.jsonl" --out "$OUT/sft_$seed" \
    --steps "$SFT_STEPS" --batch 8 --seq_len 64 --lr 1e-3 --warmup 10 --seed "$seed" --eval_fraction 0.05
  "$DSV3" finetune --method grpo --model "$OUT/sft_$seed" --data "$OUT/grpo.jsonl" \
    --eval_fraction $EVAL_FRACTION --out "$OUT/grpo_$seed" --steps "$GRPO_STEPS" --batch 4 --group 8 \
    --lr 2e-5 --warmup 0 --kl_beta 0.04 --seed "$seed" --eval_every 10 $common
done

python3 - "$OUT" $SEEDS <<'PY'
import json, statistics, sys
out, seeds = sys.argv[1], sys.argv[2:]
def evals(d):
    return [json.loads(l) for l in open(d + "/metrics.jsonl") if '"kind":"eval"' in l]
before = evals(out + "/before")[-1]["accuracy"]
rows = []
for s in seeds:
    e = evals("%s/grpo_%s" % (out, s))
    rows.append({"seed": int(s), "after_sft": e[0]["accuracy"], "after_grpo": e[-1]["accuracy"]})
summary = {"before": before, "seeds": rows}
for k in ("after_sft", "after_grpo"):
    v = [r[k] for r in rows]
    summary[k] = {"mean": statistics.mean(v), "min": min(v), "max": max(v),
                  "stdev": statistics.stdev(v) if len(v) > 1 else 0.0}
json.dump(summary, open(out + "/summary.json", "w"), indent=1)
print("held-out exact match (100 prompts, greedy): before SFT %.3f" % before)
for r in rows:
    print("  seed %d: after SFT %.3f, after GRPO %.3f" % (r["seed"], r["after_sft"], r["after_grpo"]))
for k in ("after_sft", "after_grpo"):
    print("  %s: mean %.3f (min %.3f, max %.3f, stdev %.3f)" % (k, summary[k]["mean"], summary[k]["min"],
                                                             summary[k]["max"], summary[k]["stdev"]))
PY
