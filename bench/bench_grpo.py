#!/usr/bin/python3
"""GRPO throughput (issue 12): samples/s and the share of time in generation vs training.

Runs `dsv3 finetune --method grpo` on arithmetic prompts ("x plus y is", exact-answer reward)
from --model for --steps steps and reads its metrics.jsonl: samples (completions) per second,
generated tokens per second, and the split of each step between sampling (decode engine: KV
cache, continuous batching) and training (the policy's and the reference's log-prob forwards
plus the forward-backward and the AdamW update). No peer runs beside it: TRL's GRPOTrainer is
not installed here; the number to compare is the share of time in generation.

Usage (any python3):
  python3 bench/bench_grpo.py --model runs/grpo_demo/sft_1 [--dsv3 build/dsv3] [--steps 10]
          [--batch 4] [--group 8] [--max_tokens 6] [--threads 2]
(`scripts/grpo_arithmetic_demo.sh` makes such a model: tiny, pretrained, SFT on arithmetic.)
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--max_tokens", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="bench_grpo_")
    r = random.Random(7)
    with open(os.path.join(work, "prompts.jsonl"), "w") as f:
        for _ in range(200):
            x, y = r.randrange(50), r.randrange(50)
            f.write(json.dumps({"prompt": "%d plus %d is" % (x, y), "answer": x + y}) + "\n")
    out = os.path.join(work, "run")
    cmd = [a.dsv3, "finetune", "--method", "grpo", "--model", a.model, "--data",
           os.path.join(work, "prompts.jsonl"), "--out", out, "--steps", str(a.steps), "--batch",
           str(a.batch), "--group", str(a.group), "--max_tokens", str(a.max_tokens), "--seq_len", "48",
           "--eval_fraction", "0", "--lr", "1e-5"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS=str(a.threads)))
    if p.returncode != 0:
        sys.exit((p.stdout + p.stderr)[-3000:])
    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"kind":"train"' in l]
    last = recs[-1]
    gen, train = last["generation_s"], last["training_s"]
    tokens = sum(x["generated_tokens"] for x in recs)
    samples = a.steps * a.batch * a.group
    print("dsv3 GRPO, %d steps x %d prompts x G=%d, %d threads:" % (a.steps, a.batch, a.group, a.threads))
    print("  %.2f samples/s (%d completions, %d tokens) | generation %.1f s (%.0f%%, %.1f tokens/s) | "
          "training %.1f s (%.0f%%)" % (samples / (gen + train), samples, tokens, gen, 100 * gen / (gen + train),
                                        tokens / gen, train, 100 * train / (gen + train)))
    print("| GRPO (tiny, G=%d, %d prompts/step) | %.2f samples/s | %.0f%% generation | %.0f%% training |"
          % (a.group, a.batch, samples / (gen + train), 100 * gen / (gen + train), 100 * train / (gen + train)))
    subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
