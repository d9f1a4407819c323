#!/usr/bin/env python3
"""lm-evaluation-harness-style multiple-choice scoring through transformers: the peer of
bench/bench_evaluate.py.

Runs in the peer venv (bench/setup_peer_venv.sh: torch 2.x + transformers). Loads dsv3's HF
export as DeepseekV3ForCausalLM (fp32) and scores the items of a `dsv3 evaluate --samples` file
(the same contexts and choices dsv3 scored) the way the harness's HFLM does: one request
(context, " " + choice) per choice, byte-level ids (the model has no tokenizer), requests sorted
longest first, batches of --batch right-padded rows, log_softmax of the logits, the continuation's
log-probabilities gathered and summed; acc = argmax, acc_norm = argmax of ll / len(choice).
Prints one JSON line: items/s of the scoring (model load excluded), acc, acc_norm, and the
largest |ll - dsv3's ll| (a cross-check of the two implementations).
"""
import argparse
import json
import time

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF directory (dsv3 export --format hf)")
    ap.add_argument("--samples", required=True, help="dsv3 evaluate --samples output")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=torch.float32)
    model.eval()
    max_len = model.config.max_position_embeddings
    items = [json.loads(l) for l in open(a.samples, encoding="utf-8") if l.strip()]
    reqs = []  # (item, choice, context ids, continuation ids)
    for i, it in enumerate(items):
        ctx = it["context"]
        for k, ch in enumerate(it["choices"]):
            cont = " " + ch
            n = len(ctx) - len(ctx.rstrip())  # the harness's _encode_pair
            c, q = (ctx[:-n], ctx[-n:] + cont) if n else (ctx, cont)
            whole = list((c + q).encode("utf-8"))
            ce = list(c.encode("utf-8"))
            reqs.append((i, k, ce, whole[len(ce):]))
    order = sorted(range(len(reqs)), key=lambda r: -(len(reqs[r][2]) + len(reqs[r][3])))
    ll = [0.0] * len(reqs)
    with torch.inference_mode():
        model(torch.zeros((1, 8), dtype=torch.long))  # warm-up
        t0 = time.perf_counter()
        for b in range(0, len(order), a.batch):
            rows = [reqs[r] for r in order[b:b + a.batch]]
            toks = [(r[2] + r[3])[-(max_len + 1):][:-1] for r in rows]
            T = max(len(t) for t in toks)
            inp = torch.zeros((len(rows), T), dtype=torch.long)
            for j, t in enumerate(toks):
                inp[j, :len(t)] = torch.tensor(t)
            logp = F.log_softmax(model(inp).logits.float(), dim=-1)
            for j, r in enumerate(rows):
                cont, L = r[3], len(toks[j])
                idx = torch.arange(L - len(cont), L)
                ll[order[b + j]] = float(logp[j, idx, torch.tensor(cont)].sum())
        dt = time.perf_counter() - t0
    acc = acc_norm = 0
    worst = 0.0
    at = 0
    for it in items:
        k = len(it["choices"])
        lls = ll[at:at + k]
        at += k
        worst = max(worst, max(abs(x - y) for x, y in zip(lls, it["loglik"])))
        pred = max(range(k), key=lambda j: (lls[j], -j))
        pred_norm = max(range(k), key=lambda j: (lls[j] / len(it["choices"][j]), -j))
        acc += pred == it["gold"]
        acc_norm += pred_norm == it["gold"]
    print(json.dumps({"peer": "transformers (harness-style loglikelihood)", "batch": a.batch,
                      "threads": a.threads, "items": len(items), "requests": len(reqs), "seconds": dt,
                      "items_per_second": len(items) / dt, "acc": acc / len(items),
                      "acc_norm": acc_norm / len(items), "max_abs_ll_diff_vs_dsv3": worst,
                      "torch": torch.__version__, "transformers": __import__("transformers").__version__}))


if __name__ == "__main__":
    main()
