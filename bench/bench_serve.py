#!/usr/bin/env python3
"""Bounded load test of `dsv3 serve` on loopback (I2): a fixed number of completion requests at
concurrency 1, 8 and 32; throughput (generated tokens/s, requests/s) and p50/p99 latency per
level, and the same load against a server that runs one sequence at a time (--max_running 1),
which is what continuous batching has to beat.

    python3 bench/bench_serve.py --model RUN_OR_CKPT [--requests 64] [--max-tokens 64]
    python3 bench/bench_serve.py --model M --concurrency 1,8,32 --json

Standard library only (urllib, threads), any python3. Loopback only: the server binds 127.0.0.1.
"""
import argparse
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start(dsv3, model, args):
    p = subprocess.Popen([dsv3, "serve", "--model", model, "--port", "0", *args],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    log = []
    while True:
        line = p.stderr.readline()
        if not line:
            raise RuntimeError("dsv3 serve did not start:\n" + "".join(log))
        log.append(line)
        m = re.search(r"listening on http://[^:]+:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in p.stderr], daemon=True).start()
            return p, int(m.group(1))


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(60)
    except subprocess.TimeoutExpired:
        p.kill()


def one(port, prompt, max_tokens):
    body = json.dumps({"model": "dsv3", "prompt": prompt, "max_tokens": max_tokens,
                       "temperature": 0}).encode()
    req = urllib.request.Request("http://127.0.0.1:%d/v1/completions" % port, body,
                                 {"Content-Type": "application/json"})
    t0 = time.perf_counter()
    with urllib.request.urlopen(req, timeout=600) as r:
        out = json.loads(r.read())
    return time.perf_counter() - t0, out["usage"]["completion_tokens"]


def load(port, n, concurrency, max_tokens, prompt_len, seed=0):
    rnd = random.Random(seed)
    prompts = ["".join(rnd.choice("abcdefghij klmnopqrstuvwxyz") for _ in range(prompt_len)) for _ in range(n)]
    lat, toks, errors = [], [], []
    lock = threading.Lock()
    it = iter(range(n))

    def worker():
        while True:
            with lock:
                i = next(it, None)
            if i is None:
                return
            try:
                dt, k = one(port, prompts[i], max_tokens)
                with lock:
                    lat.append(dt)
                    toks.append(k)
            except Exception as e:  # noqa: BLE001 -- reported, never hidden
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    ts = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()

    def pct(q):
        return lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] if lat else float("nan")

    return {"concurrency": concurrency, "requests": n, "ok": len(lat), "errors": len(errors),
            "wall_s": wall, "tokens_per_s": sum(toks) / wall, "requests_per_s": len(lat) / wall,
            "p50_s": pct(0.5), "p99_s": pct(0.99), "first_error": errors[0] if errors else None}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--prompt-len", type=int, default=32)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of the server")
    ap.add_argument("--no-baseline", action="store_true", help="skip the one-at-a-time server")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(a.threads)
    levels = [int(x) for x in a.concurrency.split(",")]
    common = ["--precision", a.precision, "--max_queue", str(max(levels) + 8), "--context", "1024",
              "--kv_cache_mb", "256"]
    rows = []
    p, port = start(a.dsv3, a.model, ["--max_running", str(max(levels)), "--max_batch_tokens", "512", *common])
    try:
        load(port, 4, 2, 8, a.prompt_len)  # warm-up
        for c in levels:
            r = load(port, a.requests, c, a.max_tokens, a.prompt_len)
            r["server"] = "continuous batching (max_running %d)" % max(levels)
            rows.append(r)
    finally:
        stop(p)
    if not a.no_baseline:
        c = max(x for x in levels if x > 1) if any(x > 1 for x in levels) else levels[-1]
        p, port = start(a.dsv3, a.model, ["--max_running", "1", *common])
        try:
            r = load(port, a.requests, c, a.max_tokens, a.prompt_len)
            r["server"] = "one at a time (max_running 1)"
            rows.append(r)
        finally:
            stop(p)
    print("%-40s %5s %9s %9s %8s %8s %6s" % ("server", "conc", "tok/s", "req/s", "p50 s", "p99 s", "errors"),
          file=sys.stderr)
    for r in rows:
        print("%-40s %5d %9.1f %9.2f %8.3f %8.3f %6d" % (r["server"], r["concurrency"], r["tokens_per_s"],
                                                        r["requests_per_s"], r["p50_s"], r["p99_s"], r["errors"]),
              file=sys.stderr)
    if a.json:
        print(json.dumps({"requests": a.requests, "max_tokens": a.max_tokens, "threads": a.threads,
                          "rows": rows}))


if __name__ == "__main__":
    main()
