#!/usr/bin/env python3
"""llama.cpp on dsv3's GGUF export (I6): the same weights, the same token ids.

1. `dsv3 export --format gguf` of a trained model in f32, f16, bf16 and q8_0.
2. Loss: llama.cpp (llama-cpp-python, every position's logits) and `dsv3 eval` on the same
   windows of T+1 validation token ids (window i = ids[i*T : i*T + T + 1], the KV cache cleared
   between windows): mean next-token cross-entropy, and their relative difference. llama.cpp runs
   with an f32 KV cache (its default f16 cache adds ~1e-4 relative on its own, reported too).
3. Speed: llama.cpp prefill and greedy decode tokens/s on the same GGUF files (batch 1, the
   same threads). bench_decode.py of the inference work compares dsv3's decoder against these.

Needs .venv-llama (bench/setup_llama_venv.sh: llama-cpp-python from PyPI, built from source);
this script re-runs itself with that interpreter. Data and model as bench_compress.py (byte-level
fiction, tinyshakespeare held out; --model to reuse a trained run).

  bench/setup_llama_venv.sh && python3 bench/bench_gguf.py --model runs/bench_compress/model_tiny_300
  python3 bench/bench_gguf.py --preset debug --steps 60 --windows 4 --decode 64
"""
import argparse
import json
import math
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import bench_compress as BC  # noqa: E402


def reexec_in_venv():
    try:
        import llama_cpp  # noqa: F401
        import numpy  # noqa: F401
        return
    except ImportError:
        pass
    py = os.path.join(REPO, ".venv-llama", "bin", "python")
    if os.environ.get("DSV3_GGUF_REEXEC") or not os.path.exists(py):
        raise SystemExit("llama-cpp-python is missing: run bench/setup_llama_venv.sh first")
    os.environ["DSV3_GGUF_REEXEC"] = "1"
    os.execv(py, [py, os.path.abspath(__file__)] + sys.argv[1:])


def read_tokens(path):
    import numpy as np
    with open(path, "rb") as f:
        head = np.frombuffer(f.read(1024), dtype=np.int32)
        return np.frombuffer(f.read(int(head[2]) * 2), dtype=np.uint16).astype(np.int64)


def llama_loss(path, windows, T, threads, kv_f32):
    import numpy as np
    from llama_cpp import Llama
    kw = dict(model_path=path, n_ctx=T + 8, n_batch=T + 8, n_ubatch=T + 8, n_threads=threads,
              n_threads_batch=threads, logits_all=True, verbose=False)
    if kv_f32:
        kw.update(type_k=0, type_v=0)  # GGML_TYPE_F32
    llm = Llama(**kw)
    losses = []
    for w in windows:
        llm.reset()
        llm.eval([int(t) for t in w[:T]])
        logits = np.array(llm.scores[:T], dtype=np.float64)
        m = logits.max(axis=1, keepdims=True)
        lse = (m[:, 0] + np.log(np.exp(logits - m).sum(axis=1)))
        losses.append(float(np.mean(lse - logits[np.arange(T), w[1:T + 1]])))
    del llm
    return float(np.mean(losses))


def llama_speed(path, prompt, n_decode, threads):
    from llama_cpp import Llama
    llm = Llama(model_path=path, n_ctx=len(prompt) + n_decode + 8, n_batch=len(prompt), n_threads=threads,
                n_threads_batch=threads, verbose=False)
    llm.eval([int(t) for t in prompt[:8]])  # warm-up
    llm.reset()
    t0 = time.time()
    llm.eval([int(t) for t in prompt])
    prefill = len(prompt) / (time.time() - t0)
    t0 = time.time()
    n = 0
    for _ in llm.generate([], temp=0.0, top_k=1, reset=False):
        n += 1
        if n >= n_decode:
            break
    decode = n / (time.time() - t0)
    return prefill, decode


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"))
    p.add_argument("--shared", default=os.path.join(REPO, "..", "shared"))
    p.add_argument("--work", default=os.path.join(REPO, "runs", "bench_gguf"))
    p.add_argument("--model", help="a trained run directory or checkpoint (else one is trained)")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--seq_len", type=int, default=256)
    p.add_argument("--windows", type=int, default=8)
    p.add_argument("--decode", type=int, default=200, help="greedy tokens for the decode speed")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="f32,f16,bf16,q8_0")
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    reexec_in_venv()
    import numpy as np
    import llama_cpp
    os.makedirs(a.work, exist_ok=True)
    train, val = BC.make_data(a.shared, a.work)
    model = a.model
    if not model:
        model = os.path.join(a.work, f"model_{a.preset}_{a.steps}")
        if not os.path.isdir(model) or not any(f.startswith("ckpt_") for f in os.listdir(model)):
            BC.log(f"training {a.preset} for {a.steps} steps -> {model}")
            BC.run(a.dsv3, ["train", "--preset", a.preset, "--train_data", train, "--val_data", val, "--steps",
                            str(a.steps), "--batch", "8", "--seq_len", "256", "--eval_every", "0",
                            "--save_every", "0", "--out", model], a.threads)
    T = a.seq_len
    ids = read_tokens(val)[: a.windows * T + 1]
    assert len(ids) == a.windows * T + 1, "validation data too short"
    windows = [ids[i * T: i * T + T + 1] for i in range(a.windows)]
    sub = os.path.join(a.work, "windows.bin")
    BC.write_tokens(sub, [int(x) for x in ids])
    out, secs = BC.run(a.dsv3, ["eval", "--model", model, "--data", sub, "--batch", "1", "--seq_len", str(T),
                                "--json"], a.threads)
    dsv3 = json.loads(out[out.rfind("{"):])
    BC.log(f"dsv3 eval: loss {dsv3['loss']:.6f} over {dsv3['tokens']} tokens ({a.windows} windows of {T})")
    rows = []
    prompt = ids[:T]
    for dt in a.dtypes.split(","):
        g = os.path.join(a.work, f"model.{dt}.gguf")
        BC.run(a.dsv3, ["export", "--model", model, "--format", "gguf", "--dtype", dt, "--out", g], a.threads)
        l32 = llama_loss(g, windows, T, a.threads, kv_f32=True)
        l16 = llama_loss(g, windows, T, a.threads, kv_f32=False)
        pre, dec = llama_speed(g, prompt, a.decode, a.threads)
        rows.append({"dtype": dt, "gguf_bytes": os.path.getsize(g), "llama_loss": l32, "llama_loss_kv_f16": l16,
                     "rel_diff": (l32 - dsv3["loss"]) / dsv3["loss"], "prefill_tok_s": pre, "decode_tok_s": dec})
    BC.log(f"\nllama-cpp-python {llama_cpp.__version__}, {a.threads} threads; dsv3 eval loss {dsv3['loss']:.6f}")
    BC.log("| GGUF | MiB | llama.cpp loss (f32 KV) | vs dsv3 | f16 KV | prefill tok/s | decode tok/s |")
    BC.log("|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        BC.log(f"| {r['dtype']} | {r['gguf_bytes'] / 2**20:.2f} | {r['llama_loss']:.6f} | {100 * r['rel_diff']:+.4f}% | "
               f"{r['llama_loss_kv_f16']:.6f} | {r['prefill_tok_s']:.0f} | {r['decode_tok_s']:.0f} |")
    if a.json:
        print(json.dumps({"model": model, "dsv3_loss": dsv3["loss"], "windows": a.windows, "seq_len": T,
                          "llama_cpp_python": llama_cpp.__version__, "rows": rows}))


if __name__ == "__main__":
    main()
