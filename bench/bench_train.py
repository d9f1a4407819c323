#!/usr/bin/python3
"""Training throughput, side by side in one run: `dsv3 bench` and the same model in PyTorch
eager (tests/python/dsv3_ref.py in float32: the independent reference, a plain eager MoE with a
loop over experts as Hugging Face's DeepseekV3 writes it), both on 2 threads, batch B x T of
random tokens, AdamW + global-norm clipping + routing-bias update per step.

Reports tokens/s, MFU (training FLOPs/token from `dsv3 info`, against the fp32 GEMM peak that
`dsv3 bench` measures on this machine), peak memory (max RSS of each side's own process), and
the ratios. Usage:
  /usr/bin/python3 bench/bench_train.py [--preset tiny] [--dsv3 build/dsv3] [--threads 2]
"""
import argparse
import json
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def torch_worker(args):
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
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    dt = (time.perf_counter() - t0) / args.steps
    print(json.dumps({"step_s": dt, "tokens_per_s": args.batch * args.seq / dt, "loss": loss,
                      "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "torch": torch.__version__}))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--torch-worker", action="store_true")
    ap.add_argument("--config")
    args = ap.parse_args()
    if args.torch_worker:
        return torch_worker(args)

    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    common = ["--preset", args.preset, "--batch", str(args.batch), "--seq_len", str(args.seq)]
    info = json.loads(subprocess.check_output([args.dsv3, "info", "--json"] + common, env=env))
    flops = info["train_flops_per_token"]
    ours = json.loads(subprocess.check_output(
        [args.dsv3, "bench", "--json", "--warmup_steps", "2", "--timed_steps", "5"] + common,
        env=env).decode().strip().splitlines()[-1])
    peak = ours["peak_gflops"]
    conf = {k: v for k, v in info["config"].items()}
    ref = json.loads(subprocess.check_output(
        [sys.executable, __file__, "--torch-worker", "--config", json.dumps(conf),
         "--threads", str(args.threads), "--batch", str(args.batch), "--seq", str(args.seq),
         "--warmup", str(args.warmup), "--steps", str(args.steps)], env=env)
        .decode().strip().splitlines()[-1])

    def mfu(tps):
        return tps * flops / (peak * 1e9)

    print("config: %s, batch %d x %d, %d threads, train FLOPs/token %.2fM "
          "(6 x GEMM params incl. MTP + causal attention), fp32 GEMM peak %.1f GFLOP/s (measured)"
          % (args.preset, args.batch, args.seq, args.threads, flops / 1e6, peak))
    print("%-22s %12s %10s %8s %12s" % ("", "tokens/s", "s/step", "MFU", "peak MiB"))
    print("%-22s %12.0f %10.3f %7.1f%% %12.0f" % ("dsv3", ours["tokens_per_s"], ours["step_s"],
          100 * mfu(ours["tokens_per_s"]), ours["peak_rss_bytes"] / 2**20))
    print("%-22s %12.0f %10.3f %7.1f%% %12.0f" % ("PyTorch %s eager" % ref["torch"],
          ref["tokens_per_s"], ref["step_s"], 100 * mfu(ref["tokens_per_s"]),
          ref["peak_rss_bytes"] / 2**20))
    speed = ours["tokens_per_s"] / ref["tokens_per_s"]
    mem = ours["peak_rss_bytes"] / ref["peak_rss_bytes"]
    print("ratio: %.2fx tokens/s, %.2fx peak memory (dsv3 / PyTorch)" % (speed, mem))
    print("| %s | %d x %d | %.0f | %.0f | %.2fx | %.1f%% | %.1f | %.0f / %.0f MiB | %s |" % (
        args.preset, args.batch, args.seq, ours["tokens_per_s"], ref["tokens_per_s"], speed,
        100 * mfu(ours["tokens_per_s"]), peak, ours["peak_rss_bytes"] / 2**20,
        ref["peak_rss_bytes"] / 2**20, time.strftime("%Y-%m-%d")))


if __name__ == "__main__":
    main()
