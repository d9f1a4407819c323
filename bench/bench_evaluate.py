#!/usr/bin/env python3
"""Evaluation benchmark (E2): `dsv3 evaluate` items/s on a HellaSwag-layout task against
lm-evaluation-harness-style scoring through transformers on the same exported model.

The task is built from real text (../shared/data/text/fiction): the context is one sentence,
the gold ending the sentence after it, three distractors are sentences from elsewhere; 4
endings per item, as HellaSwag. The model is a preset trained for a few steps on the built-in
corpus (byte-level ids) and exported with `dsv3 export --format hf`; both sides score the same
contexts and choices (the peer reads dsv3's --samples file) on the same number of threads.
Model loading is outside both timings. The peer also reports the largest difference of its
log-likelihoods from dsv3's, and its acc/acc_norm, which must equal dsv3's.

dsv3 runs twice: as it runs by default (each context once into the KV cache, the choices scored
over it: --share_context true) and the harness's way (one row per request: --share_context
false), so the gain of sharing the context is visible beside the peer. The peer runs at every
batch size of --peer-batch (the default includes one batch holding every request, what the
harness's --batch_size auto picks for a model this small) and its best is compared. The load
average before and after is printed: the machine is shared; with --repeat N every configuration
runs N times round-robin and reports its best and median.

    bench/setup_peer_venv.sh                     # once: torch + transformers (.venv-peer)
    python3 bench/bench_evaluate.py              # tiny, 200 items, 2 threads
    python3 bench/bench_evaluate.py --items 500 --peer-batch 1,16,64 --json
    python3 bench/bench_evaluate.py --items 50 --repeat 3 --threads 1   # a busy machine

Work and MFU: the bench counts each side's forward FLOPs (2 per multiply-add of the linear layers
a token runs, activated experts only, as `dsv3 info` counts them, and of causal attention as
written in MLA's unabsorbed form; embedding lookups, norms and softmaxes not counted): dsv3's
from the tokens it reports running through the layers and the continuation tokens it predicts
(the head runs only there), the peer's from every position of every request row (padding not
counted). Over torch.matmul's fp32 GEMM peak measured in the same run on the same threads, this
gives each side's MFU and the ceiling: the speedup over the best peer if dsv3 ran at 100% of the
peak with its present FLOPs per item.

Any python3 runs this script (the peer runs in the venv).
"""
import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.environ.get("DSV3_SHARED_DIR", os.path.join(REPO, "..", "shared"))


def run_json(cmd, env=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), r.stderr[-2000:]))
    return json.loads(r.stdout.strip().splitlines()[-1] if not r.stdout.lstrip().startswith("{") else r.stdout)


def make_task(path, n, seed):
    text = ""
    d = os.path.join(SHARED, "data", "text", "fiction")
    for fn in sorted(os.listdir(d)):
        text += open(os.path.join(d, fn), encoding="utf-8", errors="replace").read() + "\n"
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", re.sub(r"\s+", " ", text))]
    sents = [s for s in sents if 40 <= len(s) <= 160]
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as f:
        for _ in range(n):
            i = rng.randrange(len(sents) - 1)
            endings = [sents[i + 1]] + [sents[rng.randrange(len(sents))] for _ in range(3)]
            rng.shuffle(endings)
            f.write(json.dumps({"ctx": sents[i], "endings": endings, "label": endings.index(sents[i + 1])}) + "\n")


def forward_flops(info, rows_layers, rows_head, attn_pairs):
    """FLOPs of a forward: rows_layers tokens through every block, rows_head rows through the
    head, attn_pairs (query, key) pairs of causal attention per layer. The linear layers' counts
    are dsv3's own (`dsv3 info --json`: active_params, the main model without the embedding)."""
    c = info["config"]
    head = c["vocab"] * c["hidden"]
    per_pair = c["layers"] * c["heads"] * (c["qk_nope"] + c["qk_rope"] + c["v_head"])
    macs = rows_layers * (info["active_params"] - head) + rows_head * head + attn_pairs * per_pair
    return 2.0 * macs


def work_per_item(info, samples, dsv3_tokens_run):
    """(dsv3 FLOPs, peer FLOPs) per item, from the scored contexts and choices (byte-level ids,
    the request split as the harness's _encode_pair: trailing spaces of the context move over)."""
    d_head = d_pairs = p_rows = p_pairs = 0
    items = 0
    for line in open(samples, encoding="utf-8"):
        it = json.loads(line)
        items += 1
        ctx = it["context"]
        n = len(ctx) - len(ctx.rstrip())
        for ch in it["choices"]:
            c, q = (ctx[:-n], ctx[-n:] + " " + ch) if n else (ctx, " " + ch)
            lc, lq = len(c.encode("utf-8")), len(q.encode("utf-8"))
            L = lc + lq - 1  # the harness feeds context + continuation but its last token
            p_rows += L
            p_pairs += L * (L + 1) // 2
            d_head += lq
            d_pairs += sum(range(lc, L + 1))  # a continuation's rows attend to the context too
        d_pairs += lc * (lc - 1) // 2  # the context but its last token, once per item
    dsv3 = forward_flops(info, dsv3_tokens_run, d_head, d_pairs)
    peer = forward_flops(info, p_rows, p_rows, p_pairs)
    return dsv3 / items, peer / items


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--items", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-tokens", type=int, default=4096, help="dsv3 evaluate --batch_tokens")
    ap.add_argument("--peer-batch", default="1,16,64,256", help="peer batch sizes to run (its best is compared)")
    ap.add_argument("--peer-python", default=os.path.join(REPO, ".venv-peer", "bin", "python"))
    ap.add_argument("--work", default=None, help="keep the model and task here")
    ap.add_argument("--repeat", type=int, default=1, help="runs of each configuration, interleaved (best reported)")
    ap.add_argument("--skip-peak", action="store_true", help="no GEMM peak (no MFU, no ceiling)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    work = a.work or tempfile.mkdtemp(prefix="dsv3_bench_eval_")
    os.makedirs(work, exist_ok=True)
    run, hf = os.path.join(work, a.preset), os.path.join(work, a.preset, "hf")
    if not os.path.exists(os.path.join(hf, "config.json")):
        subprocess.run([a.dsv3, "train", "--preset", a.preset, "--steps", "20", "--batch", "4", "--seq_len", "128",
                        "--eval_every", "0", "--sample_tokens", "0", "--out", run], check=True, stdout=subprocess.DEVNULL)
        subprocess.run([a.dsv3, "export", "--model", run, "--format", "hf", "--out", hf], check=True,
                       stdout=subprocess.DEVNULL)
    task = os.path.join(work, "nextsent.jsonl")
    make_task(task, a.items, 1)
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    samples = os.path.join(work, "samples.jsonl")
    samples_rows = os.path.join(work, "samples_rows.jsonl")
    load_before = os.getloadavg()
    # Every configuration runs --repeat times, round-robin (dsv3, dsv3 rows, peer at each
    # batch, then again), so a change of load hits all of them alike; each row reports its
    # best and median run.
    configs = [("dsv3", "true"), ("dsv3", "false")]
    if not os.path.exists(a.peer_python):
        print("peer: skipped (run bench/setup_peer_venv.sh or pass --peer-python)", file=sys.stderr)
    else:
        configs += [("peer", b) for b in a.peer_batch.split(",")]
    runs = {c: [] for c in configs}
    for _ in range(a.repeat):
        for c in configs:
            if c[0] == "dsv3":
                share = c[1]
                d = run_json([a.dsv3, "evaluate", "--model", hf, "--tasks", task,
                              "--samples", samples if share == "true" else samples_rows,
                              "--batch_tokens", str(a.batch_tokens), "--share_context", share, "--json"], env)
                d = d["results"]["nextsent"]
                runs[c].append({"impl": "dsv3 evaluate" + ("" if share == "true" else " (one row per request)"),
                                "batch": "%d tokens" % a.batch_tokens, "items_per_second": d["items_per_second"],
                                "acc": d["acc"], "acc_norm": d["acc_norm"], "tokens_run": d["tokens_run"]})
            else:
                p = run_json([a.peer_python, os.path.join(REPO, "bench", "peer_hf_loglik.py"), "--model", hf,
                              "--samples", samples, "--batch", c[1], "--threads", str(a.threads)], env)
                runs[c].append({"impl": "transformers " + p["transformers"] + " (torch " + p["torch"] + ")",
                                "batch": "%s rows" % c[1], "items_per_second": p["items_per_second"],
                                "acc": p["acc"], "acc_norm": p["acc_norm"],
                                "max_abs_ll_diff": p["max_abs_ll_diff_vs_dsv3"]})
    rows = []
    for c in configs:
        rates = sorted(r["items_per_second"] for r in runs[c])
        row = dict(runs[c][-1])
        row["items_per_second"] = rates[-1]
        row["items_per_second_median"] = rates[(len(rates) - 1) // 2]  # the lower median
        row["runs"] = len(rates)
        if "max_abs_ll_diff" in row:
            row["max_abs_ll_diff"] = max(r["max_abs_ll_diff"] for r in runs[c])
        rows.append(row)
    ll_a = [json.loads(l)["loglik"] for l in open(samples, encoding="utf-8")]
    ll_b = [json.loads(l)["loglik"] for l in open(samples_rows, encoding="utf-8")]
    rows[0]["max_abs_ll_diff_vs_rows"] = max(abs(x - y) for p, q in zip(ll_a, ll_b) for x, y in zip(p, q))
    best_peer = max((r["items_per_second"] for r in rows[2:]), default=None)
    info = run_json([a.dsv3, "info", "--preset", a.preset, "--json"])
    f_dsv3, f_peer = work_per_item(info, samples, rows[0]["tokens_run"])
    peak = None
    if not a.skip_peak and os.path.exists(a.peer_python):
        pk = run_json([a.peer_python, os.path.join(REPO, "bench", "peer_deepseek.py"), "--gemm-peak",
                       "--gemm-dtypes", "fp32", "--gemm-sizes", "1024,2048", "--threads", str(a.threads)], env)
        peak = pk["fp32_gflops"]
    for r in rows:
        r["gflop_per_item"] = (f_peer if r["impl"].startswith("transformers") else f_dsv3) / 1e9
        r["gflops"] = r["gflop_per_item"] * r["items_per_second"]
        if peak:
            r["mfu"] = r["gflops"] / peak
    rows[1]["gflop_per_item"] = f_peer / 1e9  # one row per request: the peer's work (+ padding)
    rows[1]["gflops"] = rows[1]["gflop_per_item"] * rows[1]["items_per_second"]
    if peak:
        rows[1]["mfu"] = rows[1]["gflops"] / peak
    out = {"fp32_gemm_peak_gflops": peak,
           "ceiling_speedup_vs_best_peer": peak * 1e9 / f_dsv3 / best_peer if peak and best_peer else None,
           "preset": a.preset, "items": a.items, "threads": a.threads, "rows": rows,
           "load_average_before": load_before, "load_average_after": os.getloadavg(),
           "speedup_vs_best_peer": rows[0]["items_per_second"] / best_peer if best_peer else None}
    if a.json:
        print(json.dumps(out))
    else:
        print("%s, %d items x 4 endings, %d threads" % (a.preset, a.items, a.threads))
        for r in rows:
            print("  %-44s %-12s %8.2f items/s (median %.2f of %d)  %.2f GFLOP/item %6.1f GFLOP/s%s"
                  "  acc %.4f acc_norm %.4f%s" % (
                r["impl"], r["batch"], r["items_per_second"], r["items_per_second_median"], r["runs"],
                r["gflop_per_item"], r["gflops"], "  MFU %4.1f%%" % (100 * r["mfu"]) if "mfu" in r else "",
                r["acc"], r["acc_norm"],
                "  max|ll diff| %.2e" % r["max_abs_ll_diff"] if "max_abs_ll_diff" in r else ""))
        print("  dsv3 shared context vs one row per request: max|ll diff| %.2e, tokens run %d vs %d"
              % (rows[0]["max_abs_ll_diff_vs_rows"], rows[0]["tokens_run"], rows[1]["tokens_run"]))
        print("  load average before %s, after %s" % (" ".join("%.2f" % x for x in load_before),
                                                    " ".join("%.2f" % x for x in out["load_average_after"])))
        if best_peer:
            print("  dsv3 / best peer: %.1fx" % out["speedup_vs_best_peer"])
        if out["ceiling_speedup_vs_best_peer"]:
            print("  fp32 GEMM peak (torch.matmul) %.1f GFLOP/s: dsv3 at 100%% of it would be %.1fx the best peer"
                  % (peak, out["ceiling_speedup_vs_best_peer"]))


if __name__ == "__main__":
    main()
