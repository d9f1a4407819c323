#!/usr/bin/env python3
"""Optimizers (T3) against PyTorch implementations over 5 steps on the same weights and gradients.

tests/tools/opttool runs the product's optimizer (optim/adamw.h) on the `debug` model's parameter
table: 5 updates with fixed gradients, varying learning rates and one clipped step. Here the same
updates run in PyTorch (Debian's torch 1.13, float32):
- AdamW: torch.optim.AdamW, one param group per tensor (weight decay on 2-D weights only);
- per-group learning rates and depth decay: the same AdamW with each group's lr multiplied;
- LAMB: written out from You et al. (2020) (torch has none), trust ratio on 2-D weights;
- Muon: Keller Jordan's reference (momentum, Nesterov, Newton-Schulz 5 with (3.4445, -4.7750,
  2.0315)) with Moonlight's 0.2 * sqrt(max(A, B)) scale, in float32, AdamW for the embedding,
  head, norms and 1-D tensors;
- gradient noise: the product's counter-based normal generator re-implemented in numpy (uint64
  splitmix64 + Box-Muller), so the noise is shared exactly, and its variance eta / (1+t)^gamma.
The weights after every step must agree to float32 rounding: the change of the weights to
relative 2e-6 (Muon 2e-5: its GEMMs sum in a different order and Newton-Schulz iterates five
times on them), or to 2 float32 ulps of the weights per step where that is larger (LAMB's
updates are ~1% of the weights, so the weights' own rounding dominates).

Run by ctest under /usr/bin/python3 (torch).
"""
import json
import math
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
BUILD = os.environ.get("DSV3_BUILD_DIR", os.path.join(REPO, "build"))
TOOL = os.path.join(BUILD, "tests", "opttool")

torch.set_num_threads(1)
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok    " + what)
    else:
        failed += 1
        print("FAIL  " + what)


def splitmix_np(x):
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def noise_normal(seed, t, idx):
    """ops/optimizer.cpp noise_normal for element indices idx (uint64 array)."""
    with np.errstate(over="ignore"):
        base = splitmix_np(np.uint64(seed) ^ (np.uint64(t) * np.uint64(0xD1B54A32D192ED03)))
        key = splitmix_np(base ^ idx)
        h1 = splitmix_np(key)
        h2 = splitmix_np(key ^ np.uint64(0x5851F42D4C957F2D))
    u1 = ((h1 >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0 ** -53
    u2 = (h2 >> np.uint64(11)).astype(np.float64) * 2.0 ** -53
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(6.283185307179586 * u2)


def run_tool(out, settings):
    p = subprocess.run([TOOL, out, json.dumps(settings)], capture_output=True, text=True)
    if p.returncode != 0:
        print(p.stdout + p.stderr)
        sys.exit(1)
    table = json.load(open(os.path.join(out, "table.json")))
    steps = json.load(open(os.path.join(out, "steps.json")))
    ld = lambda n: np.fromfile(os.path.join(out, n), dtype=np.float32)
    return table, steps, ld


def newton_schulz5(G, steps=5, eps=1e-7):
    a, b, c = (3.4445, -4.7750, 2.0315)
    X = G.clone()
    X = X / (X.norm() + eps)
    tall = G.size(0) > G.size(1)
    if tall:
        X = X.T
    for _ in range(steps):
        A = X @ X.T
        B = b * A + c * A @ A
        X = a * X + B @ X
    if tall:
        X = X.T
    return X


def reference(kind, table, steps, ld, settings):
    """Runs the 5 updates in torch; returns the flat float32 weights after each step."""
    flat = torch.tensor(ld("init.bin"))
    params = []  # (info, tensor)
    for t in table:
        if not t["trainable"]:
            continue
        x = flat[t["offset"]:t["offset"] + t["numel"]].clone().reshape(t["shape"]).requires_grad_(True)
        params.append((t, x))
    wd = settings.get("weight_decay", 0.1)
    b1, b2 = settings.get("beta1", 0.9), settings.get("beta2", 0.95)
    eps = settings.get("eps", 1e-8)
    noise_eta = settings.get("grad_noise", 0.0)
    muon_mask = {id(x): (kind == "muon" and len(t["shape"]) == 2 and t["decay"] and
                         t["name"] not in ("model.embed_tokens.weight", "lm_head.weight"))
                 for t, x in params}
    adam_params = [(t, x) for t, x in params if not muon_mask[id(x)]]
    muon_params = [(t, x) for t, x in params if muon_mask[id(x)]]
    groups = [{"params": [x], "lr": 0.0, "weight_decay": wd if t["decay"] else 0.0, "mult": t["lr_mult"]}
              for t, x in adam_params]
    adam = torch.optim.AdamW(groups, betas=(b1, b2), eps=eps) if kind in ("adamw", "muon") else None
    state = {id(x): {"m": torch.zeros_like(x), "v": torch.zeros_like(x)} for t, x in params}
    mom = settings.get("muon_momentum", 0.95)
    out = []
    for s, st in enumerate(steps["steps"], start=1):
        g_all = torch.tensor(ld("grads_%d.bin" % s))
        lr, gs = st["lr"], st["grad_scale"]
        # the gradient as the product reads it: g * scale (+ noise), float32
        for t, x in params:
            g = g_all[t["offset"]:t["offset"] + t["numel"]].reshape(t["shape"]) * torch.tensor(gs, dtype=torch.float32)
            if noise_eta > 0:
                idx = np.arange(t["offset"], t["offset"] + t["numel"], dtype=np.uint64)
                z = noise_normal(steps["noise_seed"], s, idx)
                g = g + torch.tensor((st["noise_std"] * z).astype(np.float32)).reshape(t["shape"])
            x.grad = g.clone()
        with torch.no_grad():
            if adam is not None:
                for grp in adam.param_groups:
                    grp["lr"] = lr * grp["mult"]
                adam.step()
            if kind == "lamb":
                bc1, bc2 = 1 - b1 ** s, 1 - b2 ** s
                for t, x in params:
                    m, v, g = state[id(x)]["m"], state[id(x)]["v"], x.grad
                    m.mul_(b1).add_(g, alpha=1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    r = (m / bc1) / ((v / bc2).sqrt() + eps)
                    if t["decay"]:
                        r = r + wd * x
                    trust = 1.0
                    if t["decay"]:
                        pn, rn = x.double().norm().item(), r.double().norm().item()
                        trust = pn / rn if pn > 0 and rn > 0 else 1.0
                    x.sub_(r, alpha=lr * t["lr_mult"] * trust)
            if kind == "muon":
                for t, x in muon_params:
                    buf, g = state[id(x)]["m"], x.grad
                    buf.mul_(mom).add_(g)
                    u = g.add(buf, alpha=mom)
                    o = newton_schulz5(u)
                    glr = lr * t["lr_mult"]
                    x.mul_(1 - glr * wd)
                    x.add_(o, alpha=-glr * 0.2 * math.sqrt(max(x.shape[0], x.shape[1])))
        w = flat.clone()
        for t, x in params:
            w[t["offset"]:t["offset"] + t["numel"]] = x.detach().reshape(-1)
        out.append(w.numpy())
    return out


def rel(a, b):
    return float(np.linalg.norm(a.astype(np.float64) - b) / max(np.linalg.norm(b.astype(np.float64)), 1e-30))


CASES = [
    ("adamw", {"optimizer": "adamw"}, 2e-6),
    ("adamw, per-group lr + depth decay", {"optimizer": "adamw", "lr_groups": "embed=0.5,attn=1.5,experts=0.8,head=0.25,norm=2",
                                           "lr_depth_decay": 0.7}, 2e-6),
    ("adamw + annealed gradient noise", {"optimizer": "adamw", "grad_noise": 0.01, "grad_noise_gamma": 0.55}, 2e-6),
    ("lamb", {"optimizer": "lamb"}, 2e-6),
    ("lamb, per-group lr", {"optimizer": "lamb", "lr_groups": "embed=0.5,router=3"}, 2e-6),
    ("muon", {"optimizer": "muon"}, 2e-5),
    ("muon, per-group lr + noise", {"optimizer": "muon", "lr_groups": "experts=0.5,head=2", "grad_noise": 0.01}, 2e-5),
]


def main():
    if not os.path.exists(TOOL):
        print("FAIL: %s is missing (build the opttool target)" % TOOL)
        sys.exit(1)
    tmp = tempfile.mkdtemp(prefix="dsv3_opt_")
    for name, settings, tol in CASES:
        out = os.path.join(tmp, name.replace(" ", "_").replace(",", "").replace("+", "p"))
        table, steps, ld = run_tool(out, settings)
        ref = reference(settings["optimizer"], table, steps, ld, settings)
        init = ld("init.bin")
        worst, allowed = 0.0, tol
        for s in range(1, 6):
            got = ld("params_%d.bin" % s)
            # the error is measured on the change of the weights (what the steps did); each side
            # rounds the weights to float32 after every step, so where the change is small against
            # the weights (LAMB: ~1%) two float32 ulps of the weights (2^-24 |w| each) per step bound it
            upd = ref[s - 1] - init
            allowed = max(tol, 2 * 2.0 ** -24 * s * np.linalg.norm(init) / np.linalg.norm(upd))
            e = rel(got - init, upd)
            worst = max(worst, e / allowed * tol)
        check(worst < tol, "%s: weights over 5 steps, worst relative error of the update %.2e of the "
              "allowed (tol %.0e, or 2 ulp of the weights per step: %.1e at step 5)" % (name, worst / tol, tol, allowed))
        moved = rel(ld("params_5.bin"), init)
        check(moved > 1e-4, "%s: the weights moved (%.2e)" % (name, moved))
    # the noise really is there and has the planned variance
    table, steps, ld = run_tool(os.path.join(tmp, "noise_stats"), {"optimizer": "adamw", "grad_noise": 0.3, "grad_noise_gamma": 0.55})
    stds = [st["noise_std"] for st in steps["steps"]]
    check(all(abs(sd - math.sqrt(0.3 / (1 + t) ** 0.55)) < 1e-12 for t, sd in enumerate(stds)),
          "noise std follows eta/(1+t)^gamma: %s" % [round(x, 5) for x in stds])
    z = noise_normal(1234, 1, np.arange(200000, dtype=np.uint64))
    check(abs(z.mean()) < 0.01 and abs(z.std() - 1) < 0.01, "the generator is standard normal (mean %.4f, std %.4f)" % (z.mean(), z.std()))
    print(f"{passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
