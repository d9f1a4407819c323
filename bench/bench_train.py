#!/usr/bin/env python3
"""Training throughput, side by side in one run on one machine: `dsv3 bench` against the peer a
user would pick, PyTorch 2.x (newest CPU wheel from PyPI, in .venv-peer/) training a plain Hugging
Face-style DeepseekV3 (bench/peer_deepseek.py: experts looped over as a ModuleList, MLA, MTP,
balance loss, routing-bias update) of the same config, same batch of random tokens, same thread
count, AdamW + clip_grad_norm_(1.0) + bias update every step.

Rows
  dsv3 fp32 / bf16 / fp16    `dsv3 bench --json --precision P` (a build without the flag runs fp32
                             only; the others are reported "n/a (not supported by this build)").
  PyTorch eager fp32, torch.compile fp32 (inductor), eager + torch.autocast("cpu", bfloat16),
  torch.compile + bf16 autocast: each in its own process (separate peak RSS); warm-up steps
  first (compilation happens there, untimed), then timed steps.
  --with-reference: the PyTorch 1.13 functional reference tests/python/dsv3_ref.py in fp32 under
  /usr/bin/python3. That is the correctness oracle, not a peer: it is slow on purpose (plain ops).

Numbers
  tokens/s = B*T / mean timed step; FLOPs/token = `dsv3 info` train_flops_per_token for every row
  (so MFU is comparable); MFU against the GEMM peaks measured in the same run with torch.matmul on
  large square matrices (fp32 and bf16, best over sizes and repetitions): "MFU" uses the peak of
  the row's compute precision (bf16 rows: the bf16 peak; fp32 and fp16 rows: the fp32 peak, there
  being no fp16 FMA on this CPU), "MFU fp32pk" is every row against the fp32 peak. dsv3's own
  measured fp32 and bf16 peaks (oneDNN, `dsv3 bench`) are reported beside it. Peak memory: max RSS of the process
  that ran the variant (dsv3: its peak_rss_bytes).

Usage
  bench/setup_peer_venv.sh                         # once: creates .venv-peer (several GB download)
  python3 bench/bench_train.py [--preset tiny] [--batch 8] [--seq 256] [--threads 2]
        [--steps 5] [--warmup 3] [--repeat 1] [--json] [--with-reference] [--dsv3 build/dsv3]
        [--variants eager,compile,eager-bf16,compile-bf16] [--precisions fp32,bf16,fp16]
  python3 bench/bench_train.py --preset small --batch 2 --steps 2 --warmup 1
The orchestrator needs only the standard library (any python3); the peer runs under
--peer-python (default .venv-peer/bin/python, created by bench/setup_peer_venv.sh with --setup).
"""
import argparse
import json
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)

PEER_VARIANTS = {
    # name: (label, peer_deepseek.py flags). The compiled rows add the compile flags of
    # --compile-args: by default one graph (dynamo captures the expert loop's torch.where), which
    # ran faster than plain torch.compile (whose graph breaks in the expert loop leave the layer
    # loop to eager) in every comparison we made; --compile-args '' gives plain torch.compile.
    "eager": ("PyTorch eager fp32", []),
    "compile": ("PyTorch compile fp32", ["--compile"]),
    "eager-bf16": ("PyTorch eager bf16-amp", ["--amp", "bf16"]),
    "compile-bf16": ("PyTorch compile bf16-amp", ["--compile", "--amp", "bf16"]),
}


# ----------------------------------------------------------------------------------------------
# The old reference row (runs under /usr/bin/python3 with PyTorch 1.13): an oracle, not a peer.
# ----------------------------------------------------------------------------------------------

def reference_worker(args):
    sys.path.insert(0, os.path.join(REPO, "tests", "python"))
    import numpy as np
    import torch
    import dsv3_ref as R
    torch.set_num_threads(args.threads)
    conf = json.loads(args.config)
    init_std = conf.pop("init_std")
    cfg = R.ModelCfg(**conf)
    tc = R.TrainCfg(lr=1e-3, weight_decay=0.1, clip=1.0)
    arrays = R.random_arrays(cfg, seed=1, std=init_std, emb_std=init_std, norm_jitter=0.0,
                             bias_std=0.0)
    params = R.to_params(cfg, arrays, dtype=torch.float32)
    opt = R.torch_adamw_groups(cfg, tc, params)
    trainable = [params[n] for n in R.trainable_names(cfg)]
    rng = np.random.default_rng(1)
    tokens = torch.tensor(rng.integers(0, cfg.vocab, size=(args.batch, args.seq + 1)))

    def step():
        out = R.forward(cfg, tc, params, tokens)
        out["total"].backward()
        torch.nn.utils.clip_grad_norm_(trainable, tc.clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for hf, ld in out["loads"].items():
                b = params["model.layers.%d.mlp.gate.e_score_correction_bias" % hf]
                b.add_(tc.bias_update_rate * torch.sign(ld.double().mean() - ld.double()).float())
        return float(out["loss_main"])

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    dt = sum(times) / len(times)
    print(json.dumps({"step_s": dt, "step_s_min": min(times), "tokens_per_s": args.batch * args.seq / dt,
                      "loss": loss,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "torch": torch.__version__}))


# ----------------------------------------------------------------------------------------------
# Orchestration
# ----------------------------------------------------------------------------------------------

def log(msg):
    print("[bench_train %s] %s" % (time.strftime("%H:%M:%S"), msg), file=sys.stderr, flush=True)


def run_json(cmd, env, timeout):
    """Runs cmd; returns (dict from its last JSON line, None) or (None, error text)."""
    try:
        p = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=timeout)
    except subprocess.TimeoutExpired:
        return None, "timed out after %ds" % timeout
    out = p.stdout.decode(errors="replace").strip().splitlines()
    err = p.stderr.decode(errors="replace").strip()
    if p.returncode != 0:
        tail = (err.splitlines() or out or ["exit %d" % p.returncode])[-1]
        return None, "exit %d: %s" % (p.returncode, tail[:300])
    for line in reversed(out):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line), None
            except ValueError:
                break
    return None, "no JSON result (stderr tail: %s)" % (err.splitlines()[-1][:300] if err else "-")


def best_of(results):
    """The repeat with the highest tokens/s, with every repeat's tokens/s attached."""
    ok = [r for r in results if r is not None]
    if not ok:
        return None
    best = dict(max(ok, key=lambda r: r["tokens_per_s"]))
    best["tokens_per_s_repeats"] = [r["tokens_per_s"] for r in ok]
    best["tokens_per_s_median"] = statistics.median(best["tokens_per_s_repeats"])
    return best


def ensure_peer_python(args):
    if os.path.exists(args.peer_python):
        return True
    if not args.setup:
        log("no peer venv at %s: run bench/setup_peer_venv.sh (or pass --setup)" % args.peer_python)
        return False
    log("creating the peer venv (bench/setup_peer_venv.sh)")
    subprocess.check_call([os.path.join(HERE, "setup_peer_venv.sh")], stdout=sys.stderr)
    return os.path.exists(args.peer_python)


def main():
    ap = argparse.ArgumentParser(description="dsv3 vs PyTorch 2.x training throughput, side by side")
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=0, help="sequence length (default: the preset's)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps per PyTorch variant (compile happens here)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--dsv3-warmup", type=int, default=2)
    ap.add_argument("--dsv3-steps", type=int, default=0, help="timed dsv3 steps (default: --steps)")
    ap.add_argument("--repeat", type=int, default=1, help="run every row this many times, keep the fastest")
    ap.add_argument("--precisions", default="fp32,bf16,fp16", help="dsv3 rows")
    ap.add_argument("--variants", default="eager,compile,eager-bf16,compile-bf16",
                    help="PyTorch rows: " + ",".join(PEER_VARIANTS))
    ap.add_argument("--peer-python", default=os.path.join(REPO, ".venv-peer", "bin", "python"))
    ap.add_argument("--peer-args", default="", help="extra flags for bench/peer_deepseek.py (e.g. '--attn eager')")
    ap.add_argument("--compile-args", default="auto",
                    help="extra peer flags for the compiled rows. auto: '--capture-dynamic' (the whole "
                         "model as one graph) when MoE layers x experts <= 64 (tiny), else "
                         "'--capture-dynamic --compile-regional' (one graph per block: compiling "
                         "`small` whole took over 30 min); '' = plain torch.compile")
    ap.add_argument("--setup", action="store_true", help="create the peer venv first when it is missing")
    ap.add_argument("--with-reference", action="store_true",
                    help="also time tests/python/dsv3_ref.py (PyTorch 1.13, /usr/bin/python3): the oracle, not a peer")
    ap.add_argument("--reference-python", default="/usr/bin/python3")
    ap.add_argument("--timeout", type=int, default=3600, help="seconds per row")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON on stdout (tables go to stderr)")
    ap.add_argument("--reference-worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--config", help=argparse.SUPPRESS)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: dsv3 and the peer train on the GPU; memory is peak device memory")
    args = ap.parse_args()
    if args.reference_worker:
        return reference_worker(args)
    t_start = time.time()

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    dsv3 = os.path.abspath(args.dsv3)
    if not os.path.exists(dsv3):
        sys.exit("no dsv3 binary at %s (build it: scripts/build.sh, or cmake -B build-bench && ninja -C build-bench dsv3; --dsv3 PATH)" % dsv3)
    common = ["--preset", args.preset, "--batch", str(args.batch)]
    if args.seq:
        common += ["--seq_len", str(args.seq)]
    info = json.loads(subprocess.check_output([dsv3, "info", "--json"] + common, env=env).decode().strip().splitlines()[-1])
    seq = int(info["seq_len"])
    common = ["--preset", args.preset, "--batch", str(args.batch), "--seq_len", str(seq)]
    flops = float(info["train_flops_per_token"])
    params_expected = int(info["params"])
    dsv3_steps = args.dsv3_steps or args.steps
    summary = {"preset": args.preset, "batch": args.batch, "seq": seq, "threads": args.threads,
               "device": args.device,
               "train_flops_per_token": flops, "params_dsv3": params_expected,
               "date": time.strftime("%Y-%m-%d"), "rows": {}, "peaks": {}}
    rows = summary["rows"]
    have_peer = ensure_peer_python(args)
    if args.compile_args == "auto":
        c = info["config"]
        moe_layers = (max(0, c["layers"] - c["dense_layers"]) + c["mtp_depth"]) if c["experts"] > 0 else 0
        args.compile_args = "--capture-dynamic" + ("" if moe_layers * c["experts"] <= 64 else " --compile-regional")
    summary["compile_args"] = args.compile_args

    # 1. GEMM peaks (torch.matmul fp32 / bf16), in the peer interpreter.
    if have_peer:
        log("measuring torch.matmul fp32/bf16 peaks")
        pk, err = run_json([args.peer_python, os.path.join(HERE, "peer_deepseek.py"), "--gemm-peak",
                            "--threads", str(args.threads), "--device", args.device], env, args.timeout)
        if pk:
            summary["peaks"].update({"torch_fp32_gflops": pk["fp32_gflops"], "torch_bf16_gflops": pk["bf16_gflops"],
                                     "torch": pk["torch"], "gemm_sizes": pk["sizes"], "gemm_reps": pk["reps"]})
            summary["torch"] = pk["torch"]
        else:
            log("GEMM peak failed: " + err)

    # 2. dsv3, one row per precision.
    for prec in [p for p in args.precisions.split(",") if p]:
        name = "dsv3 " + prec
        base = [dsv3, "bench", "--json", "--warmup_steps", str(args.dsv3_warmup),
                "--timed_steps", str(dsv3_steps)] + common + (["--device", "cuda"] if args.device == "cuda" else [])
        results, err = [], None
        for _ in range(args.repeat):
            log("running %s" % name)
            r, err = run_json(base + ["--precision", prec], env, args.timeout)
            if r is None and prec == "fp32" and "precision" in (err or ""):
                r, err = run_json(base, env, args.timeout)   # a build from before --precision
                if r is not None:
                    r["precision_flag"] = False
            if r is None:
                break
            if r.get("precision", prec) != prec:
                r, err = None, "build ran precision %s" % r.get("precision")
                break
            results.append(r)
        if results:
            best = best_of(results)
            best.update({"kind": "dsv3", "precision": prec, "ok": True})
            rows[name] = best
        else:
            unsupported = err and ("unknown" in err or "precision" in err)
            rows[name] = {"kind": "dsv3", "precision": prec, "ok": False,
                          "error": "n/a (not supported by this build)" if unsupported else err}
            log("%s: %s" % (name, err))
    d32 = rows.get("dsv3 fp32", {})
    if d32.get("ok") and "peak_gflops" in d32:
        summary["peaks"]["dsv3_fp32_gflops"] = d32["peak_gflops"]

    # 3. PyTorch 2.x variants, one process each.
    for v in [v for v in args.variants.split(",") if v]:
        label, flags = PEER_VARIANTS[v]
        if not have_peer:
            rows[label] = {"kind": "torch", "variant": v, "ok": False, "error": "no peer venv"}
            continue
        results, err = [], None
        for _ in range(args.repeat):
            log("running %s" % label)
            cmd = ([args.peer_python, os.path.join(HERE, "peer_deepseek.py"), "--config", json.dumps(info["config"]),
                    "--batch", str(args.batch), "--seq", str(seq), "--threads", str(args.threads),
                    "--warmup", str(args.warmup), "--steps", str(args.steps),
                    "--expect-params", str(params_expected), "--device", args.device] + flags
                   + shlex.split(args.peer_args)
                   + (shlex.split(args.compile_args) if "--compile" in flags else []))
            r, err = run_json(cmd, env, args.timeout)
            if r is None:
                break
            results.append(r)
        if results:
            best = best_of(results)
            best.update({"kind": "torch", "variant": v, "precision": "bf16" if "bf16" in v else "fp32", "ok": True})
            rows[label] = best
            summary.setdefault("params_peer", best["params"])
            summary.setdefault("params_peer_routing_bias", best["routing_bias_params"])
        else:
            rows[label] = {"kind": "torch", "variant": v, "ok": False, "error": err}
            log("%s failed: %s" % (label, err))

    # 4. The oracle.
    if args.with_reference:
        label = "oracle: dsv3_ref.py (PyTorch 1.13 eager)"
        conf = dict(info["config"])
        log("running %s" % label)
        results = []
        for _ in range(args.repeat):
            r, err = run_json([args.reference_python, os.path.abspath(__file__), "--reference-worker",
                               "--config", json.dumps(conf), "--threads", str(args.threads),
                               "--batch", str(args.batch), "--seq", str(seq),
                               "--warmup", str(max(1, min(args.warmup, 2))), "--steps", str(args.steps)],
                              env, args.timeout)
            if r is None:
                break
            results.append(r)
        rows[label] = (dict(best_of(results), kind="oracle", precision="fp32", ok=True) if results
                       else {"kind": "oracle", "ok": False, "error": err})

    # 5. MFU and ratios.
    pk32 = summary["peaks"].get("torch_fp32_gflops") or summary["peaks"].get("dsv3_fp32_gflops")
    pk16 = summary["peaks"].get("torch_bf16_gflops")
    for r in rows.values():
        if not r.get("ok"):
            continue
        ach = r["tokens_per_s"] * flops / 1e9
        r["achieved_gflops"] = ach
        r["mfu_fp32_peak"] = ach / pk32 if pk32 else None
        own = pk16 if r.get("precision") == "bf16" else pk32
        r["mfu"] = ach / own if own else None
        if r.get("kind") == "dsv3" and r.get("peak_gflops"):
            r["mfu_dsv3_own_peak"] = ach / r["peak_gflops"]

    def tps(name):
        r = rows.get(name, {})
        return r["tokens_per_s"] if r.get("ok") else None

    def ratio(a, b):
        return a / b if a and b else None

    bf16_peers = [tps(PEER_VARIANTS[v][0]) for v in ("eager-bf16", "compile-bf16")]
    bf16_peers = [x for x in bf16_peers if x]
    best_bf16 = max(bf16_peers) if bf16_peers else None
    comp32 = tps(PEER_VARIANTS["compile"][0])
    summary["ratios"] = {
        "dsv3_fp32_over_compile_fp32": ratio(tps("dsv3 fp32"), comp32),
        "dsv3_bf16_over_compile_fp32": ratio(tps("dsv3 bf16"), comp32),
        "dsv3_bf16_over_best_torch_bf16": ratio(tps("dsv3 bf16"), best_bf16),
        "dsv3_fp32_over_eager_fp32": ratio(tps("dsv3 fp32"), tps(PEER_VARIANTS["eager"][0])),
        "peak_mem_dsv3_fp32_over_compile_fp32": ratio(
            peak_bytes(rows["dsv3 fp32"]) if rows.get("dsv3 fp32", {}).get("ok") else None,
            peak_bytes(rows[PEER_VARIANTS["compile"][0]])
            if rows.get(PEER_VARIANTS["compile"][0], {}).get("ok") else None),
    }
    summary["wall_s"] = time.time() - t_start
    cmd_line = "python3 bench/bench_train.py --preset %s --batch %d%s%s" % (
        args.preset, args.batch, (" --seq %d" % args.seq) if args.seq else "",
        " --device cuda" if args.device == "cuda" else "")
    if args.steps != 5:
        cmd_line += " --steps %d" % args.steps
    if args.warmup != 3:
        cmd_line += " --warmup %d" % args.warmup
    summary["command"] = cmd_line

    report(summary, sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(summary, indent=1))


def peak_bytes(r):
    """A row's peak memory: device memory on the GPU, the process's RSS on the CPU."""
    return r.get("peak_device_bytes") or r.get("peak_rss_bytes")


def fmt(x, f="%.0f", none="-"):
    return none if x is None else f % x


def report(s, out):
    P = s["peaks"]
    w = lambda *a: print(*a, file=out)
    w("config: %s, batch %d x %d, %d threads, train FLOPs/token %.2fM (dsv3 info), params dsv3 %d / peer %s%s"
      % (s["preset"], s["batch"], s["seq"], s["threads"], s["train_flops_per_token"] / 1e6, s["params_dsv3"],
         s.get("params_peer", "-"),
         (" (+%d routing biases = %d)" % (s["params_peer_routing_bias"], s["params_peer"] + s["params_peer_routing_bias"]))
         if "params_peer" in s else ""))
    w("GEMM peaks (GFLOP/s, best of torch.matmul %s, %s reps): fp32 %s, bf16 %s; dsv3's own fp32 peak (oneDNN) %s; torch %s"
      % (P.get("gemm_sizes", "-"), P.get("gemm_reps", "-"), fmt(P.get("torch_fp32_gflops"), "%.1f"),
         fmt(P.get("torch_bf16_gflops"), "%.1f"), fmt(P.get("dsv3_fp32_gflops"), "%.1f"), s.get("torch", "-")))
    w("%-42s %10s %9s %7s %10s %9s %10s" % ("", "tokens/s", "s/step", "MFU", "MFU fp32pk", "peak MiB", "vs dsv3 fp32"))
    d32 = s["rows"].get("dsv3 fp32", {})
    for name, r in s["rows"].items():
        if not r.get("ok"):
            w("%-42s %s" % (name, r.get("error")))
            continue
        extra = ""
        if r.get("kind") == "dsv3" and r.get("mfu_dsv3_own_peak") is not None:
            extra = "  (MFU %.1f%% vs dsv3's own peak %.1f)" % (100 * r["mfu_dsv3_own_peak"], r["peak_gflops"])
        if r.get("kind") == "torch" and r.get("compile"):
            extra += "  (warm-up incl. compile %.0f s, %s graph(s), %s graph break(s))" % (
                r.get("warmup_s", 0), r.get("unique_graphs", "?"), r.get("graph_breaks", "?"))
        rel = (d32["tokens_per_s"] / r["tokens_per_s"]) if d32.get("ok") else None
        w("%-42s %10.0f %9.3f %6s%% %9s%% %9.0f %10s%s" % (
            name, r["tokens_per_s"], r["step_s"], fmt(100 * r["mfu"] if r["mfu"] else None, "%.1f"),
            fmt(100 * r["mfu_fp32_peak"] if r["mfu_fp32_peak"] else None, "%.1f"),
            peak_bytes(r) / 2 ** 20, fmt(rel, "%.2fx"), extra))
    R = s["ratios"]
    w("ratios (tokens/s): dsv3 fp32 / torch.compile fp32 = %s; dsv3 bf16 / torch.compile fp32 = %s; "
      "dsv3 bf16 / best PyTorch bf16 = %s; dsv3 fp32 / eager fp32 = %s; peak memory dsv3 fp32 / compile fp32 = %s"
      % (fmt(R["dsv3_fp32_over_compile_fp32"], "%.2fx"), fmt(R["dsv3_bf16_over_compile_fp32"], "%.2fx"),
         fmt(R["dsv3_bf16_over_best_torch_bf16"], "%.2fx"), fmt(R["dsv3_fp32_over_eager_fp32"], "%.2fx"),
         fmt(R["peak_mem_dsv3_fp32_over_compile_fp32"], "%.2fx")))
    w("whole benchmark: %.0f s" % s["wall_s"])

    # Markdown, ready for BENCHMARKS.md.
    def t(name):
        r = s["rows"].get(name, {})
        return fmt(r.get("tokens_per_s")) if r.get("ok") else "n/a"

    def mib(name):
        r = s["rows"].get(name, {})
        return fmt(peak_bytes(r) / 2 ** 20) if r.get("ok") else "n/a"

    def mfu(name):
        r = s["rows"].get(name, {})
        return fmt(100 * r["mfu"], "%.1f%%") if r.get("ok") and r.get("mfu") else "n/a"

    L = {v: PEER_VARIANTS[v][0] for v in PEER_VARIANTS}
    w("")
    w("| config | batch | command | dsv3 fp32 | dsv3 bf16 | dsv3 fp16 | PyTorch eager fp32 | torch.compile fp32 "
      "| eager bf16-amp | compile bf16-amp | dsv3 fp32 / compile fp32 | dsv3 bf16 / compile fp32 "
      "| dsv3 bf16 / best PyTorch bf16 | MFU dsv3 fp32 / bf16 | MFU compile fp32 / bf16 | GEMM peak fp32 / bf16 GFLOP/s "
      "| peak MiB dsv3 fp32 / compile fp32 / compile bf16 | torch | date |")
    w("|" + "---|" * 19)
    w("| %s | %d x %d | `%s` | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s | %s / %s | %s / %s | %s / %s | %s / %s / %s | %s | %s |" % (
        s["preset"], s["batch"], s["seq"], s["command"], t("dsv3 fp32"), t("dsv3 bf16"), t("dsv3 fp16"),
        t(L["eager"]), t(L["compile"]), t(L["eager-bf16"]), t(L["compile-bf16"]),
        fmt(R["dsv3_fp32_over_compile_fp32"], "%.2fx", "n/a"), fmt(R["dsv3_bf16_over_compile_fp32"], "%.2fx", "n/a"),
        fmt(R["dsv3_bf16_over_best_torch_bf16"], "%.2fx", "n/a"), mfu("dsv3 fp32"), mfu("dsv3 bf16"),
        mfu(L["compile"]), mfu(L["compile-bf16"]), fmt(P.get("torch_fp32_gflops"), "%.0f", "n/a"),
        fmt(P.get("torch_bf16_gflops"), "%.0f", "n/a"), mib("dsv3 fp32"), mib(L["compile"]), mib(L["compile-bf16"]),
        s.get("torch", "-"), s["date"]))


if __name__ == "__main__":
    main()
