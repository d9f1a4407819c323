#!/usr/bin/python3
"""Loss parity: the float32 PyTorch reference (tests/python/dsv3_ref.py) and `dsv3 train` train
the `tiny` model on the same byte-level data for the same steps; their final validation losses
should agree within 1% (different initial weights and fp32 summation orders only).

Not run in CI (it takes minutes). Usage:
  /usr/bin/python3 bench/loss_parity.py [--steps 300] [--dsv3 build/dsv3] [--skip_ref|--skip_dsv3]
  /usr/bin/python3 bench/loss_parity.py --same_init [--reftool build/tests/reftool]
  /usr/bin/python3 bench/loss_parity.py --seeds 1,2,3,4,5 [--sides ref,dsv3] [--fresh]

--seeds: every listed seed on every side of --sides, one after the other; each run is stored in
WORK/seeds/SIDE_sSEED.json and reused by later calls (--fresh reruns). Then a table: final
validation loss per run, mean +- std, min/max per side, and for each pair of sides Welch's t-test
and an exact permutation test of the means. Sides:
  ref            the reference from its own init (numpy default_rng(seed)), llm.c batch order
  dsv3           `dsv3 train --seed SEED` (its own init), the same token files (llm.c order)
  ref_dsv3init   the reference from dsv3's initial weights for SEED (taken from a 1-step
                 `dsv3 train` with lr 1e-30, exported), llm.c batch order
  engine_npinit  the engine's train_step (tests/reftool) from the reference's init for SEED, fed
                 exactly the reference's llm.c-order batches
Every final model is also scored by the reference's evaluator (column "ref eval"), so the
evaluation path is the same for all sides.

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


def run_reference(args, cfg, init_std, tr_path, va_path, chunks=False, seed=None, init=None):
    """Trains the float32 reference; llm.c batch order, or (chunks=True) reftool's order:
    micro-batch j = the j-th consecutive chunk of B*(T+1) tokens. Initial weights: `init` (a dict
    of arrays) or init_arrays(seed, default --seed)."""
    torch.set_num_threads(args.threads)
    tc = train_cfg(args)
    if init is None:
        init = init_arrays(cfg, init_std, args.seed if seed is None else seed)
    params = R.to_params(cfg, init, torch.float32)
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


def run_reftool_same_init(args, cfg, init_std, tr_path, va_path, seed=None, init=None,
                          llmc_order=False, tag="same_init"):
    """The engine's model and optimizer step (tests/reftool) trained from the reference's exact
    initial weights on the same batches; its final weights are evaluated by the reference. This
    removes initialisation variance from the comparison (what remains: fp32 rounding, amplified
    by training). reftool reads micro-batch j as the j-th chunk of B*(T+1) tokens; llmc_order
    writes the llm.c-order batches one after the other, so it trains on exactly the batches of
    `dsv3 train` and of run_reference(chunks=False)."""
    tool = args.reftool
    hf = os.path.join(args.work, tag + "_hf")
    os.makedirs(hf, exist_ok=True)
    with open(os.path.join(hf, "config.json"), "w") as f:
        json.dump(cfg.to_hf(), f, indent=1)
    if init is None:
        init = init_arrays(cfg, init_std, args.seed if seed is None else seed)
    R.write_safetensors(os.path.join(hf, "model.safetensors"), init)
    n = args.steps * args.batch * (args.seq + 1)
    tok = os.path.join(args.work, tag + "_tokens.bin")
    if llmc_order:
        it = R.llmc_batches(R.read_tokens(tr_path), args.batch, args.seq)
        R.write_tokens(tok, np.concatenate([next(it).numpy().ravel() for _ in range(args.steps)]))
    else:
        R.write_tokens(tok, R.read_tokens(tr_path)[:n])
    out = os.path.join(args.work, tag + "_out")
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
    return {"val_loss": val, "steps": steps, "seconds": wall, "train_loss": steps[-1]["loss"],
            "history": [{"step": r["step"], "loss": r["loss"]} for r in steps],
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


def run_dsv3(args, tr_path, va_path, seed=None, run_dir=None, extra=(), settings=None):
    """`dsv3 train` on the token files; seed None = dsv3's default seed unless --dsv3_extra has
    one. settings: overrides of the matched settings (key -> value string)."""
    try:
        h = subprocess.run([args.dsv3, "help", "train"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=60).stdout.decode(errors="replace")
    except Exception as e:
        return {"error": "cannot run %s: %s" % (args.dsv3, e)}
    run_dir = run_dir or os.path.join(args.work, "dsv3_run")
    if os.path.isdir(run_dir):
        for fn in os.listdir(run_dir):  # a fresh run, not a resumed one
            os.remove(os.path.join(run_dir, fn))
    cmd = [args.dsv3, "train", "--preset", "tiny", "--train_data", tr_path, "--val_data", va_path,
           "--out", run_dir]
    # Settings that match the reference run, passed only where `dsv3 help train` lists them.
    want = [("steps", str(args.steps)), ("batch", str(args.batch)), ("seq_len", str(args.seq)),
            ("lr", repr(args.lr)), ("min_lr", repr(args.min_lr)), ("warmup", str(args.warmup)),
            ("eval_batches", str(args.eval_batches))]
    want += [(k, repr(v) if isinstance(v, float) else str(v)) for k, v in TRAIN_SETTINGS.items()]
    # (no --sample_tokens: llm.c token files have no text encoding, so dsv3 samples nothing and
    # refuses the flag as inapplicable)
    want += [("eval_every", "0"), ("save_every", "0"), ("threads", str(args.threads))]
    # A shuffle of token-file windows (if this build has one) would break the premise that both
    # sides see identical batches: switch every --*shuffle* option off.
    for m in re.finditer(r"^\s*--(\w*shuffle\w*)\s+(\S+)", h, re.M):
        k, typ = m.group(1), m.group(2)
        choices = typ.strip("[]").split("|")
        off = next((c for c in ("false", "off", "none", "0") if c in choices), None)
        if off is None and typ in ("int", "float"):
            off = "0"
        if off is None:
            return {"error": "`dsv3 train --%s %s`: do not know how to switch it off; pass it in "
                             "--dsv3_extra" % (k, typ)}
        want.append((k, off))
    if seed is not None:
        want.append(("seed", str(seed)))
    want = dict(want)
    want.update(settings or {})
    for k, v in want.items():
        if re.search(r"--%s\b" % k, h):
            cmd += ["--" + k, v]
        elif k in ("steps", "batch", "seq_len", "lr", "min_lr", "warmup", "seed") or k in TRAIN_SETTINGS:
            return {"error": "`dsv3 help train` does not list --%s: cannot match the reference" % k}
    if re.search(r"--json_summary\b", h):
        cmd += ["--json_summary"]
    cmd += list(extra) + args.dsv3_extra
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
            "tok_s": tok_s, "seconds": wall, "run_dir": run_dir,
            "history": [{"step": int(r.get("step", i + 1)) - 1, "loss": r.get("loss")}
                        for i, r in enumerate(train) if r.get("kind", "train") == "train"]}


# ----------------------------------------------------------------------------------------------
# Several seeds per side (--seeds)
# ----------------------------------------------------------------------------------------------

def dsv3_export(args, model, out):
    """`dsv3 export` of a checkpoint / run dir to an HF dir -> dict of numpy arrays."""
    pr = subprocess.run([args.dsv3, "export", "--model", model, "--format", "hf", "--out", out,
                         "--dtype", "f32"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if pr.returncode != 0:
        raise RuntimeError("dsv3 export failed: " + pr.stdout.decode(errors="replace")[-1000:])
    arrays = {}
    for fn in sorted(os.listdir(out)):
        if fn.endswith(".safetensors"):
            arrays.update(R.read_safetensors(os.path.join(out, fn))[0])
    return arrays


def ref_eval_arrays(args, cfg, arrays, va_path):
    """The reference's validation loss of a set of weights (numpy arrays)."""
    torch.set_num_threads(args.threads)
    params = R.to_params(cfg, arrays, torch.float32)
    return evaluate(cfg, train_cfg(args), params, R.read_tokens(va_path), args.batch, args.seq,
                    args.eval_batches)


def dsv3_init_arrays(args, cfg, tr_path, va_path, seed):
    """dsv3's own initial weights for `seed`: a 1-step `dsv3 train` with lr 1e-30 (below every
    weight's rounding step, so nothing moves) and no bias update, exported."""
    run_dir = os.path.join(args.work, "dsv3_init_s%d" % seed)
    r = run_dsv3(args, tr_path, va_path, seed=seed, run_dir=run_dir,
                 settings={"steps": "1", "lr": "1e-30", "min_lr": "0", "warmup": "0",
                           "bias_update_rate": "0", "eval_batches": "0"},
                 extra=["--peak_gflops", "1"])
    if "error" in r and "no validation loss" not in r["error"]:
        raise RuntimeError(r["error"])
    a = dsv3_export(args, run_dir, os.path.join(run_dir, "hf"))
    return {k: v for k, v in a.items() if k in {n for n, _, _ in R.param_specs(cfg)}}


def run_side(args, side, seed, cfg, init_std, tr_path, va_path):
    """One run of one side; a dict with val_loss (the side's own evaluator), ref_eval_val (the
    reference's evaluator on the final weights), history [{step, loss}], seconds."""
    if side == "ref":
        r = run_reference(args, cfg, init_std, tr_path, va_path, seed=seed)
        r["ref_eval_val"] = r["val_loss"]
    elif side == "ref_dsv3init":
        r = run_reference(args, cfg, init_std, tr_path, va_path,
                          init=dsv3_init_arrays(args, cfg, tr_path, va_path, seed))
        r["ref_eval_val"] = r["val_loss"]
    elif side == "dsv3":
        r = run_dsv3(args, tr_path, va_path, seed=seed,
                     run_dir=os.path.join(args.work, "dsv3_s%d" % seed))
        if "error" in r:
            raise RuntimeError(r["error"])
        final = dsv3_export(args, r["run_dir"], os.path.join(r["run_dir"], "hf"))
        final = {k: v for k, v in final.items() if k in {n for n, _, _ in R.param_specs(cfg)}}
        r["ref_eval_val"] = ref_eval_arrays(args, cfg, final, va_path)
    elif side == "engine_npinit":
        r = run_reftool_same_init(args, cfg, init_std, tr_path, va_path, seed=seed,
                                  llmc_order=True, tag="engine_npinit_s%d" % seed)
        if "error" in r:
            raise RuntimeError(r["error"])
        r["ref_eval_val"] = r["val_loss"]
    else:
        raise ValueError("unknown side " + side)
    keep = ("val_loss", "ref_eval_val", "train_loss", "tok_s", "seconds")
    out = {k: r.get(k) for k in keep}
    out["history"] = [float(h["loss"]) for h in r.get("history", [])]
    out.update(side=side, seed=seed, steps=args.steps, batch=args.batch, seq=args.seq, lr=args.lr,
               min_lr=args.min_lr, warmup=args.warmup, eval_batches=args.eval_batches)
    return out


def _betacf(a, b, x):
    """Continued fraction of the regularized incomplete beta (Numerical Recipes)."""
    tiny = 1e-300
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        de = d * c
        h *= de
        if abs(de - 1.0) < 1e-15:
            break
    return h


def betainc(a, b, x):
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbt = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log(1.0 - x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbt) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbt) * _betacf(b, a, 1.0 - x) / b


def t_two_sided_p(t, df):
    return betainc(df / 2.0, 0.5, df / (df + t * t))


def welch(a, b):
    """Welch's t-test of mean(b) - mean(a): (difference, t, df, two-sided p)."""
    na, nb = len(a), len(b)
    ma, mb = float(np.mean(a)), float(np.mean(b))
    va, vb = float(np.var(a, ddof=1)), float(np.var(b, ddof=1))
    se2 = va / na + vb / nb
    t = (mb - ma) / math.sqrt(se2)
    df = se2 ** 2 / ((va / na) ** 2 / (na - 1) + (vb / nb) ** 2 / (nb - 1))
    return mb - ma, t, df, t_two_sided_p(t, df)


def permutation_p(a, b):
    """Exact two-sided permutation test of the difference of means (all splits of the pooled runs)."""
    import itertools
    pool = list(a) + list(b)
    n, na = len(pool), len(a)
    obs = abs(np.mean(b) - np.mean(a))
    tot = sum(pool)
    hits = count = 0
    for idx in itertools.combinations(range(n), na):
        sa = sum(pool[i] for i in idx)
        d = abs((tot - sa) / (n - na) - sa / na)
        hits += d >= obs - 1e-12
        count += 1
    return hits / count, count


def paired(a_by_seed, b_by_seed):
    """Paired t-test of b - a over the seeds both sides have: (mean diff, std, n, p)."""
    seeds = sorted(set(a_by_seed) & set(b_by_seed))
    d = [b_by_seed[s] - a_by_seed[s] for s in seeds]
    if len(d) < 2:
        return None
    m, sd = float(np.mean(d)), float(np.std(d, ddof=1))
    if sd == 0:
        return m, sd, len(d), 1.0 if m == 0 else 0.0
    return m, sd, len(d), t_two_sided_p(m / (sd / math.sqrt(len(d))), len(d) - 1)


def summarize(args, results):
    """Table and tests of the runs in `results` (side -> {seed: record})."""
    k = args.tail
    sides = [s for s in args.sides if results.get(s)]
    print("\n| seed | side | final val loss | ref eval of final weights | train loss, mean of last %d steps |" % k)
    print("|---|---|---|---|---|")
    for side in sides:
        for seed in sorted(results[side]):
            r = results[side][seed]
            tail = np.mean(r["history"][-k:]) if r["history"] else float("nan")
            print("| %d | %s | %.4f | %.4f | %.4f |" % (seed, side, r["val_loss"], r["ref_eval_val"], tail))
    print("\n| side | runs | mean val loss +- std | min | max | mean train tail +- std |")
    print("|---|---|---|---|---|---|")
    vals, tails = {}, {}
    for side in sides:
        vals[side] = {s: r["ref_eval_val"] if args.metric == "ref_eval" else r["val_loss"]
                      for s, r in results[side].items()}
        tails[side] = {s: float(np.mean(r["history"][-k:])) for s, r in results[side].items() if r["history"]}
        v = list(vals[side].values())
        tl = list(tails[side].values())
        print("| %s | %d | %.4f +- %.4f | %.4f | %.4f | %.4f +- %.4f |" % (
            side, len(v), np.mean(v), np.std(v, ddof=1) if len(v) > 1 else 0.0, min(v), max(v),
            np.mean(tl) if tl else float("nan"), np.std(tl, ddof=1) if len(tl) > 1 else 0.0))
    print("\ntests (difference = second side minus first; val = %s):" % (
        "reference evaluator" if args.metric == "ref_eval" else "each side's own evaluator"))
    for i, a in enumerate(sides):
        for b in sides[i + 1:]:
            for what, d in (("val", vals), ("train tail", tails)):
                xa, xb = list(d[a].values()), list(d[b].values())
                if len(xa) < 2 or len(xb) < 2:
                    continue
                diff, t, df, p = welch(xa, xb)
                pp, n = permutation_p(xa, xb)
                line = "  %s vs %s, %s: %+.4f (%+.2f%%), Welch t %.2f df %.1f p %.3f; permutation p %.3f (%d splits)" % (
                    a, b, what, diff, 100 * diff / np.mean(xa), t, df, p, pp, n)
                pr = paired(d[a], d[b])
                if pr and ({a, b} in ({"ref", "engine_npinit"}, {"dsv3", "ref_dsv3init"})):
                    line += "; paired by seed (same init): %+.4f +- %.4f (n %d) p %.3f" % pr
                print(line)
    return vals


def run_seeds(args, cfg, init_std, tr_path, va_path):
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    store = args.store or os.path.join(args.work, "seeds")
    os.makedirs(store, exist_ok=True)
    t_all = time.time()

    def stored(side, seed):
        path = os.path.join(store, "%s_s%d.json" % (side, seed))
        if not os.path.exists(path):
            return None
        with open(path) as f:
            r = json.load(f)
        same = all(r.get(k) == getattr(args, k) for k in ("steps", "batch", "seq", "lr", "min_lr",
                                                             "warmup", "eval_batches"))
        return r if same else None

    def claim(side, seed):
        """Several invocations may share one --store: a run is claimed by a .running file that
        names a live process."""
        path = os.path.join(store, "%s_s%d.running" % (side, seed))
        try:
            with open(path) as f:
                pid = int(f.read().strip() or 0)
            os.kill(pid, 0)
            return None  # claimed by a live process
        except (OSError, ValueError):
            pass
        with open(path, "w") as f:
            f.write(str(os.getpid()))
        return path

    for seed in seeds:
        for side in args.sides:
            if not args.fresh and stored(side, seed):
                print("%s seed %d: stored result" % (side, seed), flush=True)
                continue
            cl = claim(side, seed)
            if cl is None:
                print("%s seed %d: running in another invocation, skipped" % (side, seed), flush=True)
                continue
            print("=== %s seed %d" % (side, seed), flush=True)
            t0 = time.time()
            try:
                r = run_side(args, side, seed, cfg, init_std, tr_path, va_path)
                r["wall_s"] = time.time() - t0
                r["threads"] = args.threads
                with open(os.path.join(store, "%s_s%d.json" % (side, seed)), "w") as f:
                    json.dump(r, f)
            finally:
                os.remove(cl)
            print("%s seed %d: val loss %.4f (reference evaluator %.4f), %.0fs" % (
                side, seed, r["val_loss"], r["ref_eval_val"], r["wall_s"]), flush=True)
    print("runs done in %.0fs" % (time.time() - t_all))
    results = {side: {} for side in args.sides}
    for side in args.sides:
        for seed in seeds:
            r = stored(side, seed)
            if r:
                results[side][seed] = r
            else:
                print("%s seed %d: no result (yet)" % (side, seed))
    summarize(args, results)
    # identical batches: the reference from dsv3's initial weights must follow dsv3's trajectory
    if results.get("dsv3") and results.get("ref_dsv3init"):
        for seed in sorted(set(results["dsv3"]) & set(results["ref_dsv3init"])):
            a, b = results["dsv3"][seed]["history"], results["ref_dsv3init"][seed]["history"]
            first = next((i for i, (x, y) in enumerate(zip(a, b)) if abs(x - y) / y > 1e-3), None)
            print("seed %d: dsv3 and the reference from dsv3's init: train loss step 0 %.5f vs %.5f; "
                  "agree to 0.1%% %s" % (seed, a[0], b[0], "at every step" if first is None
                                         else "until step %d" % first))
    return 0


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
    ap.add_argument("--seeds", default="",
                    help="comma-separated seeds: run every side of --sides for each (see above)")
    ap.add_argument("--sides", default="ref,dsv3",
                    help="with --seeds: ref, dsv3, ref_dsv3init, engine_npinit (comma-separated)")
    ap.add_argument("--fresh", action="store_true", help="with --seeds: rerun stored runs")
    ap.add_argument("--store", default="",
                    help="with --seeds: folder of the per-run results (default WORK/seeds); several "
                         "invocations (other --work, other seeds order) may share one")
    ap.add_argument("--tail", type=int, default=50, help="with --seeds: train-loss tail length")
    ap.add_argument("--metric", choices=("own", "ref_eval"), default="own",
                    help="with --seeds: val loss of the side's own evaluator, or the reference's")
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

    if args.seeds:
        args.sides = [s.strip() for s in args.sides.split(",") if s.strip()]
        return run_seeds(args, cfg, init_std, tr_path, va_path)

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
