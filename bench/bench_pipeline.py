"""Pipeline parallelism on this machine (issue 11, BENCHMARKS.md): the measured bubble of 1F1B
and DualPipe against their formulas, and DualPipe with its F&B overlap against without.

For P = 2 and 4 stages and M = 4 and 8 micro-batches per step (DualPipe needs M >= 2P),
`dsv3 train --pp P --pp_schedule S` runs the debug model with 4 layers (seq_len 64, micro-batches
of 1 sequence; `--preset tiny --seq_len 256` gives stages whose compute dwarfs a message) for a
few steps; every step reports `pp_bubble_fraction` (mean over stages of the time blocked on a
neighbour, over the pipeline's wall time) and `pp_bubble_formula` (the schedule's share on
equal stages as training runs it: 1F1B (P-1)/(M+P-1); DualPipe from its replay with F = 1,
B = 2, F&B = F + B, W = 0: on a CPU the overlapped F&B's two threads share the rank's cores, so
the overlap hides a wait for a neighbour or an all-to-all, not compute, and W is not split).
DualPipe runs twice: with its F&B ops overlapped on two threads (`--pp_overlap true`, the
default; `overlap s` is the median time per step both threads computed at once) and one after
the other (`--pp_overlap false`).
The median over the steps after the first is printed beside the formula, with the step time of
one process on the same global batch.

The measured share is above the formula where stages are unequal (the last stage also runs the
head and the MTP module) and where ranks share cores: P ranks on a 2-core machine shared with
other jobs wait for a core as well as for their neighbour, so read the numbers as an upper bound.
There is no peer here: PyTorch 1.13's pipeline (torch.distributed.pipeline.sync.Pipe) is GPipe on
one process's devices, not a multi-process 1F1B.

  python3 bench/bench_pipeline.py [--steps 6] [--mpirun mpirun] [--preset debug|tiny] [--seq_len 64]
        [--stages 2,4]
Needs a build with MPI (build/dsv3) and Python 3 (standard library only).
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
DSV3 = os.path.join(REPO, "build", "dsv3")


def train(np_, args, out, a):
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_MCA_btl_vader_single_copy_mechanism="none")
    cmd = [DSV3, "train", "--preset", a.preset, "--layers", "4", "--seq_len", str(a.seq_len), "--batch", "1",
           "--peak_gflops", "1", "--sample_tokens", "0", "--eval_batches", "1", "--out", out] + args
    if np_ > 1:
        root = ["--allow-run-as-root"] if os.getuid() == 0 else []
        cmd = [a.mpirun, "-np", str(np_), "--oversubscribe"] + root + cmd
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit("failed: " + " ".join(cmd) + "\n" + r.stdout[-2000:] + r.stderr[-2000:])
    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
    return [r for r in recs if r.get("kind") == "train"][1:]  # the first step warms up


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--preset", default="debug", help="model preset, run with 4 layers (debug or tiny)")
    ap.add_argument("--seq_len", type=int, default=64, help="tokens per micro-batch of 1 sequence")
    ap.add_argument("--stages", default="2,4", help="pipeline sizes P to run")
    a = ap.parse_args()
    if not os.path.exists(DSV3):
        sys.exit("build/dsv3 not found: build it first (cmake --build build)")
    print(f"Pipeline bubble, {a.preset} model with 4 layers, seq_len {a.seq_len}, micro-batch 1, "
          f"1 OpenMP thread per rank, {os.cpu_count()} cores, median of steps 2-{a.steps}")
    print("| P | M | schedule | measured | formula | overlap s | step s (pp) | step s (1 process) |")
    print("|---|---|---|---|---|---|---|---|", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        for P in [int(x) for x in a.stages.split(",")]:
            for M in (4, 8):
                common = ["--global_batch", str(M), "--steps", str(a.steps)]
                one = train(1, common, os.path.join(tmp, f"one{P}_{M}"), a)
                for sched, overlap in (("1f1b", None), ("dualpipe", "true"), ("dualpipe", "false")):
                    if sched == "dualpipe" and M < 2 * P:
                        continue
                    args = common + ["--pp", str(P), "--pp_schedule", sched]
                    if overlap:
                        args += ["--pp_overlap", overlap]
                    pp = train(P, args, os.path.join(tmp, f"pp{P}_{M}_{sched}_{overlap}"), a)
                    frac = statistics.median(r["pp_bubble_fraction"] for r in pp)
                    formula = pp[0]["pp_bubble_formula"]
                    if sched == "1f1b":
                        assert abs(formula - (P - 1) / (M + P - 1)) < 1e-12
                    name = sched + {None: "", "true": " (overlap)", "false": " (serial)"}[overlap]
                    ov = f"{statistics.median(r['pp_overlap_s'] for r in pp):.3f}" if overlap == "true" else "-"
                    print(f"| {P} | {M} | {name} | {frac:.3f} | {formula:.3f} | {ov} | "
                          f"{statistics.median(r['step_s'] for r in pp):.3f} | "
                          f"{statistics.median(r['step_s'] for r in one):.3f} |", flush=True)


if __name__ == "__main__":
    main()
