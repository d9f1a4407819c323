#!/usr/bin/env python3
"""GGUF export (I6): `dsv3 export --format gguf` read back with llama.cpp's own Python package.

For a byte-level model (f32, f16, bf16, q8_0) and a model with the GPT-2 tokenizer beside it,
every key the file holds is checked against the value ../shared/design/gguf-deepseek2.md derives
from the model's config, no key is missing or extra, every tensor has its llama.cpp name, ggml
shape and type, and its data equals the model's weights: exactly for f32, as numpy rounds them for
f16/bf16, and as gguf-py's quantiser (bit-exact with ggml's) makes Q8_0. The weights come from the
same model exported as Hugging Face safetensors, so attn_k_b / attn_v_b / the stacked experts are
checked against kv_b_proj and the experts' own tensors.

Needs the `gguf` package from PyPI (scripts/install_deps.sh installs it for /usr/bin/python3);
without it the test fails rather than skip.
"""
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

import numpy as np

try:
    import gguf
    from gguf import GGMLQuantizationType as Q
except ImportError:
    print("FAIL: the gguf package is missing: run scripts/install_deps.sh (pip install gguf)")
    sys.exit(1)

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SHARED = os.environ.get("DSV3_SHARED_DIR", os.path.join(REPO, "..", "shared"))
DSV3 = os.environ.get("DSV3_BIN", os.path.join(REPO, "build", "dsv3"))
GPT2_DIR = os.path.join(SHARED, "data", "tokenizers", "gpt2")


def run(*args):
    r = subprocess.run([DSV3, *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if r.returncode != 0:
        raise SystemExit(f"dsv3 {' '.join(args)} failed:\n{r.stdout}")
    return r.stdout


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        out = {}
        for name, info in header.items():
            if name == "__metadata__":
                continue
            assert info["dtype"] == "F32", info
            a, b = info["data_offsets"]
            f.seek(base + a)
            out[name] = np.frombuffer(f.read(b - a), dtype=np.float32).reshape(info["shape"])
        return out


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (the alphabet of gpt2-style vocabularies)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAC + 1)) + list(range(0xAE, 0xFF + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def expected_keys(cfg, dtype, tokens, token_types, merges, bos_eos):
    """Every key and value per the design doc, from config.json (HF names)."""
    a = "deepseek2."
    ftype = {"f32": 0, "f16": 1, "bf16": 32, "q8_0": 7}[dtype]
    k = {
        "general.architecture": "deepseek2",
        "general.file_type": ftype,
        "general.alignment": 32,
        a + "context_length": cfg["max_position_embeddings"],
        a + "embedding_length": cfg["hidden_size"],
        a + "feed_forward_length": cfg["intermediate_size"],
        a + "block_count": cfg["num_hidden_layers"],
        a + "vocab_size": cfg["vocab_size"],
        a + "attention.head_count": cfg["num_attention_heads"],
        a + "attention.head_count_kv": 1,
        a + "attention.layer_norm_rms_epsilon": np.float32(cfg["rms_norm_eps"]),
        a + "attention.kv_lora_rank": cfg["kv_lora_rank"],
        a + "attention.key_length": cfg["kv_lora_rank"] + cfg["qk_rope_head_dim"],
        a + "attention.value_length": cfg["kv_lora_rank"],
        a + "attention.key_length_mla": cfg["qk_nope_head_dim"] + cfg["qk_rope_head_dim"],
        a + "attention.value_length_mla": cfg["v_head_dim"],
        a + "rope.dimension_count": cfg["qk_rope_head_dim"],
        a + "rope.freq_base": np.float32(cfg["rope_theta"]),
        a + "leading_dense_block_count": cfg["first_k_dense_replace"],
        a + "expert_feed_forward_length": cfg["moe_intermediate_size"],
        a + "expert_count": cfg["n_routed_experts"],
        a + "expert_used_count": cfg["num_experts_per_tok"],
        a + "expert_shared_count": cfg["n_shared_experts"],
        a + "expert_group_count": cfg["n_group"],
        a + "expert_group_used_count": cfg["topk_group"],
        a + "expert_weights_scale": np.float32(cfg["routed_scaling_factor"]),
        a + "expert_weights_norm": bool(cfg["norm_topk_prob"]),
        a + "expert_gating_func": 2 if cfg.get("scoring_func", "sigmoid") == "sigmoid" else 1,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": token_types,
        "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.add_bos_token": False,
    }
    if cfg.get("q_lora_rank"):
        k[a + "attention.q_lora_rank"] = cfg["q_lora_rank"]
    if bos_eos is not None:
        k["tokenizer.ggml.bos_token_id"], k["tokenizer.ggml.eos_token_id"] = bos_eos
    return k


def expected_tensors(cfg, st):
    """name -> (numpy array in numpy order = reversed ggml ne, kind) from the HF tensors."""
    H, nope, v = cfg["num_attention_heads"], cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    kvl = cfg["kv_lora_rank"]
    t = {"token_embd.weight": (st["model.embed_tokens.weight"], "w"),
         "output_norm.weight": (st["model.norm.weight"], "f32"),
         "output.weight": (st["lm_head.weight"], "w")}
    for l in range(cfg["num_hidden_layers"]):
        p, b = f"model.layers.{l}.", f"blk.{l}."
        t[b + "attn_norm.weight"] = (st[p + "input_layernorm.weight"], "f32")
        t[b + "ffn_norm.weight"] = (st[p + "post_attention_layernorm.weight"], "f32")
        if cfg.get("q_lora_rank"):
            t[b + "attn_q_a.weight"] = (st[p + "self_attn.q_a_proj.weight"], "w")
            t[b + "attn_q_a_norm.weight"] = (st[p + "self_attn.q_a_layernorm.weight"], "f32")
            t[b + "attn_q_b.weight"] = (st[p + "self_attn.q_b_proj.weight"], "w")
        else:
            t[b + "attn_q.weight"] = (st[p + "self_attn.q_proj.weight"], "w")
        t[b + "attn_kv_a_mqa.weight"] = (st[p + "self_attn.kv_a_proj_with_mqa.weight"], "w")
        t[b + "attn_kv_a_norm.weight"] = (st[p + "self_attn.kv_a_layernorm.weight"], "f32")
        kvb = st[p + "self_attn.kv_b_proj.weight"].reshape(H, nope + v, kvl)  # llama.cpp's split
        t[b + "attn_k_b.weight"] = (np.ascontiguousarray(kvb[:, :nope, :].transpose(0, 2, 1)), "w")
        t[b + "attn_v_b.weight"] = (np.ascontiguousarray(kvb[:, nope:, :]), "w")
        t[b + "attn_output.weight"] = (st[p + "self_attn.o_proj.weight"], "w")
        if l < cfg["first_k_dense_replace"]:
            for g, h in (("ffn_gate", "gate_proj"), ("ffn_up", "up_proj"), ("ffn_down", "down_proj")):
                t[b + g + ".weight"] = (st[p + "mlp." + h + ".weight"], "w")
            continue
        t[b + "ffn_gate_inp.weight"] = (st[p + "mlp.gate.weight"], "f32")
        if p + "mlp.gate.e_score_correction_bias" in st:
            t[b + "exp_probs_b.bias"] = (st[p + "mlp.gate.e_score_correction_bias"], "f32")
        E = cfg["n_routed_experts"]
        for g, h in (("gate", "gate_proj"), ("up", "up_proj"), ("down", "down_proj")):
            t[b + f"ffn_{g}_exps.weight"] = (
                np.stack([st[p + f"mlp.experts.{e}.{h}.weight"] for e in range(E)]), "w")
            t[b + f"ffn_{g}_shexp.weight"] = (st[p + f"mlp.shared_experts.{h}.weight"], "w")
    return t


def check_file(path, cfg, st, dtype, tokens, token_types, merges, bos_eos):
    r = gguf.GGUFReader(path)
    got = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue  # the reader's own header pseudo-fields
        got[name] = field.contents()
    want = expected_keys(cfg, dtype, tokens, token_types, merges, bos_eos)
    want["general.name"] = got.get("general.name")  # free text (the model's name)
    assert set(got) == set(want), f"{dtype}: keys extra {set(got) - set(want)}, missing {set(want) - set(got)}"
    for k, v in want.items():
        g = got[k]
        if isinstance(v, np.float32):
            assert np.float32(g) == v, (k, g, v)
        else:
            assert g == v, (k, str(g)[:200], str(v)[:200])
    tensors = expected_tensors(cfg, st)
    names = {t.name for t in r.tensors}
    assert names == set(tensors), f"{dtype}: tensors extra {names - set(tensors)}, missing {set(tensors) - names}"
    wtype = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0}[dtype]
    for t in r.tensors:
        ref, kind = tensors[t.name]
        assert list(t.shape) == list(reversed(ref.shape)), (t.name, list(t.shape), ref.shape)
        want_type = Q.F32 if kind == "f32" else wtype
        if want_type == Q.Q8_0 and ref.shape[-1] % 32 != 0:
            want_type = Q.F16  # rows that are not whole Q8_0 blocks: F16, as llama.cpp's converter
        assert t.tensor_type == want_type, (t.name, t.tensor_type, want_type)
        data = np.asarray(t.data)
        flat = np.ascontiguousarray(ref, dtype=np.float32)
        if want_type == Q.F32:
            assert np.array_equal(data.reshape(-1), flat.reshape(-1)), t.name
        elif want_type == Q.F16:
            assert np.array_equal(data.reshape(-1).view(np.uint16), flat.reshape(-1).astype(np.float16).view(np.uint16)), t.name
        else:  # BF16 and Q8_0: byte for byte what gguf-py (bit-exact with ggml) makes
            want_bytes = gguf.quants.quantize(flat, want_type)
            assert np.array_equal(data.reshape(-1).view(np.uint8), want_bytes.reshape(-1).view(np.uint8)), t.name
            back = gguf.quants.dequantize(data, want_type).reshape(ref.shape)
            tol = np.abs(ref).max() / 127 if want_type == Q.Q8_0 else np.abs(ref).max() / 128
            assert np.abs(back - ref).max() <= tol, t.name
    return len(r.tensors)


def main():
    tmp = tempfile.mkdtemp(prefix="dsv3_gguf_")
    try:
        byte_enc = bytes_to_unicode()
        # 1. a byte-level model (the built-in corpus), every dtype
        run_dir = os.path.join(tmp, "run")
        run("train", "--preset", "debug", "--vocab", "300", "--steps", "2", "--batch", "2", "--seq_len", "16",
            "--eval_every", "0", "--sample_tokens", "0", "--peak_gflops", "100", "--out", run_dir)
        run("export", "--model", run_dir, "--format", "hf", "--out", os.path.join(tmp, "hf"))
        cfg = json.load(open(os.path.join(tmp, "hf", "config.json")))
        st = read_safetensors(os.path.join(tmp, "hf", "model.safetensors"))
        V = cfg["vocab_size"]
        tokens = [byte_enc[b] for b in range(256)] + [f"[PAD{i}]" for i in range(256, V)]
        types = [1] * 256 + [5] * (V - 256)
        for dtype in ("f32", "f16", "bf16", "q8_0"):
            out = os.path.join(tmp, f"m_{dtype}.gguf")
            run("export", "--model", run_dir, "--format", "gguf", "--dtype", dtype, "--out", out)
            n = check_file(out, cfg, st, dtype, tokens, types, [], (256, 256))
            print(f"ok: byte-level {dtype}: {n} tensors, {os.path.getsize(out)} bytes")
        # 2. the same weights with GPT-2's tokenizer beside them (vocabulary 50257)
        if not os.path.isdir(GPT2_DIR):
            print(f"FAIL: {GPT2_DIR} is missing (../shared/data)")
            return 1
        run_dir2 = os.path.join(tmp, "run_gpt2")
        run("train", "--preset", "debug", "--vocab", "50257", "--hidden", "32", "--steps", "1", "--batch", "2",
            "--seq_len", "16", "--eval_every", "0", "--sample_tokens", "0", "--peak_gflops", "100", "--out", run_dir2)
        run("tokenizer", "export", "--tokenizer", GPT2_DIR, "--format", "dsv3", "--out",
            os.path.join(run_dir2, "tokenizer.dsv3tok"))
        run("export", "--model", run_dir2, "--format", "hf", "--out", os.path.join(tmp, "hf2"))
        cfg2 = json.load(open(os.path.join(tmp, "hf2", "config.json")))
        st2 = read_safetensors(os.path.join(tmp, "hf2", "model.safetensors"))
        encoder = json.load(open(os.path.join(GPT2_DIR, "encoder.json"), encoding="utf-8"))
        tok2 = [None] * len(encoder)
        for s, i in encoder.items():
            tok2[i] = s
        types2 = [1] * len(tok2)
        types2[encoder["<|endoftext|>"]] = 3
        with open(os.path.join(GPT2_DIR, "vocab.bpe"), encoding="utf-8") as f:
            merges2 = [l.rstrip("\n") for l in f if l.strip() and not l.startswith("#version")]
        out = os.path.join(tmp, "gpt2.gguf")
        run("export", "--model", run_dir2, "--format", "gguf", "--dtype", "f32", "--out", out)
        eot = encoder["<|endoftext|>"]
        n = check_file(out, cfg2, st2, "f32", tok2, types2, merges2, (eot, eot))
        print(f"ok: gpt2 tokenizer: {len(tok2)} tokens, {len(merges2)} merges, {n} tensors")
        print("1 passed, 0 failed")
        return 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
