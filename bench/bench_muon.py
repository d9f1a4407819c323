#!/usr/bin/python3
"""Muon vs AdamW (T3): validation loss at equal steps and at equal wall time on real text.

Each optimizer trains `tiny` (byte-level, vocab 256) on the UTF-8 bytes of
../shared/data/text/fiction (validation: tinyshakespeare, as bench/loss_parity.py) for --steps
steps with --seeds seeds, evaluating every --eval_every steps. Reported:
- equal steps: the final validation loss, mean +- std over seeds, per optimizer;
- equal wall time: each Muon run's validation loss at the last evaluation it reached within the
  time its AdamW run with the same seed took (training time from metrics.jsonl step_s; evaluation
  excluded), and the reverse;
- the time per step of each (Muon adds Newton-Schulz GEMMs to every step).
Both use the same learning rate and schedule (Moonlight's RMS matching makes AdamW's lr work for
Muon); --muon_lr overrides.

Usage (Debian's /usr/bin/python3; 300 steps x 3 seeds x 2 optimizers takes tens of minutes):
  /usr/bin/python3 bench/bench_muon.py [--dsv3 build/dsv3] [--steps 300] [--seeds 1,2,3] [--reuse]
(--reuse keeps finished runs of the same command in --work: `--seeds 1` now, `--seeds 1,2,3
--reuse` later runs only seeds 2 and 3.)
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from bench_attention import build_data  # noqa: E402


def finished(out, cmd):
    """True when `out` holds a finished run of exactly `cmd` (its metrics.jsonl)."""
    try:
        recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        with open(os.path.join(out, "bench_cmd.json")) as f:
            same = json.load(f) == cmd
    except (OSError, ValueError):
        return False
    steps = int(cmd[cmd.index("--steps") + 1])
    return same and any(r["kind"] == "eval" and r["step"] == steps for r in recs)


def run(args, opt, seed, tr, va):
    out = os.path.join(args.work, "%s_s%d" % (opt, seed))
    lr = args.muon_lr if opt == "muon" and args.muon_lr else args.lr
    cmd = [args.dsv3, "train", "--preset", "tiny", "--vocab", "256", "--train_data", tr, "--val_data", va,
           "--batch", str(args.batch), "--seq_len", str(args.seq), "--steps", str(args.steps),
           "--eval_every", str(args.eval_every), "--eval_batches", str(args.eval_batches),
           "--seed", str(seed), "--optimizer", opt, "--lr", str(lr), "--warmup", str(args.warmup),
           "--save_every", "0", "--out", out]
    if not (args.reuse and finished(out, cmd)):
        subprocess.run(["rm", "-rf", out])
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            raise RuntimeError((p.stdout + p.stderr)[-2000:])
        with open(os.path.join(out, "bench_cmd.json"), "w") as f:
            json.dump(cmd, f)
    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    elapsed, t = {}, 0.0
    for r in recs:
        if r["kind"] == "train":
            t += r["step_s"]
            elapsed[r["step"]] = t
    evals = [(r["step"], elapsed[r["step"]], r["val_loss"]) for r in recs if r["kind"] == "eval"]
    return {"evals": evals, "train_s": t, "step_s": t / args.steps}


def at_time(evals, budget):
    """Validation loss of the last evaluation reached within `budget` seconds of training."""
    ok = [e for e in evals if e[1] <= budget * (1 + 1e-9)]
    return ok[-1][2] if ok else float("nan")


def ms(v):
    v = [x for x in v if x == x]
    if not v:
        return "-"
    return "%.4f +- %.4f" % (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--muon_lr", type=float, default=0.0)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--eval_every", type=int, default=25)
    ap.add_argument("--eval_batches", type=int, default=8)
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "dsv3_bench_muon"))
    ap.add_argument("--reuse", action="store_true",
                    help="keep the runs in --work that finished with the same command (add seeds in pieces)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    tr, va = build_data(args.shared, args.work)
    seeds = [int(s) for s in args.seeds.split(",")]
    res = {o: {} for o in ("adamw", "muon")}
    for s in seeds:
        for o in ("adamw", "muon"):
            res[o][s] = run(args, o, s, tr, va)
            r = res[o][s]
            print("%s seed %d: final val %.4f, %.3f s/step" % (o, s, r["evals"][-1][2], r["step_s"]), file=sys.stderr)
    print("\n%d steps, tiny byte-level, batch %d x %d, lr %g, seeds %s" % (args.steps, args.batch, args.seq, args.lr, args.seeds))
    print("| optimizer | val loss at equal steps | val loss at AdamW's time | val loss at Muon's time | s/step |")
    print("|---|---|---|---|---|")
    for o in ("adamw", "muon"):
        final = [res[o][s]["evals"][-1][2] for s in seeds]
        at_adamw = [at_time(res[o][s]["evals"], res["adamw"][s]["train_s"]) for s in seeds]
        at_muon = [at_time(res[o][s]["evals"], res["muon"][s]["train_s"]) for s in seeds]
        print("| %s | %s | %s | %s | %.3f |" % (o, ms(final), ms(at_adamw), ms(at_muon),
                                                statistics.mean(res[o][s]["step_s"] for s in seeds)))
    print("\nvalidation loss by step (mean over seeds):")
    steps = [e[0] for e in res["adamw"][seeds[0]]["evals"]]
    print("| step | " + " | ".join(str(x) for x in steps) + " |")
    print("|---|" + "---|" * len(steps))
    for o in ("adamw", "muon"):
        vals = [statistics.mean(res[o][s]["evals"][i][2] for s in seeds) for i in range(len(steps))]
        print("| %s | " % o + " | ".join("%.4f" % v for v in vals) + " |")


if __name__ == "__main__":
    main()
