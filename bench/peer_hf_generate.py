#!/usr/bin/env python3
"""Hugging Face transformers `generate` on dsv3's HF export: the peer of bench/bench_infer.py.

Runs in the peer venv (bench/setup_peer_venv.sh: torch 2.x + transformers), loads the export as
DeepseekV3ForCausalLM in fp32 (or bf16), and times, on `--threads` threads, one forward over B
random prompts of P tokens (prefill) and `generate` of N greedy tokens with the KV cache
(DynamicCache), printing one JSON line.
"""
import argparse
import json
import time

import torch
from transformers import AutoModelForCausalLM


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF directory (dsv3 export --format hf)")
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    dtype = torch.float32 if a.dtype == "fp32" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(a.model, torch_dtype=dtype)
    model.eval()
    g = torch.Generator().manual_seed(42)
    vocab = model.config.vocab_size
    ids = torch.randint(0, min(256, vocab), (a.batch, a.prompt), generator=g)
    mask = torch.ones_like(ids)
    with torch.inference_mode():
        model(ids[:, :8], attention_mask=mask[:, :8])  # warm-up
        t0 = time.perf_counter()
        model(ids, attention_mask=mask, use_cache=True)
        t_prefill = time.perf_counter() - t0
        t0 = time.perf_counter()
        out = model.generate(ids, attention_mask=mask, max_new_tokens=a.tokens, min_new_tokens=a.tokens,
                             do_sample=False, pad_token_id=0, eos_token_id=None)
        t_gen = time.perf_counter() - t0
    generated = int(out.shape[1] - a.prompt) * a.batch
    decode_s = max(t_gen - t_prefill, 1e-9)
    print(json.dumps({
        "peer": "transformers", "dtype": a.dtype, "batch": a.batch, "prompt": a.prompt, "tokens": a.tokens,
        "threads": a.threads, "prefill_s": t_prefill, "generate_s": t_gen,
        "prefill_tokens_per_s": a.batch * a.prompt / t_prefill,
        "decode_tokens_per_s": (generated - a.batch) / decode_s,
        "total_tokens_per_s": generated / t_gen, "generated": generated,
        "torch": torch.__version__, "transformers": __import__("transformers").__version__}))


if __name__ == "__main__":
    main()
