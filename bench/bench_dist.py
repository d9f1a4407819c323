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

Part 2 is the scaling model of docs/parallel.md for `small` and `v3-671b` at 8 to 2048 GPUs, from
the same volume formulas, FLOPs per token from `dsv3 info`, and stated link bandwidths.

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
    n = 6 + 2 * moe_layers + moe_layers * c["experts"] + dp + 1  # + the distillation loss
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
H100 = {"peak": 989e12, "mfu": 0.40, "nvlink": 160e9, "ib": 45e9, "gpus_per_node": 8}


def model_rows(preset, seq_len, tokens_per_gpu, layouts, hw, pp=1):
    inf = info(preset, seq_len)
    c = inf["config"]
    P = inf["params"]
    moe_layers = (c["layers"] - c["dense_layers"] + c["mtp_depth"]) if c["experts"] else 0
    P_exp = moe_layers * c["experts"] * 3 * c["hidden"] * c["moe_inter"]
    P_dense = P - P_exp
    flops = inf["train_flops_per_token"]
    rows = []
    for N, ep in layouts:
        dp = N // pp
        edp = dp // ep
        t_comp = tokens_per_gpu * flops / (hw["peak"] * hw["mfu"])
        # gradient reduction (fp32 as dsv3 does it), ring; across nodes the NIC bounds the bus
        bw_dp = hw["nvlink"] if N <= hw["gpus_per_node"] else hw["ib"]
        g_dense = 2 * (dp - 1) / dp * 4 * P_dense / pp
        g_exp = 2 * (edp - 1) / edp * 4 * P_exp / pp / ep if edp > 1 else 0
        t_dp = (g_dense + g_exp) / bw_dp
        # expert all-to-all: forward dispatch + combine, backward the same, bf16 rows; a GPU of a
        # pipeline stage holds L/pp layers but sees pp times the tokens: tokens x layers per GPU
        # is the same as without pipelining
        bw_ep = hw["nvlink"] if ep <= hw["gpus_per_node"] else hw["ib"]
        a2a = 4 * 2 * c["hidden"] * tokens_per_gpu * c["topk"] * (ep - 1) / ep * moe_layers
        t_ep = a2a / bw_ep
        backward = 2 / 3 * t_comp
        # the last bucket (25 MiB) is reduced after backward whatever the overlap
        t_last = 2 * 25 * 1048576 / bw_dp if dp > 1 else 0.0
        exposed_dp = max(t_dp - backward, min(t_dp, t_last))
        exposed_dsv3 = exposed_dp + t_ep  # buckets overlapped, all-to-all blocking
        exposed_overlap = exposed_dp + max(0.0, t_ep - t_comp)  # all-to-all hidden (DualPipe)
        mem = (2 + 4) * (P_dense / pp + P_exp / pp / ep) + 12 * (P_dense / pp + P_exp / pp / ep) / dp
        rows.append({"N": N, "dp": dp, "ep": ep, "pp": pp, "t_comp": t_comp, "t_dp": t_dp,
                     "t_ep": t_ep, "eff_dsv3": t_comp / (t_comp + exposed_dsv3),
                     "eff_overlap": t_comp / (t_comp + exposed_overlap), "mem_gb": mem / 1e9})
    return rows


def print_model(hw):
    print("\n## Scaling model (H100: %.0f TFLOP/s bf16 at %.0f%% MFU, NVLink %.0f GB/s, IB %.0f GB/s per GPU)\n"
          % (hw["peak"] / 1e12, 100 * hw["mfu"], hw["nvlink"] / 1e9, hw["ib"] / 1e9))
    cases = [
        ("small", 4096, 65536, [(n, min(n, 8)) for n in (8, 16, 64, 256, 1024, 2048)], 1,
         "16 x 4096 tokens per GPU-step, ep = min(N, 8) (all-to-all inside a node)"),
        ("small", 4096, 65536, [(n, 1) for n in (8, 16, 64, 256, 1024, 2048)], 1,
         "the same, pure data parallel (ep 1)"),
        ("v3-671b", 4096, 30720, [(n, 64) for n in (1024, 2048)] + [(n, 8) for n in (128, 256, 512)], 16,
         "DeepSeek-V3's 30720 tokens per GPU-step, pp 16 (issue 11; memory needs it), ep 8 or 64"),
    ]
    for preset, seq, tpg, layouts, pp, what in cases:
        print("### %s: %s\n" % (preset, what))
        print("| GPUs | dp x ep x pp | compute s | grad reduce s | all-to-all s | eff. dsv3 (a2a blocking) | eff. with a2a overlapped | GB/GPU (w+g, ZeRO-1) |")
        print("|---:|---|---:|---:|---:|---:|---:|---:|")
        for r in sorted(model_rows(preset, seq, tpg, layouts, hw, pp), key=lambda r: r["N"]):
            print("| %d | %d x %d x %d | %.3f | %.3f | %.3f | %.0f%% | %.0f%% | %.0f |" % (
                r["N"], r["dp"] // r["ep"] * r["ep"], r["ep"], r["pp"], r["t_comp"], r["t_dp"],
                r["t_ep"], 100 * r["eff_dsv3"], 100 * r["eff_overlap"], r["mem_gb"]))
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
    print_model(H100)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
