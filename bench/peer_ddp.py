"""The data-parallel peer of bench_dist.py: the same PyTorch DeepseekV3 as bench/peer_deepseek.py
(its modules, imported), trained with torch.nn.parallel.DistributedDataParallel over gloo (the
CPU backend; 25 MiB buckets overlapped with backward, as dsv3's), one process per rank.

  python bench/peer_ddp.py --world 2 --threads 1 --preset tiny --batch 8 --seq 256
spawns the ranks itself (torch.multiprocessing, a free localhost port) and prints one JSON line
from rank 0: step_s, tokens_per_s (all ranks), loss, torch version. --world 1 runs without DDP.
The global batch (--batch rows) is split evenly over the ranks. Works with Debian's torch 1.13
(--attn eager, the default here: SDPA needs torch 2) and with the peer venv's torch 2.x.
find_unused_parameters is on because an expert that receives no token in a step has no gradient;
each rank updates its routing biases from its own loads (DDP syncs gradients, not buffers).
"""
import argparse
import json
import os
import socket
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peer_deepseek as pd  # noqa: E402


def worker(rank, args, port, out):
    import numpy as np
    import torch
    import torch.distributed as dist
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    if args.world > 1:
        os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
        dist.init_process_group("gloo", rank=rank, world_size=args.world)
    cfg = pd.DeepseekV3Config(pd.dsv3_info(args.dsv3, args.preset, args.batch, args.seq)["config"])
    model = pd.build_model_modules()(cfg, attn_impl=args.attn)
    model.train()
    gates = model.moe_gates()
    fwd = model
    if args.world > 1:
        fwd = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=25,
                                                        find_unused_parameters=True)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8)
    rows = args.batch // args.world
    rng = np.random.default_rng(1)
    tokens = torch.tensor(rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1)),
                          dtype=torch.long)[rank * rows:(rank + 1) * rows]

    def step():
        total, loss_main, loads = fwd(tokens)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for g, ld in zip(gates, loads):
                ld = ld.float()
                g.e_score_correction_bias.add_(cfg.bias_update_rate * torch.sign(ld.mean() - ld))
        return float(loss_main.detach())

    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        if args.world > 1:
            dist.barrier()
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    times.sort()
    dt = times[len(times) // 2]
    if rank == 0:
        with open(out, "w") as f:
            json.dump({"step_s": dt, "tokens_per_s": args.batch * args.seq / dt, "loss": loss,
                       "torch": torch.__version__, "world": args.world, "threads": args.threads,
                       "attn": args.attn}, f)
    if args.world > 1:
        dist.destroy_process_group()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--attn", default="eager", choices=["eager", "sdpa", "sdpa_pad"])
    ap.add_argument("--dsv3", default=os.path.join(pd.REPO, "build", "dsv3"))
    args = ap.parse_args()
    import tempfile
    import torch.multiprocessing as mp
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        if args.world == 1:
            worker(0, args, port, out)
        else:
            mp.spawn(worker, args=(args, port, out), nprocs=args.world, join=True)
        print(open(out).read(), flush=True)


if __name__ == "__main__":
    main()
