#!/usr/bin/python3
"""Loss parity: the float32 PyTorch reference (tests/python/dsv3_ref.py) and `dsv3 train` train
the `tiny` model on the same byte-level data for the same steps; their final validation losses
should agree within 1% (different initial weights and fp32 summation orders only).

Not run in CI (it takes minutes). Usage:
  /usr/bin/python3 bench/loss_parity.py [--steps 300] [--dsv3 build/dsv3] [--skip_ref|--skip_dsv3]

Data: ids = UTF-8 bytes of ../shared/data/text; train = the fiction files except
tinyshakespeare (sorted by name, concatenated), val = tinyshakespeare; written as llm.c token files.
Batches follow llm.c's loader: rows b = tokens[p + b*T : p + b*T + T + 1], p += B*T, back to 0
when p + B*T + 1 > n. Validation: mean main loss over the first `eval_batches` batches of the
val file.
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "tests", "python"))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import dsv3_ref as R  # noqa: E402

# The `tiny` preset as written in the brief; replaced by `dsv3 info --preset tiny --json` when
# that command answers.
TINY = dict(vocab=4096, hidden=256, layers=4, dense_layers=1, heads=4, q_lora=128, kv_lora=64,
            qk_nope=32, qk_rope=16, v_head=32, dense_inter=768, moe_inter=128, experts=16,
            shared_experts=1, topk=4, groups=4, topk_groups=2, router="sigmoid", route_scale=2.5,
            norm_topk=True, mtp_depth=1, rms_eps=1e-6, max_seq=4096, rope_theta=10000.0)
TINY_INIT_STD = 0.006


def find_dict_with(obj, keys):
    if isinstance(obj, dict):
        if all(k in obj for k in keys):
            return obj
        for v in obj.values():
            r = find_dict_with(v, keys)
            if r is not None:
                return r
    elif isinstance(obj, list):
        for v in obj:
            r = find_dict_with(v, keys)
            if r is not None:
                return r
    return None


def tiny_from_cli(dsv3):
    """(model settings, init_std, source) from `dsv3 info --preset tiny --json` if it works."""
    try:
        pr = subprocess.run([dsv3, "info", "--preset", "tiny", "--json"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, timeout=60)
        if pr.returncode != 0:
            raise RuntimeError(pr.stderr.decode(errors="replace")[-300:])
        js = json.loads(pr.stdout.decode())
    except Exception as e:
        return dict(TINY), TINY_INIT_STD, "built-in numbers (dsv3 info failed: %s)" % str(e).strip()[:200]
    d = find_dict_with(js, ("vocab", "hidden", "layers"))
    if d is None:
        return dict(TINY), TINY_INIT_STD, "built-in numbers (dsv3 info JSON has no model fields)"
    m = dict(TINY)
    for k in TINY:
        if k in d:
            m[k] = type(TINY[k])(d[k]) if not isinstance(TINY[k], bool) else bool(d[k])
    for k in ("yarn_factor", "yarn_original_ctx", "yarn_beta_fast", "yarn_beta_slow", "yarn_mscale"):
        if k in d:
            m[k] = d[k]
    return m, float(d.get("init_std", TINY_INIT_STD)), "dsv3 info --preset tiny --json"


def build_data(text_dir, work):
    fiction = os.path.join(text_dir, "fiction")
    train_files = sorted(f for f in os.listdir(fiction) if f.endswith(".txt") and "tinyshakespeare" not in f)
    train = b"".join(open(os.path.join(fiction, f), "rb").read() for f in train_files)
    val = open(os.path.join(fiction, "tinyshakespeare.txt"), "rb").read()
    tr_path, va_path = os.path.join(work, "train.bin"), os.path.join(work, "val.bin")
    R.write_tokens(tr_path, np.frombuffer(train, dtype=np.uint8))
    R.write_tokens(va_path, np.frombuffer(val, dtype=np.uint8))
    return tr_path, va_path, train_files


def init_arrays(cfg, init_std, seed):
    """The documented init: normal(0, init_std) matrices, ones for norms, zero routing biases."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, shape, kind in R.param_specs(cfg):
        if kind == "matrix":
            out[n] = (init_std * rng.standard_normal(shape)).astype(np.float32)
        elif kind == "vector":
            out[n] = np.ones(shape, np.float32)
        else:
            out[n] = np.zeros(shape, np.float32)
    return out


def evaluate(cfg, tc, params, val_tokens, B, T, nb):
    it = R.llmc_batches(val_tokens, B, T)
    tot = 0.0
    with torch.no_grad():
        for _ in range(nb):
            tot += float(R.forward(cfg, tc, params, next(it))["loss_main"])
    return tot / nb


TRAIN_SETTINGS = dict(mtp_weight=0.3, balance_alpha=1e-4, balance_scope="sequence",
                      bias_update_rate=1e-3, schedule="cosine", beta1=0.9, beta2=0.95, eps=1e-8,
                      weight_decay=0.1, clip=1.0, grad_accum=1)


def train_cfg(args):
    return R.TrainCfg(lr=args.lr, min_lr=args.min_lr, warmup=args.warmup, steps=args.steps,
                      **TRAIN_SETTINGS)


def run_reference(args, cfg, init_std, tr_path, va_path, chunks=False):
    """Trains the float32 reference; llm.c batch order, or (chunks=True) reftool's order:
    micro-batch j = the j-th consecutive chunk of B*(T+1) tokens."""
    torch.set_num_threads(args.threads)
    tc = train_cfg(args)
    params = R.to_params(cfg, init_arrays(cfg, init_std, args.seed), torch.float32)
    train_tokens, val_tokens = R.read_tokens(tr_path), R.read_tokens(va_path)
    if chunks:
        get = R.chunk_batches(train_tokens, args.batch, args.seq)
        it = (get(j) for j in range(args.steps))
    else:
        it = R.llmc_batches(train_tokens, args.batch, args.seq)
    tr = R.Trainer(cfg, tc, params)
    t0 = time.time()
    history = []
    for s in range(args.steps):
        rec = tr.step([next(it)])
        history.append(rec)
        if s % args.log_every == 0 or s == args.steps - 1:
            el = time.time() - t0
            lm = " ".join("%.2f" % (max(v) / (sum(v) / len(v))) for _, v in sorted(rec["loads"].items()))
            print("ref step %4d loss %.4f mtp %.4f bal %.2e gnorm %.3f lr %.2e load max/mean %s  %.0f tok/s" % (
                s, rec["loss"], rec["mtp_loss"], rec["balance_loss"], rec["grad_norm"], rec["lr"], lm,
                (s + 1) * args.batch * args.seq / el), flush=True)
    train_s = time.time() - t0
    val = evaluate(cfg, tc, params, val_tokens, args.batch, args.seq, args.eval_batches)
    return {"val_loss": val, "train_loss": rec["loss"], "tok_s": args.steps * args.batch * args.seq / train_s,
            "seconds": train_s, "history": history}


def run_reftool_same_init(args, cfg, init_std, tr_path, va_path):
    """The engine's model and optimizer step (tests/reftool) trained from the reference's exact
    initial weights on the same batches; its final weights are evaluated by the reference. This
    removes initialisation variance from the comparison (what remains: fp32 rounding, amplified
    by training)."""
    tool = args.reftool
    hf = os.path.join(args.work, "same_init_hf")
    os.makedirs(hf, exist_ok=True)
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=1)
    R.write_safetensors(os.path.join(hf, "model.safetensors"), init_arrays(cfg, init_std, args.seed))
    n = args.steps * args.batch * (args.seq + 1)
    tok = os.path.join(args.work, "same_init_tokens.bin")
    R.write_tokens(tok, R.read_tokens(tr_path)[:n])
    out = os.path.join(args.work, "same_init_out")
    cmd = [tool, "--hf", hf, "--tokens", tok, "--batch", str(args.batch), "--seq", str(args.seq),
           "--steps", str(args.steps), "--out", out, "--lr", repr(args.lr), "--min_lr", repr(args.min_lr),
           "--warmup", str(args.warmup)]
    for k, v in TRAIN_SETTINGS.items():
        cmd += ["--" + k, repr(v) if isinstance(v, float) else str(v)]
    print("running: " + " ".join(cmd), flush=True)
    t0 = time.time()
    pr = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    wall = time.time() - t0
    if pr.returncode != 0:
        return {"error": "reftool failed (rc %d): %s" % (pr.returncode, pr.stdout.decode(errors="replace")[-2000:])}
    with open(os.path.join(out, "metrics.json")) as f:
        steps = json.load(f)["steps"]
    final, _ = R.read_safetensors(os.path.join(out, "final.safetensors"))
    params = R.to_params(cfg, final, torch.float32)
    val = evaluate(cfg, train_cfg(args), params, R.read_tokens(va_path), args.batch, args.seq,
                   args.eval_batches)
    return {"val_loss": val, "steps": steps, "seconds": wall,
            "tok_s": args.steps * args.batch * args.seq / wall}


def find_number(obj, pred):
    """First number in a JSON object whose key satisfies pred (depth-first, last wins per level)."""
    found = None
    if isinstance(obj, dict):
        for k, v in obj.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and pred(k.lower()):
                found = float(v)
        for v in obj.values():
            if found is None and isinstance(v, (dict, list)):
                found = find_number(v, pred)
    elif isinstance(obj, list):
        for v in reversed(obj):
            found = find_number(v, pred)
            if found is not None:
                break
    return found


def run_dsv3(args, tr_path, va_path):
    try:
        h = subprocess.run([args.dsv3, "help", "train"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60).stdout.decode(errors="replace")
    except Exception as e:
        return {"error": "cannot run %s: %s" % (args.dsv3, e)}
    run_dir = os.path.join(args.work, "dsv3_run")
    if os.path.isdir(run_dir):
        for fn in os.listdir(run_dir):  # a fresh run, not a resumed one
            os.remove(os.path.join(run_dir, fn))
    cmd = [args.dsv3, "train", "--preset", "tiny", "--train_data", tr_path, "--val_data", va_path,
           "--steps", str(args.steps), "--batch", str(args.batch), "--seq_len", str(args.seq),
           "--lr", repr(args.lr), "--min_lr", repr(args.min_lr), "--warmup", str(args.warmup),
           "--eval_batches", str(args.eval_batches), "--out", run_dir]
    # Settings that match the reference run, passed only where `dsv3 help train` lists them.
    for k, v in (("weight_decay", "0.1"), ("clip", "1.0"), ("mtp_weight", "0.3"),
                 ("balance_alpha", "0.0001"), ("balance_scope", "sequence"),
                 ("bias_update_rate", "0.001"), ("schedule", "cosine"), ("beta1", "0.9"),
                 ("beta2", "0.95"), ("eps", "1e-08"), ("grad_accum", "1"), ("eval_every", "0"),
                 ("save_every", "0"), ("sample_tokens", "0"), ("threads", str(args.threads))):
        if re.search(r"--%s\b" % k, h):
            cmd += ["--" + k, v]
    if re.search(r"--json_summary\b", h):
        cmd += ["--json_summary"]
    cmd += args.dsv3_extra
    print("running: " + " ".join(cmd), flush=True)
    t0 = time.time()
    pr = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                        env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    wall = time.time() - t0
    out = pr.stdout.decode(errors="replace")
    if pr.returncode != 0:
        return {"error": "dsv3 train failed (rc %d):\n%s" % (pr.returncode, out[-3000:])}
    # metrics.jsonl: {"kind":"train", "loss", "tokens_per_s", "step_s", ...} per step and
    # {"kind":"eval", "val_loss", ...} per evaluation.
    train, evals = [], []
    mpath = os.path.join(run_dir, "metrics.jsonl")
    if os.path.exists(mpath):
        for line in open(mpath):
            line = line.strip()
            if not line:
                continue
            try:
                r = json.loads(line)
            except ValueError:
                continue
            (evals if r.get("kind") == "eval" or "val_loss" in r else train).append(r)
    val = evals[-1].get("val_loss") if evals else None
    if val is None:  # fall back to a JSON summary line or the log line "val loss X"
        for line in reversed(out.strip().splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    val = find_number(json.loads(line), lambda k: "val" in k and "loss" in k)
                except ValueError:
                    pass
            m = re.search(r"val loss ([0-9.]+)", line)
            if val is None and m:
                val = float(m.group(1))
            if val is not None:
                break
    if val is None:
        return {"error": "no validation loss found in %s or the output:\n%s" % (mpath, out[-2000:])}
    step_s = sum(r.get("step_s", 0.0) for r in train if r.get("kind", "train") == "train")
    ntok = args.steps * args.batch * args.seq
    tok_s = ntok / step_s if step_s > 0 else ntok / wall
    return {"val_loss": float(val), "train_loss": train[-1].get("loss") if train else None,
            "tok_s": tok_s, "seconds": wall}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min_lr", type=float, default=1e-4)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--eval_batches", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--log_every", type=int, default=20)
    ap.add_argument("--dsv3", default=os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3")))
    ap.add_argument("--text", default=os.path.join(REPO, "..", "shared", "data", "text"))
    ap.add_argument("--work", default=os.path.join(REPO, "build", "loss_parity"))
    ap.add_argument("--skip_ref", action="store_true")
    ap.add_argument("--skip_dsv3", action="store_true")
    ap.add_argument("--same_init", action="store_true",
                    help="instead of `dsv3 train` (own init), train the engine through tests/reftool from "
                         "the reference's initial weights on the same batches (consecutive chunks)")
    ap.add_argument("--reftool", default=os.path.join(os.environ.get("DSV3_BUILD_DIR", os.path.join(REPO, "build")),
                                                      "tests", "reftool"))
    ap.add_argument("--dsv3_extra", nargs=argparse.REMAINDER, default=[],
                    help="further flags for dsv3 train (everything after this flag)")
    args = ap.parse_args()
    os.makedirs(args.work, exist_ok=True)

    model, init_std, source = tiny_from_cli(args.dsv3)
    cfg = R.ModelCfg(**model)
    print("tiny config from %s: %s, init_std %g" % (source, json.dumps(model), init_std))
    tr_path, va_path, files = build_data(args.text, args.work)
    print("train: %d tokens from %s; val: %d tokens (tinyshakespeare)" % (
        R.read_tokens(tr_path).size, ", ".join(files), R.read_tokens(va_path).size))

    ref = dsv = None
    if not args.skip_ref:
        ref = run_reference(args, cfg, init_std, tr_path, va_path, chunks=args.same_init)
        print("reference: val loss %.4f (train loss %.4f), %.0f tok/s, %.0fs" % (
            ref["val_loss"], ref["train_loss"], ref["tok_s"], ref["seconds"]))
    if args.same_init:
        eng = run_reftool_same_init(args, cfg, init_std, tr_path, va_path)
        if "error" in eng:
            print("engine: " + eng["error"])
            return 1
        print("engine (reftool, same init): val loss %.4f, %.0f tok/s incl. dumps, %.0fs" % (
            eng["val_loss"], eng["tok_s"], eng["seconds"]))
        if ref:
            first = None
            for r, e in zip(ref["history"], eng["steps"]):
                d = abs(e["loss"] - r["loss"]) / r["loss"]
                if first is None and d > 1e-3:
                    first = r["step"]
            k = max(1, len(eng["steps"]) // 3)
            tail = np.mean([(e["loss"] - r["loss"]) / r["loss"]
                            for r, e in zip(ref["history"][-k:], eng["steps"][-k:])])
            print("train loss: trajectories agree to 0.1%% %s; mean relative difference over "
                  "the last %d steps %+.3f%%" % ("at every step" if first is None else "until step %d" % first,
                                                k, 100 * tail))
            diff = (eng["val_loss"] - ref["val_loss"]) / ref["val_loss"]
            ok = abs(diff) <= 0.01
            print("relative difference %+.2f%% (target within 1%%): %s" % (100 * diff, "OK" if ok else "MISMATCH"))
            print("BENCHMARKS.md: | loss parity (same init, reftool), tiny, %d steps, B=%d T=%d | reference val "
                  "%.4f | engine val %.4f | %+.2f%% |" % (args.steps, args.batch, args.seq, ref["val_loss"],
                                                          eng["val_loss"], 100 * diff))
            return 0 if ok else 1
        return 0
    if not args.skip_dsv3:
        dsv = run_dsv3(args, tr_path, va_path)
        if "error" in dsv:
            print("dsv3: " + dsv["error"])
            dsv = None
        else:
            print("dsv3:      val loss %s, %.0f tok/s, %.0fs wall" % (
                "%.4f" % dsv["val_loss"] if dsv["val_loss"] is not None else "?", dsv["tok_s"], dsv["seconds"]))
    if ref and dsv and dsv["val_loss"] is not None:
        diff = (dsv["val_loss"] - ref["val_loss"]) / ref["val_loss"]
        ok = abs(diff) <= 0.01
        print("relative difference %+.2f%% (target within 1%%): %s" % (100 * diff, "OK" if ok else "MISMATCH"))
        print("BENCHMARKS.md: | loss parity, tiny, %d steps, B=%d T=%d, byte-level fiction -> tinyshakespeare "
              "| reference val %.4f (%.0f tok/s) | dsv3 val %.4f (%.0f tok/s) | %+.2f%% |" % (
                  args.steps, args.batch, args.seq, ref["val_loss"], ref["tok_s"], dsv["val_loss"],
                  dsv["tok_s"], 100 * diff))
        return 0 if ok else 1
    return 0 if (ref or dsv) else 1


if __name__ == "__main__":
    sys.exit(main())
