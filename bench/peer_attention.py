#!/usr/bin/python3
"""PyTorch's versions of dense, window and LSH attention (the peer of bench_sparse_attention).

Same shapes as build/bench/bench_sparse_attention (H = 4, d_qk = 48, d_v = 32, fp32, batch 1),
written the way a PyTorch user writes them, forward and autograd backward:
  dense   S = q k^T * scale, causal mask, softmax, P v (torch 1.13 has no fused CPU attention)
  window  Longformer-style blocks: queries in blocks of m = clamp(W, 16, 64) rows against the
          m + W - 1 keys they see (Tensor.unfold views), band mask, softmax, P v
  lsh     Reformer-style: argmax-of-rotation buckets, argsort by (bucket, position), chunks of C
          against their chunk and the previous one plus self, causal mask, softmax, unsort
          (several rounds combined by log-sum-exp as Reformer does; dsv3 uses one softmax over
          the union, the same work)
Prints one JSON line per (T, kernel) like bench_sparse_attention.

  /usr/bin/python3 bench/peer_attention.py --lengths 1024,4096 [--threads 2] [--window 256]
      [--buckets 32] [--chunk 64] [--rounds 1] [--samples 3] [--max_gib 6]
"""
import argparse
import json
import math
import time

import torch
import torch.nn.functional as F


def best_ms(fn, samples):
    fn()
    best = 1e30
    for _ in range(samples):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best * 1e3


def dense(q, k, v, scale):
    T = q.shape[1]
    mask = torch.ones(T, T, dtype=torch.bool).triu(1)
    S = (q @ k.transpose(1, 2)) * scale
    return torch.softmax(S.masked_fill(mask, float("-inf")), -1) @ v


def window_blocked(q, k, v, scale, W):
    H, T, _ = q.shape
    m = min(max(W, 16), 64)
    nb = (T + m - 1) // m
    Tp = nb * m
    qb = F.pad(q, (0, 0, 0, Tp - T)).view(H, nb, m, -1)
    kw = F.pad(k, (0, 0, W - 1, Tp - T)).unfold(1, m + W - 1, m)  # (H, nb, d, m + W - 1)
    vw = F.pad(v, (0, 0, W - 1, Tp - T)).unfold(1, m + W - 1, m)
    r = torch.arange(m).view(m, 1)
    c = torch.arange(m + W - 1).view(1, -1)
    band = (c >= r) & (c <= r + W - 1)                            # key within the query's window
    first = torch.arange(nb).view(nb, 1, 1) * m + c.view(1, 1, -1) - (W - 1) >= 0  # key >= 0
    mask = band.view(1, m, -1) & first                            # (nb, m, m + W - 1)
    S = (qb @ kw) * scale
    P = torch.softmax(S.masked_fill(~mask, float("-inf")), -1)
    return (P @ vw.transpose(-1, -2)).reshape(H, Tp, -1)[:, :T]


def lsh_blocked(q, k, v, scale, R, C):
    H, T, dqk = q.shape
    dv = v.shape[2]
    rounds = R.shape[1]
    nc = (T + C - 1) // C
    Tp = nc * C
    pos = torch.arange(T)
    outs, lses = [], []
    for r in range(rounds):
        with torch.no_grad():
            pq, pk = q @ R[:, r], k @ R[:, r]
            bq = torch.cat([pq, -pq], -1).argmax(-1)
            bk = torch.cat([pk, -pk], -1).argmax(-1)
            qi = (bq * T + pos).argsort(-1)  # (H, T): sorted by (bucket, position)
            ki = (bk * T + pos).argsort(-1)
        def gather(x, idx):
            return F.pad(x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[2])), (0, 0, 0, Tp - T))
        qs = gather(q, qi).view(H, nc, C, dqk)
        ks = gather(k, ki).view(H, nc, C, dqk)
        vs = gather(v, ki).view(H, nc, C, dv)
        qpos = F.pad(qi, (0, Tp - T), value=-1).view(H, nc, C)
        kpos = F.pad(ki, (0, Tp - T), value=T).view(H, nc, C)
        prev_kpos = torch.roll(kpos, 1, 1)
        prev_kpos[:, 0] = T                                         # chunk 0 has no previous chunk
        kk = torch.cat([torch.roll(ks, 1, 1), ks], 2)               # (H, nc, 2C, dqk)
        vv = torch.cat([torch.roll(vs, 1, 1), vs], 2)
        kp = torch.cat([prev_kpos, kpos], 2)                        # (H, nc, 2C)
        S = (qs @ kk.transpose(-1, -2)) * scale
        S = S.masked_fill(kp.unsqueeze(2) >= qpos.unsqueeze(3), float("-inf"))
        self_s = (gather(q * k, qi).sum(-1) * scale).view(H, nc, C, 1)
        S = torch.cat([S, self_s], -1)
        lse = torch.logsumexp(S, -1, keepdim=True)
        P = torch.exp(S - lse)
        o = P[..., :-1] @ vv + P[..., -1:] * gather(v, qi).view(H, nc, C, dv)
        unsort = qi.argsort(-1)
        outs.append(o.reshape(H, Tp, dv)[:, :T].gather(1, unsort.unsqueeze(-1).expand(-1, -1, dv)))
        lses.append(lse.reshape(H, Tp, 1)[:, :T].gather(1, unsort.unsqueeze(-1)))
    if rounds == 1:
        return outs[0]
    L = torch.stack(lses)                                           # Reformer: combine rounds
    w = torch.exp(L - torch.logsumexp(L, 0, keepdim=True))
    return (torch.stack(outs) * w).sum(0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", default="1024,4096")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--window", type=int, default=256)
    ap.add_argument("--buckets", type=int, default=32)
    ap.add_argument("--chunk", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--samples", type=int, default=3)
    ap.add_argument("--max_gib", type=float, default=6.0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    H, dqk, dv = 4, 48, 32
    scale = 1.0 / math.sqrt(dqk)
    R = torch.randn(H, args.rounds, dqk, args.buckets // 2, generator=torch.Generator().manual_seed(1))
    for T in [int(x) for x in args.lengths.split(",")]:
        g = torch.Generator().manual_seed(T)
        q, k = (torch.randn(H, T, dqk, generator=g).requires_grad_() for _ in range(2))
        v = torch.randn(H, T, dv, generator=g).requires_grad_()
        dout = torch.randn(H, T, dv, generator=g)
        kernels = {"dense": lambda: dense(q, k, v, scale),
                   "window": lambda: window_blocked(q, k, v, scale, args.window),
                   "lsh": lambda: lsh_blocked(q, k, v, scale, R, args.chunk)}
        for name, f in kernels.items():
            row = {"T": T, "kernel": name, "threads": args.threads, "torch": torch.__version__}
            if name == "dense" and 3 * H * T * T * 4 / 2 ** 30 > args.max_gib:  # S, P, dP at least
                row["skipped"] = "needs more than --max_gib"
            else:
                holder = {}

                def fwd():
                    holder["out"] = f()

                def bwd():
                    out = f()
                    t0 = time.perf_counter()
                    out.backward(dout)
                    holder["bwd"] = time.perf_counter() - t0
                    q.grad = k.grad = v.grad = None

                row["forward_ms"] = best_ms(fwd, args.samples)
                holder.clear()
                bwd()
                b = 1e30
                for _ in range(args.samples):
                    bwd()
                    b = min(b, holder["bwd"])
                row["backward_ms"] = b * 1e3
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
