#!/usr/bin/env python3
"""Inference benchmark (I1, I2): dsv3's decode engine against Hugging Face transformers
`generate` on the same exported model, and against itself without the KV cache.

For each preset (a model trained for one step, exported with `dsv3 export --format hf`):
  - prefill tokens/s (batch 1, P prompt tokens) and decode tokens/s at batch 1 and 16 (N greedy
    tokens), dsv3 cached (build/bench/bench_decode), dsv3 recompute (the training forward over the
    whole context per token), transformers `generate` (bench/peer_hf_generate.py in .venv-peer);
  - KV-cache bytes per token: dsv3's latent cache vs a plain multi-head cache of the same model;
  - optionally the server load test (bench/bench_serve.py) at concurrency 1/8/32;
  - llama.cpp on the same weights as GGUF: a hook (--gguf FILE, llama-cpp-python in the peer
    venv) for when `dsv3 export --format gguf` exists.

    bench/setup_peer_venv.sh                          # once: torch + transformers
    python3 bench/bench_infer.py                      # tiny and small, 2 threads
    python3 bench/bench_infer.py --presets tiny --tokens 200 --serve
    python3 bench/bench_infer.py --model RUN_DIR --json

Any python3 runs this script (the peer runs in the venv).
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(cmd, env=None):
    r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    if r.returncode != 0:
        raise RuntimeError("%s failed:\n%s" % (" ".join(cmd), r.stderr[-2000:]))
    return json.loads(r.stdout.strip().splitlines()[-1])


def make_model(dsv3, preset, root):
    run = os.path.join(root, preset)
    if not os.path.exists(os.path.join(run, "hf", "config.json")):
        subprocess.run([dsv3, "train", "--preset", preset, "--steps", "1", "--batch", "1", "--seq_len", "64",
                        "--eval_every", "0", "--sample_tokens", "0", "--peak_gflops", "100", "--out", run],
                       check=True, stdout=subprocess.DEVNULL)
        subprocess.run([dsv3, "export", "--model", run, "--format", "hf", "--out", os.path.join(run, "hf")],
                       check=True, stdout=subprocess.DEVNULL)
    return run


def llama_cpp_row(a, gguf, batch, env):
    """The llama.cpp peer: needs a GGUF export (issue 15, item 6) and llama-cpp-python."""
    code = r"""
import json, sys, time
from llama_cpp import Llama
m = Llama(model_path=sys.argv[1], n_threads=int(sys.argv[2]), n_ctx=1024, verbose=False, logits_all=False)
ids = list(range(1, int(sys.argv[3]) + 1))
t0 = time.perf_counter(); m.eval(ids); tp = time.perf_counter() - t0
n = int(sys.argv[4]); t0 = time.perf_counter()
for _ in range(n):
    tok = m.sample(temp=0.0); m.eval([tok])
td = time.perf_counter() - t0
print(json.dumps({"prefill_tokens_per_s": len(ids) / tp, "decode_tokens_per_s": n / td}))
"""
    return run_json([a.peer_python, "-c", code, gguf, str(a.threads), str(a.prompt), str(a.tokens)], env)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    ap.add_argument("--bench-decode", default=os.path.join(REPO, "build", "bench", "bench_decode"))
    ap.add_argument("--peer-python", default=os.path.join(REPO, ".venv-peer", "bin", "python"))
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--model", help="use this model instead of presets (its hf/ export beside it, if any)")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "dsv3_bench_infer"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--recompute-tokens", type=int, default=32,
                    help="tokens for the recompute rows (each token re-runs the whole context)")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--precision", default="fp32")
    ap.add_argument("--no-peer", action="store_true", help="skip transformers")
    ap.add_argument("--speculative", action="store_true", help="add a dsv3 row with MTP drafts")
    ap.add_argument("--serve", action="store_true", help="also run bench/bench_serve.py (concurrency 1/8/32)")
    ap.add_argument("--gguf", help="GGUF of the same model for the llama.cpp row (needs llama-cpp-python)")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS=str(a.threads))
    batches = [int(b) for b in a.batches.split(",")]
    os.makedirs(a.workdir, exist_ok=True)
    models = [("custom", a.model)] if a.model else [(p, make_model(a.dsv3, p, a.workdir)) for p in a.presets.split(",")]
    results = []
    for name, model in models:
        hf = os.path.join(model if os.path.isdir(model) else os.path.dirname(model), "hf")
        for b in batches:
            common = [a.bench_decode, "--model", model, "--precision", a.precision, "--batch", str(b),
                      "--prompt", str(a.prompt)]
            rows = [("dsv3 cached", run_json(common + ["--tokens", str(a.tokens), "--mode", "cached"], env))]
            if a.speculative:
                rows.append(("dsv3 cached + MTP drafts",
                             run_json(common + ["--tokens", str(a.tokens), "--mode", "cached", "--speculative"], env)))
            rows.append(("dsv3 recompute", run_json(common + ["--tokens", str(a.recompute_tokens), "--mode",
                                                              "recompute"], env)))
            if not a.no_peer:
                if os.path.exists(a.peer_python) and os.path.exists(os.path.join(hf, "config.json")):
                    rows.append(("transformers generate",
                                 run_json([a.peer_python, os.path.join(REPO, "bench", "peer_hf_generate.py"),
                                           "--model", hf, "--batch", str(b), "--prompt", str(a.prompt),
                                           "--tokens", str(a.tokens), "--threads", str(a.threads)], env)))
                else:
                    print("transformers: skipped (run bench/setup_peer_venv.sh; needs %s and %s/config.json)"
                          % (a.peer_python, hf), file=sys.stderr)
            if a.gguf and b == 1:
                try:
                    rows.append(("llama.cpp", llama_cpp_row(a, a.gguf, b, env)))
                except Exception as e:  # noqa: BLE001 -- reported
                    print("llama.cpp: skipped (%s)" % str(e).splitlines()[0], file=sys.stderr)
            for label, r in rows:
                results.append({"model": name, "batch": b, "row": label, **r})
    print("%-8s %5s %-26s %14s %14s %14s" % ("model", "batch", "row", "prefill tok/s", "decode tok/s",
                                               "total tok/s"), file=sys.stderr)
    for r in results:
        print("%-8s %5d %-26s %14.1f %14.1f %14.1f" % (r["model"], r["batch"], r["row"], r["prefill_tokens_per_s"],
                                                       r["decode_tokens_per_s"], r.get("total_tokens_per_s", float("nan"))),
              file=sys.stderr)
    for name, model in models:
        kv = next(r for r in results if r["model"] == name and r["row"] == "dsv3 cached")
        print("%s: KV cache %d bytes/token (latent) vs %d (plain MHA of the same model): %.1fx smaller"
              % (name, kv["kv_bytes_per_token"], kv["mha_kv_bytes_per_token"],
                 kv["mha_kv_bytes_per_token"] / kv["kv_bytes_per_token"]), file=sys.stderr)
        for b in batches:
            mine = next((r for r in results if r["model"] == name and r["batch"] == b and r["row"] == "dsv3 cached"), None)
            peer = next((r for r in results if r["model"] == name and r["batch"] == b and r["row"] == "transformers generate"), None)
            if mine and peer:
                print("%s batch %d: dsv3 / transformers = %.2fx (decode), %.2fx (total, 'generate' as a user times it)"
                      % (name, b, mine["decode_tokens_per_s"] / peer["decode_tokens_per_s"],
                         mine["total_tokens_per_s"] / peer["total_tokens_per_s"]), file=sys.stderr)
    serve = None
    if a.serve:
        serve = run_json([sys.executable, os.path.join(REPO, "bench", "bench_serve.py"), "--model", models[0][1],
                          "--dsv3", a.dsv3, "--threads", str(a.threads), "--json"], env)
    if a.json:
        print(json.dumps({"threads": a.threads, "prompt": a.prompt, "tokens": a.tokens, "rows": results,
                          "serve": serve}))


if __name__ == "__main__":
    main()
