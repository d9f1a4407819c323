#!/usr/bin/python3
"""Long-context attention (M6): dense vs window vs LSH attention in dsv3 on the `tiny` shapes.

1. Throughput and memory: `dsv3 bench --preset tiny --batch 1 --seq_len T --attention A` for
   T in --lengths (1024, 4096, 16384): training tokens/s (forward + backward + optimizer) and
   peak RSS. Dense attention stores P as (B, H, T, T) per layer; where `dsv3 info` says the run
   needs more than --max_gib it is reported as "does not fit" instead of being run.
2. Quality: a short `dsv3 train` with each pattern on real text (UTF-8 bytes of
   ../shared/data/text/fiction, validation = tinyshakespeare, as bench/loss_parity.py) at
   sequence length --train_T: the final validation loss, beside dense attention's.

The seed's claim to compare with: "3x faster at 4096 with 98% of dense accuracy".
No peer: this compares dsv3's own attention patterns (all on the same model code).

Usage (Debian's /usr/bin/python3; takes minutes):
  /usr/bin/python3 bench/bench_attention.py [--dsv3 build/dsv3] [--lengths 1024,4096,16384]
        [--train_steps 200] [--train_T 1024] [--window 256] [--lsh "--lsh_buckets 32 --lsh_chunk 64"]
"""
import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "python"))

import numpy as np  # noqa: E402


def write_tokens(path, ids):
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1], header[2] = 20240520, 1, len(ids)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(ids, dtype=np.uint16).tobytes())


def build_data(shared, work):
    fiction = os.path.join(shared, "data", "text", "fiction")
    files = sorted(f for f in os.listdir(fiction) if f.endswith(".txt") and "tinyshakespeare" not in f)
    train = b"".join(open(os.path.join(fiction, f), "rb").read() for f in files)
    val = open(os.path.join(fiction, "tinyshakespeare.txt"), "rb").read()
    tr, va = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
    write_tokens(tr, np.frombuffer(train, dtype=np.uint8))
    write_tokens(va, np.frombuffer(val, dtype=np.uint8))
    return tr, va


def run_json(cmd):
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), (p.stdout + p.stderr)[-2000:]))
    for line in reversed(p.stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise RuntimeError("no JSON from %s" % " ".join(cmd))


def pattern_flags(a, args):
    if a == "window":
        return ["--attention", "window", "--window", str(args.window)]
    if a == "lsh":
        return ["--attention", "lsh"] + shlex.split(args.lsh)
    return ["--attention", "dense"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    ap.add_argument("--lengths", default="1024,4096,16384")
    ap.add_argument("--patterns", default="dense,window,lsh")
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--lsh", default="--lsh_buckets 32 --lsh_chunk 64 --lsh_rounds 1")
    ap.add_argument("--timed_steps", type=int, default=2)
    ap.add_argument("--max_gib", type=float, default=16.0)
    ap.add_argument("--train_steps", type=int, default=200)
    ap.add_argument("--train_T", type=int, default=1024)
    ap.add_argument("--train_batch", type=int, default=2)
    ap.add_argument("--skip_train", action="store_true")
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "dsv3_bench_attention"))
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    patterns = args.patterns.split(",")
    rows = []
    for T in [int(x) for x in args.lengths.split(",")]:
        for a in patterns:
            common = ["--preset", "tiny", "--batch", "1", "--seq_len", str(T), "--max_seq", str(max(T, 4096))] + pattern_flags(a, args)
            info = run_json([args.dsv3, "info"] + common + ["--json"])
            need = info["memory_bytes"]["total"] / 2 ** 30
            row = {"T": T, "attention": a, "est_gib": need}
            if need > args.max_gib:
                row["error"] = "does not fit: needs %.1f GiB (> --max_gib %.0f)" % (need, args.max_gib)
            else:
                try:
                    r = run_json([args.dsv3, "bench"] + common + ["--warmup_steps", "1", "--timed_steps",
                                                                  str(args.timed_steps), "--json"])
                    row.update(tokens_per_s=r["tokens_per_s"], step_s=r["step_s"], rss_gib=r["peak_rss_bytes"] / 2 ** 30)
                except RuntimeError as e:
                    row["error"] = str(e).splitlines()[-1]
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    print("\n| T | attention | tokens/s | s/step | peak RSS GiB | estimated GiB | vs dense |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        dense = next((x for x in rows if x["T"] == r["T"] and x["attention"] == "dense" and "tokens_per_s" in x), None)
        ratio = "%.2fx" % (r["tokens_per_s"] / dense["tokens_per_s"]) if dense and "tokens_per_s" in r else "-"
        if "error" in r:
            print("| %d | %s | %s | | | %.1f | |" % (r["T"], r["attention"], r["error"], r["est_gib"]))
        else:
            print("| %d | %s | %.0f | %.2f | %.2f | %.1f | %s |" % (r["T"], r["attention"], r["tokens_per_s"], r["step_s"],
                                                                 r["rss_gib"], r["est_gib"], ratio))
    if args.skip_train:
        return
    tr, va = build_data(args.shared, args.work)
    print("\nValidation loss after %d steps, batch %d x %d, byte-level fiction (val: tinyshakespeare):"
          % (args.train_steps, args.train_batch, args.train_T))
    print("| attention | val loss | train loss | seconds | vs dense val loss |")
    print("|---|---|---|---|---|")
    res = {}
    for a in patterns:
        out = os.path.join(args.work, "train_" + a)
        subprocess.run(["rm", "-rf", out])
        t0 = time.time()
        cmd = [args.dsv3, "train", "--preset", "tiny", "--vocab", "256", "--train_data", tr, "--val_data", va,
               "--batch", str(args.train_batch), "--seq_len", str(args.train_T), "--steps", str(args.train_steps),
               "--eval_every", str(args.train_steps), "--eval_batches", "8", "--out", out,
               "--warmup", "20"] + pattern_flags(a, args)
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode != 0:
            print("| %s | failed: %s | | | |" % (a, (p.stdout + p.stderr).strip().splitlines()[-1]))
            continue
        recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
        val = [r for r in recs if r["kind"] == "eval"][-1]["val_loss"]
        tl = [r for r in recs if r["kind"] == "train"][-1]["loss"]
        res[a] = val
        rel = "%.1f%%" % (100 * res["dense"] / val) if "dense" in res else "-"
        print("| %s | %.4f | %.4f | %.0f | %s |" % (a, val, tl, time.time() - t0, rel))


if __name__ == "__main__":
    main()
