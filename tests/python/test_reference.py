#!/usr/bin/python3
"""Side-by-side test: the C++ engine (through tests/reftool) against the independent PyTorch
reference (dsv3_ref.py, float64 oracle) on tiny models covering every model path.

Standalone script (no pytest). Exit 0: all checks passed; 1: a check failed; 77: skipped (torch
missing, or the reftool binary missing; the reference's own self-checks still run first and a
failure there still exits 1). Prints one line per check and finally "N passed, M failed".

Environment: DSV3_BUILD_DIR (default <repo>/build) holds tests/reftool. DSV3_REF_KEEP=1 keeps the
scratch directory. DSV3_REF_ONLY=name[,name] runs only those configs.
"""
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, HERE)

try:
    import numpy as np
    import torch
except Exception as e:  # pragma: no cover
    print("SKIP: torch/numpy not importable (%s); use Debian's /usr/bin/python3" % e)
    sys.exit(77)

import dsv3_ref as R

torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))

# ------------------------------------------------------------------------------------------------
# Tolerances. The engine computes in fp32; the oracle in float64 from the same (fp32 / bf16-rounded)
# initial weights, so every difference is the engine's fp32 rounding (unit roundoff 6e-8),
# amplified by the depth of the computation:
# - logits: a forward pass of a few layers accumulates ~1e-7..1e-6 relative error; 1e-5 leaves a
#   10x margin and still catches any real math difference (those are >= 1e-3).
# - gradients: the backward pass is about twice as deep and cancellations (residual sums, softmax
#   and normalisation backward) lose a few more bits per tensor; 1e-4 per tensor.
# - losses over 10 steps: the trajectory is a function of fp32-rounded updates; AdamW's
#   m/sqrt(v) normalisation amplifies noise in near-zero gradient entries, so the engine's and the
#   oracle's weights drift apart by ~1e-6 relative per step; 1e-4 (relative to max(1,|x|)) bounds
#   that with margin. Same bound for grad_norm (relative) and final weights (relative per tensor).
# - lr: the schedule is plain double arithmetic on both sides: exact to 1e-12.
# - routing biases move by exactly +-bias_update_rate per step; the count of up/down moves must
#   agree exactly (they are integers), and the values to fp32 rounding (1e-6 << one move).
# fp32-vs-fp64 checks of the reference itself use the same tolerances, which shows they are
# attainable by an fp32 implementation.
TOL = {"fp32": dict(logits=1e-5, grad=1e-4, loss=1e-4, lr=1e-12, gnorm=1e-4, final=1e-4,
                   bias_abs=1e-6)}
# fp32 rounding perturbs router scores by ~1e-6; a seed is only used when every discrete routing
# choice of the oracle's whole run has at least this margin, so both sides route alike.
MIN_MARGIN = {"fp32": 2e-5}
#
# bf16 / fp16 (TrainCfg.precision): the oracle is the same float64 reference with every value
# rounded where docs/model.md "Mixed precision" says the engine stores it (straight-through
# gradients). Engine and oracle then see the same 16-bit values except where an fp32 (engine) and
# an fp64 (oracle) result straddle a rounding boundary: a one-ulp flip (2^-9 bf16, 2^-12 fp16
# relative) that propagates. fp16's finer grid puts more values near a boundary, so it flips more
# often. The engine also rounds activation gradients (the oracle's backward is exact), so its
# gradients differ by about one u (2^-8 bf16, 2^-11 fp16), and AdamW's m/sqrt(v) turns that into
# per-element update differences that accumulate over the 10 steps. Measured maxima over these
# cases (DSV3_REF_VERBOSE=1 prints them), engine vs oracle:
#               logits   grads    step losses  grad norm  final weights
#   bf16        4e-8     1.0e-2   2.4e-4       4.3e-4     6.1e-3
#   fp16        1.4e-4   9.5e-4   3.7e-5       6.5e-5     2.0e-3
# The tolerances are about 3x those (logits: room for a flip cascade); a real error is far
# larger (a wrong term O(1); weights left in fp32 would put ~2^-9 = 2e-3 on every GEMM of bf16).
TOL["bf16"] = dict(logits=1e-3, grad=3e-2, loss=1e-3, lr=1e-12, gnorm=2e-3, final=2e-2,
                   bias_abs=1e-6)
TOL["fp16"] = dict(logits=1e-3, grad=3e-3, loss=2e-4, lr=1e-12, gnorm=3e-4, final=6e-3,
                   bias_abs=1e-6)
# 16-bit runs follow the engine's routing; a token the oracle would route differently must be a
# near-tie for the oracle: its own selection margin below the score noise of the precision.
TIE_MARGIN = {"bf16": 1e-2, "fp16": 2e-3}
MAX_DISAGREE = 0.02  # of all token decisions
VERBOSE = bool(os.environ.get("DSV3_REF_VERBOSE"))

B, T, STEPS = 2, 16, 10

BASE = dict(vocab=96, hidden=32, heads=2, qk_nope=8, qk_rope=4, v_head=8, kv_lora=16, q_lora=16,
            experts=8, moe_inter=16, dense_inter=48, layers=2, dense_layers=1, shared_experts=1,
            topk=2, groups=1, topk_groups=1, router="sigmoid", route_scale=2.5, norm_topk=True,
            mtp_depth=1, rms_eps=1e-6, max_seq=64, rope_theta=10000.0)
TRAIN = dict(mtp_weight=0.3, balance_alpha=1e-3, balance_scope="sequence", bias_update_rate=1e-3,
             lr=3e-3, min_lr=3e-4, warmup=2, schedule="cosine", weight_decay=0.1, clip=1.0,
             grad_accum=1, beta1=0.9, beta2=0.95, eps=1e-8)


def cfgdict(**kw):
    d = dict(BASE)
    d.update(kw)
    return d


def traindict(**kw):
    d = dict(TRAIN)
    d.update(kw)
    return d


CONFIGS = [
    # V3 router: sigmoid + bias, 4 groups keep 2, top-3; plain RoPE; MTP 1; HF file also carries
    # the MTP module's embed_tokens / shared_head.head copies.
    dict(name="sigmoid_groups", model=cfgdict(groups=4, topk_groups=2, topk=3),
         train=traindict(), mtp_copies=True, seed=11,
         precisions=["fp32", "bf16", "fp16"]),
    # V2 router: softmax, no groups, no renormalisation; plain q_proj; no MTP; batch-wise balance;
    # constant schedule, no clipping; a strong balance loss so its gradient matters.
    dict(name="softmax_plain", model=cfgdict(router="softmax", route_scale=1.0, norm_topk=False,
                                             q_lora=0, mtp_depth=0, shared_experts=2),
         train=traindict(balance_scope="batch", balance_alpha=1e-2, schedule="constant", warmup=3,
                         clip=0.0), seed=21, precisions=["fp32", "bf16"]),
    # softmax with renormalised top-k, no shared expert, 3 layers, MTP depth 2, active clipping.
    dict(name="softmax_norm_mtp2", model=cfgdict(router="softmax", route_scale=1.5, norm_topk=True,
                                                 layers=3, shared_experts=0, mtp_depth=2),
         train=traindict(clip=0.5, mtp_weight=0.3), seed=31, precisions=["fp32", "fp16"]),
    # YaRN factor 4 over an original context of 8 (so it matters at T=16), mscale 0.707; every
    # layer MoE; 2 groups keep 1; plain q_proj; BF16 weights in the HF file; fast bias updates.
    dict(name="yarn_bf16", model=cfgdict(yarn_factor=4.0, yarn_original_ctx=8, yarn_beta_fast=32.0,
                                         yarn_beta_slow=1.0, yarn_mscale=0.707, q_lora=0,
                                         dense_layers=0, groups=2, topk_groups=1),
         train=traindict(balance_scope="batch", bias_update_rate=1e-2, warmup=0), bf16=True, seed=41,
         precisions=["fp32", "bf16"]),
    # dense-only model (n_routed_experts 0, first_k_dense_replace = layers); MTP block is dense.
    dict(name="dense_only", model=cfgdict(experts=0, dense_layers=2, layers=2, shared_experts=0,
                                          topk=1, mtp_depth=1),
         train=traindict(), seed=51, precisions=["fp32", "fp16"]),
    # gradient accumulation over 2 micro-batches, MTP depth 2, sigmoid router without groups.
    dict(name="grad_accum2", model=cfgdict(mtp_depth=2, topk=2),
         train=traindict(grad_accum=2, mtp_weight=0.5, warmup=3), seed=61,
         precisions=["fp32", "bf16"]),
]

# ------------------------------------------------------------------------------------------------

RESULTS = {"passed": 0, "failed": 0}


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""), flush=True)
    return ok


def rel(a, b):
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b)
    d = np.linalg.norm(a - b)
    if nb == 0.0:
        return 0.0 if d == 0.0 else float("inf")
    return float(d / nb)


def model_cfg(d):
    return R.ModelCfg(**d)


def make_case(case, root, seed):
    """Writes the HF directory and token file of one case; returns (hfdir, tokfile, arrays)."""
    cfg = model_cfg(case["model"])
    tc = R.TrainCfg(steps=STEPS, **case["train"])
    hfdir = os.path.join(root, case["name"], "hf")
    os.makedirs(hfdir, exist_ok=True)
    arrays = R.random_arrays(cfg, seed, std=0.08, emb_std=1.0, norm_jitter=0.1, bias_std=0.01)
    dtype = "BF16" if case.get("bf16") else "F32"
    if dtype == "BF16":
        arrays = {n: R.bf16_round(a) for n, a in arrays.items()}
    tensors = dict(arrays)
    if case.get("mtp_copies"):
        for copy, main in R.mtp_copy_names(cfg).items():
            tensors[copy] = arrays[main]
    hf = cfg.to_hf()
    if cfg.experts == 0:
        hf.update(n_routed_experts=0, n_group=1, topk_group=1, num_experts_per_tok=1,
                  n_shared_experts=0)
    with open(os.path.join(hfdir, "config.json"), "w") as f:
        json.dump(hf, f, indent=2)
    R.write_safetensors(os.path.join(hfdir, "model.safetensors"), tensors, dtype=dtype,
                        metadata={"format": "pt"})
    rng = np.random.default_rng(seed + 1000)
    n = STEPS * tc.grad_accum * B * (T + 1)
    tokfile = os.path.join(root, case["name"], "tokens.bin")
    R.write_tokens(tokfile, rng.integers(0, cfg.vocab, n))
    return hfdir, tokfile, arrays


def run_reference(hfdir, tokfile, tc, dtype, routing=None):
    """The reference's version of everything reftool writes, plus the smallest routing margin.
    routing: the engine's expert choices (one array per MoE layer call) for the oracle to follow."""
    if routing is not None:
        with R.forced_routing(routing) as f:
            cfg, res = run_reference(hfdir, tokfile, tc, dtype)
            res["forced"] = dict(f)
        return cfg, res
    cfg, params = R.load_hf_dir(hfdir, dtype)
    get = R.chunk_batches(R.read_tokens(tokfile), B, T)
    out, grads = R.loss_and_grads(cfg, tc, params, get(0))
    res = {
        "logits": out["logits"].detach().double().numpy(),
        "mtp_logits": (np.stack([m.detach().double().numpy() for m in out["mtp_logits"]])
                       if out["mtp_logits"] else None),
        "grads": {n: g.double().numpy() for n, g in grads.items()},
        "initial": {"loss": float(out["loss_main"]), "mtp_loss": float(out["mtp_loss"]),
                    "balance_loss": float(out["balance_loss"]), "total": float(out["total"])},
    }
    tr = R.Trainer(cfg, tc, params)
    A = tc.grad_accum
    res["steps"] = [tr.step([get(s * A + a) for a in range(A)]) for s in range(tc.steps)]
    res["final"] = {n: p.detach().double().numpy() for n, p in params.items()}
    res["margin"] = min(out["margin"], tr.min_margin)
    return cfg, res


def load_tool_outputs(outdir, cfg):
    res = {}
    N, V = B * T, cfg.vocab
    res["logits"] = np.fromfile(os.path.join(outdir, "logits.bin"), dtype="<f4").reshape(N, V)
    if cfg.mtp_depth > 0:
        res["mtp_logits"] = np.fromfile(os.path.join(outdir, "mtp_logits.bin"),
                                        dtype="<f4").reshape(cfg.mtp_depth, N, V)
    else:
        res["mtp_logits"] = None
    res["grads"] = R.read_safetensors(os.path.join(outdir, "grads.safetensors"))[0]
    n_moe = sum(cfg.is_moe_layer(l) for l in range(cfg.layers)) + (cfg.mtp_depth if cfg.experts > 0 else 0)
    r = np.fromfile(os.path.join(outdir, "routing.bin"), dtype="<i4")
    nk = B * T * cfg.topk
    res["routing"] = [r[i * nk:(i + 1) * nk] for i in range(r.size // nk)] if n_moe else []
    with open(os.path.join(outdir, "metrics.json")) as f:
        m = json.load(f)
    res["initial"] = m["initial"]
    res["steps"] = m["steps"]
    res["final"] = R.read_safetensors(os.path.join(outdir, "final.safetensors"))[0]
    return res


def scal_close(a, b, tol):
    return abs(a - b) <= tol * max(1.0, abs(b))


def compare(label, cfg, tc, got, ref, init_arrays):
    """got: the side under test (engine or fp32 reference); ref: the float64 oracle."""
    p = label + "/"
    t = TOL[tc.precision]
    TOL_LOGITS, TOL_GRAD, TOL_LOSS, TOL_LR = t["logits"], t["grad"], t["loss"], t["lr"]
    TOL_GNORM, TOL_FINAL, TOL_BIAS_ABS = t["gnorm"], t["final"], t["bias_abs"]
    # logits
    r = rel(got["logits"], ref["logits"])
    check(p + "logits", r < TOL_LOGITS, "rel err %.3g (tol %g)" % (r, TOL_LOGITS))
    if cfg.mtp_depth > 0:
        for k in range(cfg.mtp_depth):
            r = rel(got["mtp_logits"][k], ref["mtp_logits"][k])
            check(p + "mtp_logits[%d]" % (k + 1), r < TOL_LOGITS, "rel err %.3g" % r)
    # initial losses
    for key in ("loss", "mtp_loss", "balance_loss", "total"):
        a, b = float(got["initial"][key]), ref["initial"][key]
        check(p + "initial." + key, scal_close(a, b, TOL_LOSS), "got %.9g ref %.9g" % (a, b))
    # gradients
    want = set(R.trainable_names(cfg))
    have = set(got["grads"])
    check(p + "grad names", have == want,
          "" if have == want else "missing %s extra %s" % (sorted(want - have)[:6], sorted(have - want)[:6]))
    worst, bad = (0.0, ""), []
    for n in sorted(want & have):
        r = rel(got["grads"][n], ref["grads"][n])
        if r > worst[0]:
            worst = (r, n)
        if not r < TOL_GRAD:
            bad.append("%s rel %.3g (|ref| %.3g |got| %.3g)" % (
                n, r, np.linalg.norm(ref["grads"][n]), np.linalg.norm(got["grads"][n])))
    if VERBOSE:
        print("   worst grad rel err %.3g at %s" % worst)
    check(p + "grads (%d tensors)" % len(want & have), not bad,
          ("worst %.3g at %s" % worst) if not bad else "; ".join(bad[:8]) + (" ... %d in all" % len(bad) if len(bad) > 8 else ""))
    # training metrics
    gs, rs = got["steps"], ref["steps"]
    check(p + "step count", len(gs) == len(rs), "got %d ref %d" % (len(gs), len(rs)))
    for key, tol, how in (("loss", TOL_LOSS, "abs"), ("mtp_loss", TOL_LOSS, "abs"),
                          ("balance_loss", TOL_LOSS, "abs"), ("lr", TOL_LR, "abs"),
                          ("grad_norm", TOL_GNORM, "rel")):
        bad = []
        worst = 0.0
        for g, r_ in zip(gs, rs):
            a, b = float(g[key]), float(r_[key])
            err = abs(a - b) / (max(1.0, abs(b)) if how == "abs" else max(abs(b), 1e-30))
            worst = max(worst, err)
            if not err <= tol:
                bad.append("step %d got %.10g ref %.10g" % (r_["step"], a, b))
        steps_ok = all(int(g["step"]) == r_["step"] for g, r_ in zip(gs, rs))
        check(p + "steps." + key, not bad and steps_ok,
              ("worst err %.3g (tol %g)" % (worst, tol)) if not bad else "; ".join(bad[:4]))
    # final weights
    specs = R.param_specs(cfg)
    names = {n for n, _, _ in specs}
    fin = got["final"]
    extra = set(fin) - names
    copies = R.mtp_copy_names(cfg)
    missing = names - set(fin)
    check(p + "final names", not missing and extra <= set(copies),
          "missing %s extra %s" % (sorted(missing)[:6], sorted(extra - set(copies))[:6]) if missing or extra - set(copies) else "")
    for c in sorted(extra & set(copies)):  # exported copies must be the main tensors
        check(p + "final copy " + c, np.array_equal(fin[c], fin.get(copies[c])), "copy differs from " + copies[c])
    bad, worst = [], (0.0, "")
    for n, _, kind in specs:
        if n not in fin or kind == "buffer":
            continue
        r = rel(fin[n], ref["final"][n])
        if r > worst[0]:
            worst = (r, n)
        if not r < TOL_FINAL:
            bad.append("%s rel %.3g" % (n, r))
    check(p + "final weights", not bad,
          ("worst %.3g at %s" % worst) if not bad else "; ".join(bad[:8]) + (" ... %d in all" % len(bad) if len(bad) > 8 else ""))
    for n, _, kind in specs:
        if kind != "buffer" or n not in fin:
            continue
        b0 = np.asarray(init_arrays[n], dtype=np.float64)
        rate = tc.bias_update_rate
        mg = np.rint((fin[n].astype(np.float64) - b0) / rate).astype(np.int64)
        mr = np.rint((ref["final"][n] - b0) / rate).astype(np.int64)
        d = float(np.max(np.abs(fin[n].astype(np.float64) - ref["final"][n])))
        check(p + "final " + n.replace("model.layers.", "L").replace(".mlp.gate.e_score_correction_bias", ".bias"),
              np.array_equal(mg, mr) and d <= TOL_BIAS_ABS,
              "moves got %s ref %s, max abs diff %.3g" % (mg.tolist(), mr.tolist(), d))


# ------------------------------------------------------------------------------------------------
# Self-checks of the reference (run with or without the engine).

def finite_difference_check(case, root):
    cfg = model_cfg(case["model"])
    tc = R.TrainCfg(steps=STEPS, **case["train"])
    arrays = R.random_arrays(cfg, case["seed"], std=0.08, emb_std=1.0)
    params = R.to_params(cfg, arrays, torch.float64)
    tok = R.chunk_batches(np.random.default_rng(7).integers(0, cfg.vocab, B * (T + 1)), B, T)(0)
    out, grads = R.loss_and_grads(cfg, tc, params, tok)
    gen = torch.Generator().manual_seed(3)
    h = 1e-5
    bad, worst, skipped = [], (0.0, ""), 0
    for n in R.trainable_names(cfg):
        d = torch.randn(params[n].shape, generator=gen, dtype=torch.float64)
        with torch.no_grad():
            params[n] += h * d
            fp = R.forward(cfg, tc, params, tok)
            params[n] -= 2 * h * d
            fm = R.forward(cfg, tc, params, tok)
            params[n] += h * d
        if any(not torch.equal(fp["loads"][k], fm["loads"][k]) for k in fp["loads"]):
            skipped += 1  # the perturbation flipped a routing choice: not differentiable there
            continue
        fd = (float(fp["total"]) - float(fm["total"])) / (2 * h)
        an = float((grads[n] * d).sum())
        # float64 central differences: truncation ~h^2 ~ 1e-10 relative, roundoff ~1e-16*|L|/h
        # ~ 1e-10 absolute: allow 1e-6 relative plus 1e-8 absolute.
        err = abs(fd - an) / max(abs(an), 1e-2)
        if err > worst[0]:
            worst = (err, n)
        if abs(fd - an) > 1e-6 * abs(an) + 1e-8:
            bad.append("%s fd %.10g autograd %.10g" % (n, fd, an))
    nb = [n for n, _, k in R.param_specs(cfg) if k == "buffer"]
    check("self/%s: autograd vs finite differences (%d tensors, %d skipped)" % (
        case["name"], len(R.trainable_names(cfg)), skipped), not bad and skipped < 3,
        ("worst rel %.3g at %s" % worst) if not bad else "; ".join(bad[:6]))
    check("self/%s: routing bias gets no gradient" % case["name"],
          all(params[n].grad is None and not params[n].requires_grad for n in nb))


def adamw_check(case):
    """The hand-written AdamW step equals torch.optim.AdamW with two parameter groups."""
    cfg = model_cfg(case["model"])
    tc = R.TrainCfg(steps=STEPS, **dict(case["train"], clip=0.0, bias_update_rate=0.0))
    arrays = R.random_arrays(cfg, case["seed"], std=0.08, emb_std=1.0)
    p1 = R.to_params(cfg, arrays, torch.float64)
    p2 = R.to_params(cfg, arrays, torch.float64)
    tok = R.chunk_batches(np.random.default_rng(5).integers(0, cfg.vocab, 3 * B * (T + 1)), B, T)
    tr = R.Trainer(cfg, tc, p1)
    opt = R.torch_adamw_groups(cfg, tc, p2)
    for s in range(3):
        tr.step([tok(s)])
        _, g = R.loss_and_grads(cfg, tc, p2, tok(s))
        for n in R.trainable_names(cfg):
            p2[n].grad = g[n]
        for grp in opt.param_groups:
            grp["lr"] = R.lr_at(tc, s)
        opt.step()
    worst = max(rel(p1[n].detach().numpy(), p2[n].detach().numpy()) for n in R.trainable_names(cfg))
    check("self/%s: hand AdamW == torch.optim.AdamW (3 steps)" % case["name"], worst < 1e-12,
          "worst rel %.3g" % worst)


def schedule_check():
    tc = R.TrainCfg(lr=1.0, min_lr=0.1, warmup=4, steps=14, schedule="cosine")
    vals = [R.lr_at(tc, s) for s in range(15)]
    ok = (vals[0] == 0.25 and vals[3] == 1.0 and vals[4] == 1.0 and abs(vals[9] - 0.55) < 1e-15
          and abs(vals[14] - 0.1) < 1e-15)
    tw = R.TrainCfg(lr=1.0, min_lr=0.0, warmup=2, steps=10, schedule="wsd", decay_frac=0.2)
    w = [R.lr_at(tw, s) for s in range(10)]
    ok = ok and w[:8] == [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0] and w[8] == 0.5 and w[9] == 0.0
    check("self: lr schedules", ok, "cosine %s wsd %s" % (["%.4g" % v for v in vals], w))


def io_check(root):
    a = {"x": np.arange(6, dtype=np.float32).reshape(2, 3) / 7, "y": np.array([1.5, -2.25], np.float32)}
    path = os.path.join(root, "io.safetensors")
    R.write_safetensors(path, a, "F32")
    b, _ = R.read_safetensors(path)
    ok = all(np.array_equal(a[k], b[k]) for k in a)
    R.write_safetensors(path, a, "BF16")
    c, _ = R.read_safetensors(path)
    ok = ok and all(np.array_equal(R.bf16_round(a[k]), c[k]) for k in a)
    ok = ok and float(R.bf16_round(np.float32(1.0 + 2 ** -8))) == 1.0  # tie rounds to even
    ok = ok and float(R.bf16_round(np.float32(1.0 + 3 * 2 ** -8))) == 1.0 + 2 ** -6
    tp = os.path.join(root, "t.bin")
    R.write_tokens(tp, [1, 2, 65535, 0])
    ok = ok and R.read_tokens(tp).tolist() == [1, 2, 65535, 0]
    check("self: safetensors (F32, BF16) and token file round trips", ok)


# ------------------------------------------------------------------------------------------------

def run_tool(tool, name, hfdir, tokfile, case, prec, outdir):
    os.makedirs(outdir, exist_ok=True)
    cmd = [tool, "--hf", hfdir, "--tokens", tokfile, "--batch", str(B), "--seq", str(T),
           "--steps", str(STEPS), "--out", outdir, "--precision", prec]
    for k in ("mtp_weight", "balance_alpha", "balance_scope", "bias_update_rate", "lr",
              "min_lr", "warmup", "schedule", "weight_decay", "clip", "grad_accum",
              "beta1", "beta2", "eps"):
        cmd += ["--" + k, repr(case["train"][k]) if isinstance(case["train"][k], float)
                else str(case["train"][k])]
    t1 = time.time()
    try:
        pr = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=600,
                            env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2")))
        rc, log = pr.returncode, pr.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        rc, log = -1, "timed out"
    return check("%s: reftool ran (%.1fs)" % (name, time.time() - t1), rc == 0,
                 "" if rc == 0 else "rc %d: %s\n  cmd: %s" % (rc, log[-2000:], " ".join(cmd)))


def run_case(case, prec, root, tool):
    """One case in one precision. fp32: an oracle seed whose routing choices are clear of ties,
    the reference in float32 against the oracle (the tolerances are attainable), then the engine
    through reftool. bf16/fp16: rounding noise makes near-ties unavoidable over 10 training steps
    of a random model, so the engine runs first and the oracle follows its expert choices; every
    token where the oracle's own choice differs must be a near-tie (TIE_MARGIN), and few."""
    name = case["name"] if prec == "fp32" else "%s[%s]" % (case["name"], prec)
    tc = R.TrainCfg(steps=STEPS, precision=prec, **case["train"])
    outdir = os.path.join(root, prec, case["name"], "out")
    if prec == "fp32":
        for seed in range(case["seed"], case["seed"] + 50):
            hfdir, tokfile, arrays = make_case(case, os.path.join(root, prec), seed)
            cfg, ref = run_reference(hfdir, tokfile, tc, torch.float64)
            if ref["margin"] >= MIN_MARGIN[prec]:
                break
        check("%s: seed %d, oracle routing margin %.3g >= %g" % (name, seed, ref["margin"], MIN_MARGIN[prec]),
              ref["margin"] >= MIN_MARGIN[prec])
        _, ref32 = run_reference(hfdir, tokfile, tc, torch.float32)
        compare("self/%s/fp32-vs-fp64" % name, cfg, tc, ref32, ref, arrays)
        if tool is None or not run_tool(tool, name, hfdir, tokfile, case, prec, outdir):
            return
        got = load_tool_outputs(outdir, cfg)
    else:
        hfdir, tokfile, arrays = make_case(case, os.path.join(root, prec), case["seed"])
        if tool is None:
            return
        if not run_tool(tool, name, hfdir, tokfile, case, prec, outdir):
            return
        cfg = R.ModelCfg.from_hf(json.load(open(os.path.join(hfdir, "config.json"))))
        got = load_tool_outputs(outdir, cfg)
        _, ref = run_reference(hfdir, tokfile, tc, torch.float64, got["routing"] or None)
        if got["routing"]:
            f = ref["forced"]
            share = f["disagree"] / max(1, f["decisions"])
            check("%s: oracle follows the engine's routing: %d of %d token decisions differ, all "
                  "near-ties (largest oracle margin among them %.3g < %g)" % (
                      name, f["disagree"], f["decisions"], f["worst_margin"], TIE_MARGIN[prec]),
                  f["worst_margin"] < TIE_MARGIN[prec] and share <= MAX_DISAGREE)
        _, ref32 = run_reference(hfdir, tokfile, tc, torch.float32, got["routing"] or None)
        compare("self/%s/fp32-vs-fp64" % name, cfg, tc, ref32, ref, arrays)
    if prec == "fp16":  # the loss scaler must not have skipped any step (the oracle never does)
        skipped = [st["step"] for st in got["steps"] if not st.get("applied", True)]
        check("%s: no fp16 overflow skipped a step" % name, not skipped, "skipped %s" % skipped)
    compare(name, cfg, tc, got, ref, arrays)


def main():
    only = os.environ.get("DSV3_REF_ONLY")
    cases = [c for c in CONFIGS if not only or c["name"] in only.split(",")]
    build = os.environ.get("DSV3_BUILD_DIR", os.path.join(REPO, "build"))
    tool = os.path.join(build, "tests", "reftool")
    have_tool = os.path.isfile(tool) and os.access(tool, os.X_OK)
    root = tempfile.mkdtemp(prefix="dsv3_ref_")
    t0 = time.time()
    try:
        io_check(root)
        schedule_check()
        for case in cases:
            finite_difference_check(case, root)
        if cases:
            adamw_check(cases[0])
        for case in cases:
            for prec in case.get("precisions", ["fp32"]):
                run_case(case, prec, root, tool if have_tool else None)
    finally:
        if os.environ.get("DSV3_REF_KEEP"):
            print("kept scratch directory " + root)
        else:
            shutil.rmtree(root, ignore_errors=True)
    if not have_tool:
        print("SKIP: %s not found (build it: ninja -C %s reftool); only the reference's self-checks ran"
              % (tool, build))
    print("time %.1fs" % (time.time() - t0))
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    if RESULTS["failed"]:
        return 1
    return 0 if have_tool else 77


if __name__ == "__main__":
    sys.exit(main())
