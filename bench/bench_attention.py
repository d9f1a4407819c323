#!/usr/bin/python3
"""Long-context attention (M6): dense vs window vs LSH attention in dsv3 on the `tiny` shapes.

1. Throughput and memory: `dsv3 bench --preset tiny --batch 1 --seq_len T --attention A` for
   T in --lengths (1024, 4096, 16384): training tokens/s (forward + backward + optimizer) and
   peak RSS. Dense attention stores P as (B, H, T, T) per layer; where `dsv3 info` says the run
   needs more than --max_gib it is reported as "does not fit" instead of being run.
2. Quality: a short `dsv3 train` with each pattern on real text (UTF-8 bytes of
   ../shared/data/text/fiction, validation = tinyshakespeare, as bench/loss_parity.py) at
   sequence length --train_T: the final validation loss, beside dense attention's.

0. The attention core alone, forward and backward, beside PyTorch:
   build/bench/bench_sparse_attention (dsv3's dense, window and LSH kernels, and the per-query
   gather kernels the blocked ones replaced) and bench/peer_attention.py (the same three written
   in PyTorch, Longformer- and Reformer-style blocks, autograd backward), same shapes and threads.

The seed's claim to compare with: "3x faster at 4096 with 98% of dense accuracy". Parts 1 and 2
compare dsv3's own attention patterns on the same model code (no peer model).

Usage (Debian's /usr/bin/python3, which carries the PyTorch 1.13 peer; takes minutes; needs
`ninja -C build dsv3 bench_sparse_attention`):
  /usr/bin/python3 bench/bench_attention.py [--dsv3 build/dsv3] [--lengths 1024,4096,16384]
        [--train_steps 200] [--train_T 1024] [--window 256] [--lsh "--lsh_buckets 32 --lsh_chunk 64"]
        [--skip_ops] [--skip_model] [--skip_train]
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


def lsh_value(flags, name, default):
    f = shlex.split(flags)
    return f[f.index(name) + 1] if name in f else default


def json_lines(cmd, env=None):
    p = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if p.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), (p.stdout + p.stderr)[-2000:]))
    return [json.loads(l) for l in p.stdout.splitlines() if l.startswith("{")]


def ops_part(args):
    """dsv3's attention kernels and PyTorch's, forward + backward, at each length."""
    common = ["--lengths", args.lengths, "--window", str(args.window), "--samples", str(args.op_samples),
              "--buckets", lsh_value(args.lsh, "--lsh_buckets", "32"), "--chunk", lsh_value(args.lsh, "--lsh_chunk", "64"),
              "--rounds", lsh_value(args.lsh, "--lsh_rounds", "1")]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    ours = json_lines([args.bench_ops] + common, env)
    peer = json_lines([sys.executable, os.path.join(HERE, "peer_attention.py"), "--threads", str(args.threads)] + common)
    print("\nAttention core alone (H 4, d_qk 48, d_v 32, fp32, batch 1, %d threads), ms, best of %d:"
          % (args.threads, args.op_samples))
    print("| T | kernel | dsv3 fwd | dsv3 bwd | saved MiB | torch %s fwd | torch bwd | dsv3 vs torch (fwd+bwd) | vs dsv3 dense |"
          % (peer[0]["torch"] if peer else "?"))
    print("|---|---|---|---|---|---|---|---|---|")
    for r in ours:
        p = next((x for x in peer if x["T"] == r["T"] and x["kernel"] == r["kernel"] and "forward_ms" in x), None)
        d = next((x for x in ours if x["T"] == r["T"] and x["kernel"] == "dense" and "forward_ms" in x), None)
        if "forward_ms" not in r:
            print("| %d | %s | %s | | %.0f | | | | |" % (r["T"], r["kernel"], r["skipped"], r["saved_bytes"] / 2 ** 20))
            continue
        tot = r["forward_ms"] + r["backward_ms"]
        vs_peer = "%.2fx" % ((p["forward_ms"] + p["backward_ms"]) / tot) if p else "-"
        vs_dense = "%.2fx" % ((d["forward_ms"] + d["backward_ms"]) / tot) if d else "-"
        print("| %d | %s | %.1f | %.1f | %.0f | %s | %s | %s | %s |" % (
            r["T"], r["kernel"], r["forward_ms"], r["backward_ms"], r["saved_bytes"] / 2 ** 20,
            "%.1f" % p["forward_ms"] if p else "-", "%.1f" % p["backward_ms"] if p else "-", vs_peer, vs_dense))
    for p in peer:
        if "skipped" in p:
            print("(torch %s at T=%d: %s)" % (p["kernel"], p["T"], p["skipped"]))
    sys.stdout.flush()


def main():
    t_start = time.time()
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
    ap.add_argument("--skip_ops", action="store_true")
    ap.add_argument("--skip_model", action="store_true")
    ap.add_argument("--bench_ops", default=os.path.join(REPO, "build", "bench", "bench_sparse_attention"))
    ap.add_argument("--op_samples", type=int, default=3)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "dsv3_bench_attention"))
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)
    patterns = args.patterns.split(",")
    if not args.skip_ops:
        ops_part(args)
    rows = []
    for T in ([] if args.skip_model else [int(x) for x in args.lengths.split(",")]):
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
    if rows:
        print("\nTraining step of `tiny` (batch 1, forward + backward + AdamW), %d timed steps:" % args.timed_steps)
        print("| T | attention | tokens/s | s/step | peak RSS GiB | estimated GiB | vs dense |")
        print("|---|---|---|---|---|---|---|")
    for r in rows:
        dense = next((x for x in rows if x["T"] == r["T"] and x["attention"] == "dense" and "tokens_per_s" in x), None)
        ratio = "%.2fx" % (r["tokens_per_s"] / dense["tokens_per_s"]) if dense and "tokens_per_s" in r else "-"
        if "error" in r:
            print("| %d | %s | %s | | | %.1f | |" % (r["T"], r["attention"], r["error"], r["est_gib"]))
        else:
            print("| %d | %s | %.0f | %.2f | %.2f | %.1f | %s |" % (r["T"], r["attention"], r["tokens_per_s"], r["step_s"],
                                                                 r["rss_gib"], r["est_gib"], ratio))
    sys.stdout.flush()
    if args.skip_train:
        print("\n(took %.0f s)" % (time.time() - t_start))
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
        print("| %s | %.4f | %.4f | %.0f | %s |" % (a, val, tl, time.time() - t0, rel), flush=True)
    print("\n(took %.0f s)" % (time.time() - t_start))


if __name__ == "__main__":
    main()
