"""Post-training losses against PyTorch (issue 12): SFT and DPO.

The C++ side is tests/tools/posttool (the product's chat rendering, packing, DPO terms and
train/step.h compute_gradients); the PyTorch side is dsv3_ref.py's independent model in float64
plus, written here from the papers, the masked cross-entropy and the DPO / IPO losses. Also
checked independently: the byte-level plain chat template and the packing, rendered here from
docs/post_training.md, must give the tool's exact tokens and masks.

Run with Debian's /usr/bin/python3 (torch 1.13, numpy). Exit 77 (skip) without the tool binary.
Tolerances: the engine computes in fp32, the oracle in float64; 1e-4 relative on gradient
norms and 1e-5 on losses leave room for fp32 accumulation over a few hundred terms only.
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dsv3_ref as R  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RESULTS = {"passed": 0, "failed": 0}

# a small dense model on byte-level ids (no routing, so no near-tie of the router to follow)
MODEL = dict(vocab=256, hidden=32, heads=2, qk_nope=8, qk_rope=4, v_head=8, kv_lora=16, q_lora=16,
             experts=0, moe_inter=16, dense_inter=48, layers=2, dense_layers=2, shared_experts=0,
             topk=1, groups=1, topk_groups=1, router="sigmoid", route_scale=1.0, norm_topk=True,
             mtp_depth=1, rms_eps=1e-6, max_seq=64, rope_theta=10000.0)
T = 48


def check(name, ok, detail=""):
    RESULTS["passed" if ok else "failed"] += 1
    print("%s %s%s" % ("PASS" if ok else "FAIL", name, (": " + detail) if detail else ""), flush=True)
    return ok


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    nb = np.linalg.norm(b)
    return float(np.linalg.norm(a - b) / nb) if nb > 0 else float(np.linalg.norm(a - b))


def make_hf(root, name, seed):
    cfg = R.ModelCfg(**MODEL)
    d = os.path.join(root, name)
    os.makedirs(d, exist_ok=True)
    hf = cfg.to_hf()
    hf.update(n_routed_experts=0, n_group=1, topk_group=1, num_experts_per_tok=1, n_shared_experts=0)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(hf, f)
    R.write_safetensors(os.path.join(d, "model.safetensors"), R.random_arrays(cfg, seed, std=0.1),
                        metadata={"format": "pt"})
    return d


# ---- the plain chat template (docs/post_training.md), byte-level: text and mask per byte
def render(messages):
    ids, mask = [], []

    def put(text, m):
        b = list(text.encode("utf-8"))
        ids.extend(b)
        mask.extend([m] * len(b))
    for msg in messages:
        role = "system" if msg["role"] == "developer" else msg["role"]
        if role == "system":
            put(msg["content"] + "\n\n", 0)
        elif role == "user":
            put("User: " + msg["content"] + "\n\n", 0)
        else:
            put("Assistant:", 0)
            put(" " + msg["content"] + "\n\n", 1)
    return ids, mask


def pack(seqs, T, pad=0):
    rows, weights, row, mask = [], [], [], []

    def flush():
        if not row:
            return
        r = row + [pad] * (T + 1 - len(row))
        m = mask + [0] * (T + 1 - len(mask))
        rows.append(r)
        weights.append([float(x) for x in m[1:]])
        row.clear()
        mask.clear()
    for ids, m in seqs:
        ids, m = ids[:T + 1], m[:T + 1]
        if len(row) + len(ids) > T + 1:
            flush()
        row.extend(ids)
        mask.extend([0] + m[1:])
    flush()
    return np.array(rows, np.int64), np.array(weights, np.float64)


def token_logprobs(cfg, params, tokens):
    tc = R.TrainCfg(mtp_weight=0.0, balance_alpha=0.0)
    out = R.forward(cfg, tc, params, torch.as_tensor(tokens))
    B, T1 = tokens.shape
    logits = out["logits"].reshape(B, T1 - 1, -1)
    y = torch.as_tensor(tokens[:, 1:])
    return torch.log_softmax(logits, -1).gather(-1, y.unsqueeze(-1)).squeeze(-1)


def grads_of(cfg, params, loss):
    for n in R.trainable_names(cfg):
        params[n].grad = None
    loss.backward()
    g = {n: (params[n].grad.detach().numpy() if params[n].grad is not None
             else np.zeros(tuple(params[n].shape))) for n in R.trainable_names(cfg)}
    return g


def run(tool, args):
    p = subprocess.run([tool] + args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
    return p.returncode, p.stdout.decode(errors="replace")


def compare_grads(name, got, want):
    worst = max(rel(got[n], want[n]) for n in want)
    missing = [n for n in want if n not in got]
    check(name + ": every gradient within 1e-4 relative", not missing and worst < 1e-4,
          "worst %.2e%s" % (worst, " missing %s" % missing[:3] if missing else ""))


def sft_case(tool, root, hf):
    convs = [
        {"messages": [{"role": "user", "content": "12 plus 7 is"}, {"role": "assistant", "content": "19."}]},
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                      {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "3+4?"},
                      {"role": "assistant", "content": "7"}]},
        {"messages": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Blue"}]},
        {"messages": [{"role": "developer", "content": "x"}, {"role": "user", "content": "long " * 3},
                      {"role": "assistant", "content": "ok then, fine"}]},
    ]
    path = os.path.join(root, "chat.jsonl")
    with open(path, "w") as f:
        f.write(json.dumps(convs[0]) + "\n")
        f.write("{not json\n")                                                     # malformed
        f.write(json.dumps({"messages": [{"role": "user", "content": "no reply"}]}) + "\n")  # no assistant
        for c in convs[1:]:
            f.write(json.dumps(c) + "\n")
    out = os.path.join(root, "sft_out")
    rc, log = run(tool, ["sft", "--hf", hf, "--data", path, "--seq", str(T), "--batch", "2", "--out", out])
    if not check("sft: posttool ran", rc == 0, log[-1500:]):
        return
    toks = np.fromfile(os.path.join(out, "tokens.bin"), "<i4").reshape(-1, T + 1)
    wts = np.fromfile(os.path.join(out, "weights.bin"), "<f4").reshape(-1, T)
    res = json.load(open(os.path.join(out, "result.json")))
    check("sft: 2 malformed lines counted", res["bad_lines"] == 2, str(res["bad_lines"]))
    rows, weights = pack([render(c["messages"]) for c in convs], T)
    check("sft: tokens equal the reference rendering and packing", np.array_equal(toks, rows[:2]))
    check("sft: masks equal the reference (assistant content + end of turn only)",
          np.array_equal(wts, weights[:2]), "%s vs %s" % (wts.sum(), weights[:2].sum()))
    cfg, params = R.load_hf_dir(hf)
    lp = token_logprobs(cfg, params, rows[:2])
    w = torch.as_tensor(weights[:2])
    loss = -(w * lp).sum() / w.sum()
    check("sft: loss equals the masked cross-entropy", abs(res["loss"] - loss.item()) < 1e-5 * abs(loss.item()),
          "%.8f vs %.8f" % (res["loss"], loss.item()))
    want = grads_of(cfg, params, loss)
    got = R.read_safetensors(os.path.join(out, "grads.safetensors"))[0]
    compare_grads("sft", got, want)


def dpo_loss(pc, pr, rc, rr, beta, ls, kind):
    h = (pc - rc) - (pr - rr)
    if kind == "ipo":
        return (h - 1 / (2 * beta)) ** 2
    return -(1 - ls) * F.logsigmoid(beta * h) - ls * F.logsigmoid(-beta * h)


def dpo_case(tool, root, hf, ref_hf, beta, ls, kind):
    pairs = [
        {"prompt": "5 plus 3 is", "chosen": "8.", "rejected": "9, I think"},
        {"prompt": [{"role": "system", "content": "Math."}, {"role": "user", "content": "2+2"}],
         "chosen": [{"role": "assistant", "content": "4"}], "rejected": "five"},
        {"prompt": "Colour of sky?", "chosen": "Blue.", "rejected": "Green."},
    ]
    path = os.path.join(root, "pairs.jsonl")
    with open(path, "w") as f:
        for p in pairs:
            f.write(json.dumps(p) + "\n")
        f.write(json.dumps({"prompt": "x", "chosen": "y"}) + "\n")  # no rejected: skipped
    name = "dpo %s beta %g ls %g" % (kind, beta, ls)
    out = os.path.join(root, "dpo_" + kind + str(ls))
    rc, log = run(tool, ["dpo", "--hf", hf, "--ref_hf", ref_hf, "--data", path, "--seq", str(T),
                         "--batch", "3", "--out", out, "--beta", repr(beta), "--label_smoothing",
                         repr(ls), "--dpo_loss", kind])
    if not check(name + ": posttool ran", rc == 0, log[-1500:]):
        return
    toks = np.fromfile(os.path.join(out, "tokens.bin"), "<i4").reshape(-1, T + 1)
    wts = np.fromfile(os.path.join(out, "weights.bin"), "<f4").reshape(-1, T)
    res = json.load(open(os.path.join(out, "result.json")))
    rows, masks = [], []
    for p in pairs:
        pm = [{"role": "user", "content": p["prompt"]}] if isinstance(p["prompt"], str) else p["prompt"]
        nprompt = len(render(pm)[0])
        for side in ("chosen", "rejected"):
            r = p[side]
            rm = [{"role": "assistant", "content": r}] if isinstance(r, str) else r
            ids, m = render(pm + rm)
            m = [0] * nprompt + m[nprompt:]
            rows.append(ids + [0] * (T + 1 - len(ids)))
            masks.append([float(x) for x in (m + [0] * (T + 1 - len(m)))[1:]])
    rows, masks = np.array(rows, np.int64), np.array(masks)
    check(name + ": tokens and response masks equal the reference rendering",
          np.array_equal(toks, rows) and np.array_equal(wts, masks))
    cfg, params = R.load_hf_dir(hf)
    _, ref = R.load_hf_dir(ref_hf)
    with torch.no_grad():
        ref_lp = (token_logprobs(cfg, ref, rows) * torch.as_tensor(masks)).sum(-1)
    lp = (token_logprobs(cfg, params, rows) * torch.as_tensor(masks)).sum(-1)
    losses = dpo_loss(lp[0::2], lp[1::2], ref_lp[0::2], ref_lp[1::2], beta, ls, kind)
    loss = losses.mean()
    got_ref = np.array([[p["ref_chosen"], p["ref_rejected"]] for p in res["pairs"]])
    check(name + ": reference log-likelihoods", rel(got_ref.ravel(), ref_lp.numpy()) < 1e-6)
    check(name + ": loss", abs(res["loss"] - loss.item()) < 1e-5 * max(1e-3, abs(loss.item())),
          "%.8f vs %.8f" % (res["loss"], loss.item()))
    rewards = np.array([[p["chosen_reward"], p["rejected_reward"]] for p in res["pairs"]])
    want_r = beta * (lp.detach() - ref_lp).numpy()
    check(name + ": rewards beta (log pi - log ref)", rel(rewards.ravel(), want_r) < 1e-5)
    compare_grads(name, R.read_safetensors(os.path.join(out, "grads.safetensors"))[0],
                  grads_of(cfg, params, loss))


def main():
    build = os.environ.get("DSV3_BUILD_DIR", os.path.join(REPO, "build"))
    tool = os.path.join(build, "tests", "posttool")
    if not os.access(tool, os.X_OK):
        print("SKIP: %s not built (ninja -C %s posttool)" % (tool, build))
        return 77
    root = tempfile.mkdtemp(prefix="dsv3_post_")
    try:
        hf = make_hf(root, "policy", 5)
        ref_hf = make_hf(root, "reference", 6)
        sft_case(tool, root, hf)
        dpo_case(tool, root, hf, ref_hf, 0.1, 0.0, "sigmoid")
        dpo_case(tool, root, hf, ref_hf, 0.5, 0.2, "sigmoid")
        dpo_case(tool, root, hf, ref_hf, 0.1, 0.0, "ipo")
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("%d passed, %d failed" % (RESULTS["passed"], RESULTS["failed"]))
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
