"""Distributed training on this machine, and a model of it at scale (issue 10, BENCHMARKS.md).

Part 1 measures `tiny` (global batch 8 x 256) as 1 rank x 2 threads against 2 ranks x 1 thread
(dp 2; dp 2 + ep 2; dp 2 + ep 2 + EPLB; dp 2 + ZeRO-1): tokens/s, efficiency, compute and exposed communication per
step, bytes per collective kind; beside it the peer, PyTorch's DistributedDataParallel (gloo) on
the same model (bench/peer_ddp.py), as 1 process x 2 threads and 2 processes x 1 thread. It checks the bytes every rank reports in metrics.jsonl against
the analytic per-step volume of docs/parallel.md (computed here from the model config, with the
parameter table's layout rebuilt independently of dsv3). With EPLB (--eplb, a placement every
2 steps) it prints, per placement and MoE layer, the per-rank imbalance (max/mean rows) the homes
alone give on the loads of the steps since the previous placement, beside the imbalance of the
rows the ranks really computed under the placement in effect (the eplb records of metrics.jsonl).

Part 2 is the scaling model for `small` and `v3-671b` at 8 to 2048 GPUs: `dsv3 plan`'s predictions
(the same volume formulas; docs/planner.md) for fixed layouts.

  python3 bench/bench_dist.py [--steps 6] [--skip_measure] [--only 'ep 2'] [--mpirun mpirun] [--torch_python P]
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


def info(preset, seq_len):
    out = subprocess.run([DSV3, "info", "--preset", preset, "--seq_len", str(seq_len), "--json"],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# ---- the parameter table (src/model/params.cpp), rebuilt: (name, numel, align, is_expert)
def table(c):
    C = c["hidden"]
    t = []

    def mat(n, a, b, align=True, expert=False):
        t.append((n, a * b, align, expert))

    def swiglu(p, inter, expert=False):
        mat(p + ".gate", inter, C, True, expert)
        mat(p + ".up", inter, C, False, expert)
        mat(p + ".down", C, inter, True, expert)

    def block(l, moe):
        q_dim = c["heads"] * (c["qk_nope"] + c["qk_rope"])
        t.append(("in_norm", C, True, False))
        if c["q_lora"] > 0:
            mat("q_a", c["q_lora"], C)
            t.append(("q_a_norm", c["q_lora"], True, False))
            mat("q_b", q_dim, c["q_lora"])
        else:
            mat("q", q_dim, C)
        mat("kv_a", c["kv_lora"] + c["qk_rope"], C)
        t.append(("kv_norm", c["kv_lora"], True, False))
        mat("kv_b", c["heads"] * (c["qk_nope"] + c["v_head"]), c["kv_lora"])
        mat("o", C, c["heads"] * c["v_head"])
        t.append(("post_norm", C, True, False))
        if not moe:
            swiglu("mlp", c["dense_inter"])
            return
        mat("gate", c["experts"], C)
        if c["router"] == "sigmoid":
            t.append(("bias", c["experts"], True, False))
        for e in range(c["experts"]):
            swiglu("e%d" % e, c["moe_inter"], True)
        if c["shared_experts"] > 0:
            swiglu("shared", c["shared_experts"] * c["moe_inter"])

    mat("embed", c["vocab"], C)
    for l in range(c["layers"]):
        block(l, c["experts"] > 0 and l >= c["dense_layers"])
    for k in range(c["mtp_depth"]):
        t.append(("enorm", C, True, False))
        t.append(("hnorm", C, True, False))
        mat("eh", C, 2 * C)
        block(c["layers"] + k, c["experts"] > 0)
        t.append(("head_norm", C, True, False))
    t.append(("norm", C, True, False))
    mat("head", c["vocab"], C)
    return t


def layout_sizes(c, ep):
    """(dense floats, expert floats) of one rank's table: the whole model with ep 1 (one domain),
    else the expert-shard layout (experts after everything, 16-float alignment as params.cpp)."""
    total = 0
    tab = table(c)
    if ep == 1:
        for _, n, align, _ in tab:
            if align:
                total = (total + 15) // 16 * 16
            total += n
        return (total + 15) // 16 * 16, 0
    dense = 0
    for _, n, align, expert in tab:
        if expert:
            continue
        if align:
            dense = (dense + 15) // 16 * 16
        dense += n
    dense = (dense + 15) // 16 * 16
    total = dense
    experts = [x for x in tab if x[3]]
    E = c["experts"]
    # every layer keeps experts [0, E/ep) of the rank at ep index 0 (same sizes on every rank)
    per = 3 * (E // ep)
    layers = len(experts) // (3 * E)
    for l in range(layers):
        for _, n, align, _ in experts[l * 3 * E: l * 3 * E + per]:
            if align:
                total = (total + 15) // 16 * 16
            total += n
    total = (total + 15) // 16 * 16
    return dense, total - dense


def bucket_pieces(begin, end, n, bucket_floats):
    """sum over the buckets of a domain of the piece size P = ceil(len / n), as grad_sync.cpp."""
    B = max(n, bucket_floats // n * n)
    s, hi = 0, end
    while hi > begin:
        lo = hi - min(B, hi - begin)
        s += (hi - lo + n - 1) // n
        hi = lo
    return s


def predicted_bytes(c, dp, ep, zero, dtype_bytes=4, bucket_mb=25.0, micro=1):
    """docs/parallel.md "Communication volume": gradient and parameter bytes this rank sends."""
    bf = int(bucket_mb * 1048576 / 4)
    dense, expert = layout_sizes(c, ep)
    edp = dp // ep
    out = {}
    if zero == 0:
        out["all_reduce"] = 2 * (dp - 1) / dp * 4 * dense + (2 * (edp - 1) / edp * 4 * expert if edp > 1 else 0)
    else:
        pd = bucket_pieces(0, dense, dp, bf)
        pe = bucket_pieces(dense, dense + expert, edp, bf) if expert else 0
        out["reduce_scatter"] = micro * ((dp - 1) * 4 * pd + (edp - 1) * 4 * pe)
        out["all_gather"] = (dp - 1) * dtype_bytes * pd + (edp - 1) * dtype_bytes * pe
    return out


def stats_bytes(c, dp):
    moe_layers = (c["layers"] - c["dense_layers"] + c["mtp_depth"]) if c["experts"] else 0
    # + the distillation loss, + the pipeline's idle, wall and overlap seconds (sent, as zeros,
    # without --pp too: one layout of the vector)
    n = 6 + 2 * moe_layers + moe_layers * c["experts"] + dp + 1 + 3
    return 2 * (dp - 1) / dp * 8 * n


def replica_slots(placement, ranks, experts):
    """Per rank, the experts of its replica slots (-1: empty) in an eplb record's placement."""
    slots, own = len(placement) // ranks, experts // ranks
    return [placement[r * slots + own:(r + 1) * slots] for r in range(ranks)]


def run_train(np_, threads, args, out, mpirun):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               OMPI_MCA_btl_vader_single_copy_mechanism="none")
    cmd = [DSV3, "train"] + args + ["--out", out]
    if np_ > 1:
        root = ["--allow-run-as-root"] if os.geteuid() == 0 else []
        cmd = [mpirun, "-np", str(np_), "--oversubscribe", "--bind-to", "none"] + root + cmd
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl")) if '"train"' in l]


def measure(args):
    base = ["--preset", "tiny", "--seq_len", "256", "--global_batch", "8", "--steps", str(args.steps),
            "--peak_gflops", "1", "--sample_tokens", "0", "--eval_every", "0", "--eval_batches", "1",
            "--save_every", "0", "--keep", "1"]
    cfg = info("tiny", 256)["config"]
    rows = [("1 rank x 2 threads", 1, 2, ["--batch", "8"], 1, 1, 0),
            ("2 ranks x 1 thread, dp 2", 2, 1, ["--batch", "4"], 2, 1, 0),
            ("2 ranks x 1 thread, dp 2 + ep 2", 2, 1, ["--batch", "4", "--ep", "2"], 2, 2, 0),
            ("2 ranks x 1 thread, dp 2 + ep 2 + EPLB", 2, 1,
             ["--batch", "4", "--ep", "2", "--eplb", "--eplb_every", "2"], 2, 2, 0),
            ("2 ranks x 1 thread, dp 2 + ZeRO-1", 2, 1, ["--batch", "4", "--zero", "1"], 2, 1, 1)]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, np_, th, extra, dp, ep, zero in rows:
            if args.only and args.only not in name and np_ > 1:
                continue
            out = os.path.join(tmp, str(len(results)))
            m = run_train(np_, th, base + extra, out, args.mpirun)
            eplb = "--eplb" in extra
            steady = m[1:]  # the first step pays for allocation and first-touch
            tps = statistics.median(r["tokens_per_s"] for r in steady)
            row = {"name": name, "tokens_per_s": tps, "step_s": statistics.median(r["step_s"] for r in steady)}
            if np_ > 1:
                row["compute_s"] = statistics.median(r["compute_s"] for r in steady)
                row["exposed_s"] = statistics.median(r["exposed_comm_s"] for r in steady)
                row["comm_s"] = statistics.median(r["comm_s"] for r in steady)
                last = m[-1]
                got = last["comm_purpose_bytes"]
                row["bytes"] = last["comm_bytes"]
                if eplb:  # replica weights and gradients add to params/grads: only stats is exact
                    row["check"] = {"stats": (got.get("stats", 0), stats_bytes(cfg, dp))}
                    recs = [json.loads(l) for l in open(os.path.join(out, "metrics.jsonl"))]
                    row["eplb"] = [x for x in recs if x.get("kind") == "eplb"]
                    results.append(row)
                    continue
                pred = predicted_bytes(cfg, dp, ep, zero)
                grads_pred = pred.get("all_reduce", 0) + pred.get("reduce_scatter", 0)
                row["check"] = {"grads": (got.get("grads", 0), grads_pred),
                                "params": (got.get("params", 0), pred.get("all_gather", 0)),
                                "stats": (got.get("stats", 0), stats_bytes(cfg, dp))}
                if ep > 1:  # expected rows to the other rank under uniform routing
                    moe_layers = cfg["layers"] - cfg["dense_layers"] + cfg["mtp_depth"]
                    tokens = 4 * 256  # this rank's tokens per step
                    exp = 4 * 4 * cfg["hidden"] * tokens * cfg["topk"] * (ep - 1) / ep * moe_layers
                    counts = 8 * (ep - 1) * (cfg["experts"] // ep) * moe_layers  # forward only
                    row["check"]["experts (uniform routing)"] = (got.get("experts", 0), exp + counts)
            results.append(row)
    peers = []
    if args.torch_python:
        for world, threads in ((1, 2), (2, 1)):
            out = subprocess.run([args.torch_python, os.path.join(HERE, "peer_ddp.py"), "--world",
                                  str(world), "--threads", str(threads), "--preset", "tiny",
                                  "--batch", "8", "--seq", "256", "--steps", str(args.steps - 1)],
                                 check=True, capture_output=True, text=True).stdout
            r = json.loads(out.strip().splitlines()[-1])
            peers.append({"name": "PyTorch %s %s, %d x %d" % (r["torch"], "DDP gloo" if world > 1 else "eager",
                                                             world, threads),
                          "tokens_per_s": r["tokens_per_s"], "step_s": r["step_s"]})
    one = results[0]["tokens_per_s"]
    print("\n## Measured: `tiny`, global batch 8 x 256, %d steps (median of steps 2..)\n" % args.steps)
    print("| layout | tokens/s | vs its own 1 x 2 | step s | compute s | exposed comm s | comm s | bytes/step by kind |")
    print("|---|---:|---:|---:|---:|---:|---:|---|")
    for i, p in enumerate(peers):
        print("| %s | %.0f | %.2f | %.3f | - | - | - | - |" % (
            p["name"], p["tokens_per_s"], p["tokens_per_s"] / peers[0]["tokens_per_s"], p["step_s"]))
    for r in results:
        print("| %s | %.0f | %.2f | %.3f | %s | %s | %s | %s |" % (
            r["name"], r["tokens_per_s"], r["tokens_per_s"] / one, r["step_s"],
            "%.3f" % r["compute_s"] if "compute_s" in r else "-",
            "%.3f" % r["exposed_s"] if "exposed_s" in r else "-",
            "%.3f" % r["comm_s"] if "comm_s" in r else "-",
            ", ".join("%s %.2f MB" % (k, v / 1e6) for k, v in r.get("bytes", {}).items()) or "-"))
    for r in results:
        if not r.get("eplb"):
            continue
        print("\n### EPLB (%s): per-rank rows max/mean, homes alone vs measured under the placement\n" % r["name"])
        print("| placement at step | layer | homes (same loads) | measured | replicas placed |")
        print("|---:|---|---:|---:|---|")
        for k, rec in enumerate(r["eplb"]):
            for layer in rec["layers"]:
                print("| %d | %s | %.3f | %s | %s |" % (
                    rec["step"], layer["layer"], layer["imbalance_before"],
                    "%.3f" % layer["imbalance_measured"] if k > 0 else "(homes)",
                    replica_slots(layer["placement"], rec["ranks"], cfg["experts"])))
    print("\n| layout | what | measured bytes | formula | ratio |")
    print("|---|---|---:|---:|---:|")
    ok = True
    for r in results:
        for what, (got, want) in r.get("check", {}).items():
            ratio = got / want if want else float("nan")
            print("| %s | %s | %.0f | %.0f | %.4f |" % (r["name"], what, got, want, ratio))
            if "uniform" not in what and abs(got - want) > 0.5:
                ok = False
    print("\nformula check: %s" % ("every exact volume equals the formula" if ok else "MISMATCH"))
    return ok


# ---- Part 2: the scaling model ---------------------------------------------------------------
# The time model lives in one place, `dsv3 plan` (src/train/plan.cpp, docs/planner.md), which
# uses the volume formulas above; this prints its predictions for fixed layouts.
def plan_row(preset, seq_len, seqs_per_gpu, N, ep, pp, schedule):
    args = [DSV3, "plan", "--json", "--preset", preset, "--gpus", str(N), "--gpu", "h100",
            "--tokens", "1e12", "--seq_len", str(seq_len), "--global_batch", str(int(seqs_per_gpu * N)),
            "--tp", "1", "--pp", str(pp), "--ep", str(ep), "--zero", "1", "--top", "1"]
    if pp > 1:
        args += ["--schedule", schedule]
    r = subprocess.run(args, capture_output=True, text=True)
    if r.returncode != 0:
        return None, r.stderr.strip().splitlines()[-1]
    return json.loads(r.stdout)["best"][0], ""


def print_model():
    print("\n## Scaling model: `dsv3 plan --gpu h100` for fixed layouts (ZeRO-1, no TP)\n")
    cases = [
        ("small", 4096, 16, [(n, 1) for n in (8, 64, 256, 2048)], 1, "1f1b",
         "16 x 4096 tokens per GPU-step, pure data parallel"),
        ("small", 4096, 16, [(n, 8) for n in (8, 64, 256, 2048)], 1, "1f1b",
         "the same with ep 8 (all-to-all inside a node, blocking)"),
        ("v3-671b", 4096, 7.5, [(n, 64) for n in (1024, 2048)], 16, "1f1b",
         "DeepSeek-V3's 30720 tokens per GPU-step, pp 16 1F1B (blocking all-to-all), ep 64"),
        ("v3-671b", 4096, 7.5, [(n, 64) for n in (1024, 2048)], 16, "dualpipe",
         "the same with DualPipe (all-to-all overlapped)"),
    ]
    for preset, seq, spg, layouts, pp, sched, what in cases:
        print("### %s: %s\n" % (preset, what))
        print("| GPUs | layout | step s | compute | bubble | exposed all-to-all | exposed dp | efficiency | GB/GPU |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|---:|")
        for N, ep in layouts:
            r, err = plan_row(preset, seq, spg, N, ep, pp, sched)
            if r is None:
                print("| %d | ep %d, pp %d | %s | | | | | | |" % (N, ep, pp, err))
                continue
            t = r["step_s"]
            print("| %d | %s | %.3f | %.3f | %.3f | %.3f | %.3f | %.0f%% | %.1f |" % (
                N, r["layout"]["text"], t["total"], t["compute"], t["bubble"], t["ep"], t["dp"],
                100 * t["compute"] / t["total"], r["memory_bytes"]["total"] / 1e9))
        print()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip_measure", action="store_true")
    ap.add_argument("--mpirun", default="mpirun")
    ap.add_argument("--only", default="", help="measure only the 2-rank layouts whose name has this")
    venv = os.path.join(REPO, ".venv-peer", "bin", "python")
    ap.add_argument("--torch_python", default=venv if os.path.exists(venv) else "/usr/bin/python3",
                    help="interpreter with torch for the DDP peer ('' to skip it)")
    args = ap.parse_args()
    if not os.path.exists(DSV3):
        sys.exit("build/dsv3 not found: build first (scripts/build.sh)")
    ok = True
    if not args.skip_measure:
        ok = measure(args)
    print_model()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
