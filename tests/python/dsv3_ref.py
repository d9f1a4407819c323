"""Independent PyTorch reference for dsv3 (DeepSeek-V3-style MoE training).

Written from docs/model.md (the exact math) and ../shared/design/deepseek-v3.md ("Hugging Face
layout"), not from the C++ engine. Runs on Debian's /usr/bin/python3 (torch CPU + numpy, nothing
else): it carries its own tiny safetensors reader/writer and llm.c token-file reader/writer.

Works in float64 (the oracle for tests) and float32 (speed, for the loss-parity benchmark).
TrainCfg(precision="bf16"|"fp16") emulates the engine's mixed precision on top of either: values
are rounded to the 16-bit dtype exactly where docs/model.md "Mixed precision" says the engine
stores them (weights, norm outputs, linear outputs, RoPE, P, residuals, ...), with
straight-through gradients (the backward is computed in the base dtype).

Main entry points:
  ModelCfg.from_hf(dict)          model config from a Hugging Face config.json dict
  TrainCfg(...)                   training-only settings (losses, optimizer, schedule)
  param_specs(cfg)                [(hf name, shape, kind)] of every tensor ("matrix"|"vector"|"buffer")
  load_hf_dir(dir, dtype)         -> (cfg, params dict name -> tensor)
  forward(cfg, tc, params, tokens (B, T+1))  -> dict of logits, mtp_logits, losses, loads
  loss_and_grads(...)             forward + backward of one micro-batch's total loss
  Trainer(cfg, tc, params).step(list of micro-batches)  one optimizer step (docs/model.md)
  lr_at(tc, step)                 the learning-rate schedule
  read_safetensors / write_safetensors, read_tokens / write_tokens
"""
import json
import math
import os
import struct

import numpy as np
import torch
import torch.nn.functional as F

# ----------------------------------------------------------------------------------------------
# Files
# ----------------------------------------------------------------------------------------------

_ST_NP = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64,
          "I32": np.int32, "U8": np.uint8}


def f32_to_bf16_bits(a):
    """float32 array -> uint16 bf16 bit patterns, round to nearest even (no NaNs expected)."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32).astype(np.uint64)
    rounding = ((u >> 16) & 1) + 0x7FFF
    return ((u + rounding) >> 16).astype(np.uint16)


def bf16_bits_to_f32(b):
    return (np.asarray(b, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def bf16_round(a):
    """The float32 value a tensor has after a round trip through bf16."""
    return bf16_bits_to_f32(f32_to_bf16_bits(a)).reshape(np.shape(a))


def read_safetensors(path):
    """-> (dict name -> numpy array (F32/F64/F16 as is, BF16 widened exactly to float32), metadata)."""
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + n].decode("utf-8"))
    base = 8 + n
    meta = header.pop("__metadata__", None)
    out = {}
    for name, info in header.items():
        b, e = info["data_offsets"]
        raw = blob[base + b: base + e]
        shape = tuple(info["shape"])
        dt = info["dtype"]
        if dt == "BF16":
            arr = bf16_bits_to_f32(np.frombuffer(raw, dtype="<u2")).reshape(shape)
        elif dt in _ST_NP:
            arr = np.frombuffer(raw, dtype=np.dtype(_ST_NP[dt]).newbyteorder("<")).reshape(shape)
            arr = arr.astype(_ST_NP[dt])
        else:
            raise ValueError("%s: unsupported dtype %s for %s" % (path, dt, name))
        out[name] = arr.copy()
    return out, meta


def write_safetensors(path, tensors, dtype="F32", metadata=None):
    """tensors: dict name -> numpy array or torch tensor. dtype "F32" or "BF16" (RNE rounding)."""
    header = {}
    chunks = []
    off = 0
    for name in tensors:
        t = tensors[name]
        if isinstance(t, torch.Tensor):
            t = t.detach().cpu().double().numpy()
        a = np.asarray(t, dtype=np.float32)
        if dtype == "F32":
            raw = a.astype("<f4").tobytes()
        elif dtype == "BF16":
            raw = f32_to_bf16_bits(a).astype("<u2").tobytes()
        else:
            raise ValueError("dtype must be F32 or BF16")
        header[name] = {"dtype": dtype, "shape": list(a.shape), "data_offsets": [off, off + len(raw)]}
        chunks.append(raw)
        off += len(raw)
    if metadata is not None:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hj = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hj += b" " * ((8 - len(hj) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for c in chunks:
            f.write(c)


TOKEN_MAGIC = 20240520


def write_tokens(path, tokens):
    """llm.c token file: 256 int32 header ([0] magic, [1] version 1, [2] count), uint16 tokens."""
    toks = np.asarray(tokens, dtype=np.int64).ravel()
    assert toks.size == 0 or (toks.min() >= 0 and toks.max() < 65536), "tokens must fit uint16"
    header = np.zeros(256, dtype="<i4")
    header[0], header[1], header[2] = TOKEN_MAGIC, 1, toks.size
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(toks.astype("<u2").tobytes())


def read_tokens(path):
    with open(path, "rb") as f:
        header = np.frombuffer(f.read(1024), dtype="<i4")
        if header[0] != TOKEN_MAGIC or header[1] != 1:
            raise ValueError("%s: not an llm.c token file (magic %d version %d)" % (path, header[0], header[1]))
        n = int(header[2])
        toks = np.frombuffer(f.read(2 * n), dtype="<u2")
    if toks.size != n:
        raise ValueError("%s: header says %d tokens, file holds %d" % (path, n, toks.size))
    return toks.astype(np.int64)


# ----------------------------------------------------------------------------------------------
# Configuration
# ----------------------------------------------------------------------------------------------

class ModelCfg:
    """Model shape. Field names follow dsv3's short names (docs/model.md)."""

    def __init__(self, **kw):
        self.vocab = 4096
        self.hidden = 256
        self.layers = 4
        self.dense_layers = 1
        self.heads = 4
        self.q_lora = 128
        self.kv_lora = 64
        self.qk_nope = 32
        self.qk_rope = 16
        self.v_head = 32
        self.dense_inter = 768
        self.moe_inter = 128
        self.experts = 16
        self.shared_experts = 1
        self.topk = 4
        self.groups = 4
        self.topk_groups = 2
        self.router = "sigmoid"
        self.route_scale = 2.5
        self.norm_topk = True
        self.mtp_depth = 1
        self.rms_eps = 1e-6
        self.max_seq = 4096
        self.rope_theta = 10000.0
        self.yarn_factor = 1.0
        self.yarn_original_ctx = 4096
        self.yarn_beta_fast = 32.0
        self.yarn_beta_slow = 1.0
        self.yarn_mscale = 1.0
        for k, v in kw.items():
            if not hasattr(self, k):
                raise KeyError("unknown model setting " + k)
            setattr(self, k, v)

    @property
    def qk_head(self):
        return self.qk_nope + self.qk_rope

    def is_moe_layer(self, l):
        return self.experts > 0 and l >= self.dense_layers

    @staticmethod
    def from_hf(d):
        g = lambda k, default=None: d.get(k, default) if d.get(k, default) is not None else default
        c = ModelCfg()
        c.vocab = int(d["vocab_size"])
        c.hidden = int(d["hidden_size"])
        c.dense_inter = int(g("intermediate_size", 0))
        c.moe_inter = int(g("moe_intermediate_size", 0))
        c.layers = int(d["num_hidden_layers"])
        c.heads = int(d["num_attention_heads"])
        c.shared_experts = int(g("n_shared_experts", 0))
        c.experts = int(g("n_routed_experts", 0))
        c.route_scale = float(g("routed_scaling_factor", 1.0))
        c.groups = int(g("n_group", 1))
        c.topk_groups = int(g("topk_group", 1))
        c.topk = int(g("num_experts_per_tok", 1))
        c.dense_layers = int(g("first_k_dense_replace", 0))
        c.norm_topk = bool(g("norm_topk_prob", False))
        c.kv_lora = int(d["kv_lora_rank"])
        c.q_lora = int(g("q_lora_rank", 0))  # null = plain q_proj
        c.qk_rope = int(d["qk_rope_head_dim"])
        c.v_head = int(d["v_head_dim"])
        c.qk_nope = int(d["qk_nope_head_dim"])
        c.max_seq = int(g("max_position_embeddings", 4096))
        c.rms_eps = float(g("rms_norm_eps", 1e-6))
        c.rope_theta = float(g("rope_theta", 10000.0))
        rs = d.get("rope_scaling")
        if rs:
            kind = rs.get("type", rs.get("rope_type"))
            if kind != "yarn":
                raise ValueError("only YaRN rope_scaling is supported, got %r" % kind)
            c.yarn_factor = float(rs["factor"])
            c.yarn_original_ctx = int(rs["original_max_position_embeddings"])
            c.yarn_beta_fast = float(rs.get("beta_fast", 32.0))
            c.yarn_beta_slow = float(rs.get("beta_slow", 1.0))
            # docs/model.md has ONE mscale (the softmax-scale multiplier). In HF DeepSeek configs
            # the softmax scale uses mscale_all_dim; mscale only rescales cos/sin by the ratio
            # mscale/mscale_all_dim, which is 1 when they are equal (as in the released configs).
            ms = rs.get("mscale_all_dim", rs.get("mscale", 1.0))
            if "mscale" in rs and "mscale_all_dim" in rs and float(rs["mscale"]) != float(rs["mscale_all_dim"]):
                raise ValueError("rope_scaling with mscale != mscale_all_dim is outside docs/model.md")
            c.yarn_mscale = float(ms)
        c.mtp_depth = int(g("num_nextn_predict_layers", 0))
        c.router = str(g("scoring_func", "sigmoid"))
        if c.experts == 0:
            c.dense_layers = c.layers
        return c

    def to_hf(self):
        """A DeepseekV3 config.json dict for this model."""
        d = {
            "model_type": "deepseek_v3",
            "architectures": ["DeepseekV3ForCausalLM"],
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.dense_inter,
            "moe_intermediate_size": self.moe_inter,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.heads,
            "n_shared_experts": self.shared_experts,
            "n_routed_experts": self.experts,
            "routed_scaling_factor": self.route_scale,
            "n_group": self.groups,
            "topk_group": self.topk_groups,
            "num_experts_per_tok": self.topk,
            "first_k_dense_replace": self.dense_layers,
            "norm_topk_prob": self.norm_topk,
            "kv_lora_rank": self.kv_lora,
            "q_lora_rank": self.q_lora if self.q_lora > 0 else None,
            "qk_rope_head_dim": self.qk_rope,
            "v_head_dim": self.v_head,
            "qk_nope_head_dim": self.qk_nope,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_seq,
            "rms_norm_eps": self.rms_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": None,
            "tie_word_embeddings": False,
            "num_nextn_predict_layers": self.mtp_depth,
            "scoring_func": self.router,
            "topk_method": "noaux_tc" if self.router == "sigmoid" else "greedy",
        }
        if self.yarn_factor > 1.0:
            d["rope_scaling"] = {
                "type": "yarn", "factor": self.yarn_factor,
                "original_max_position_embeddings": self.yarn_original_ctx,
                "beta_fast": self.yarn_beta_fast, "beta_slow": self.yarn_beta_slow,
                "mscale": self.yarn_mscale, "mscale_all_dim": self.yarn_mscale,
            }
        return d


class TrainCfg:
    """Training-only settings (losses, optimizer, schedule)."""

    def __init__(self, **kw):
        self.mtp_weight = 0.3
        self.balance_alpha = 1e-4
        self.balance_scope = "sequence"  # or "batch"
        self.bias_update_rate = 1e-3
        self.lr = 3e-4
        self.min_lr = 3e-5
        self.warmup = 0
        self.steps = 10
        self.schedule = "cosine"  # cosine | wsd | constant
        self.decay_frac = 0.2     # wsd only
        self.beta1 = 0.9
        self.beta2 = 0.95
        self.eps = 1e-8
        self.weight_decay = 0.1
        self.clip = 1.0
        self.grad_accum = 1
        self.precision = "fp32"   # fp32 (no rounding) | bf16 | fp16: docs/model.md "Mixed precision"
        for k, v in kw.items():
            if not hasattr(self, k):
                raise KeyError("unknown training setting " + k)
            setattr(self, k, v)
        if self.balance_scope == "seq":
            self.balance_scope = "sequence"
        assert self.balance_scope in ("sequence", "batch"), self.balance_scope
        assert self.precision in ("fp32", "bf16", "fp16"), self.precision


def lr_at(tc, s):
    """docs/model.md "Schedules"; s counts from 0. Plain Python floats (double)."""
    W, S, lr, mn = tc.warmup, tc.steps, float(tc.lr), float(tc.min_lr)
    if s < W:
        return lr * (s + 1) / W
    if tc.schedule == "cosine":
        frac = min(1.0, (s - W) / max(1, S - W))
        return mn + (lr - mn) * (1.0 + math.cos(math.pi * frac)) / 2.0
    if tc.schedule == "wsd":
        D = int(round(tc.decay_frac * S))
        if D > 0 and s >= S - D:
            return lr + (mn - lr) * (s - (S - D) + 1) / D
        return lr
    if tc.schedule == "constant":
        return lr
    raise ValueError("unknown schedule " + str(tc.schedule))


# ----------------------------------------------------------------------------------------------
# Parameters
# ----------------------------------------------------------------------------------------------

def _block_specs(cfg, hf, moe):
    p = "model.layers.%d" % hf
    C = cfg.hidden
    s = [(p + ".input_layernorm.weight", (C,), "vector")]
    qd = cfg.heads * cfg.qk_head
    if cfg.q_lora > 0:
        s += [(p + ".self_attn.q_a_proj.weight", (cfg.q_lora, C), "matrix"),
              (p + ".self_attn.q_a_layernorm.weight", (cfg.q_lora,), "vector"),
              (p + ".self_attn.q_b_proj.weight", (qd, cfg.q_lora), "matrix")]
    else:
        s += [(p + ".self_attn.q_proj.weight", (qd, C), "matrix")]
    s += [(p + ".self_attn.kv_a_proj_with_mqa.weight", (cfg.kv_lora + cfg.qk_rope, C), "matrix"),
          (p + ".self_attn.kv_a_layernorm.weight", (cfg.kv_lora,), "vector"),
          (p + ".self_attn.kv_b_proj.weight", (cfg.heads * (cfg.qk_nope + cfg.v_head), cfg.kv_lora), "matrix"),
          (p + ".self_attn.o_proj.weight", (C, cfg.heads * cfg.v_head), "matrix"),
          (p + ".post_attention_layernorm.weight", (C,), "vector")]

    def swiglu(pre, inter):
        return [(pre + ".gate_proj.weight", (inter, C), "matrix"),
                (pre + ".up_proj.weight", (inter, C), "matrix"),
                (pre + ".down_proj.weight", (C, inter), "matrix")]

    if not moe:
        return s + swiglu(p + ".mlp", cfg.dense_inter)
    s += [(p + ".mlp.gate.weight", (cfg.experts, C), "matrix")]
    if cfg.router == "sigmoid":
        s += [(p + ".mlp.gate.e_score_correction_bias", (cfg.experts,), "buffer")]
    for e in range(cfg.experts):
        s += swiglu(p + ".mlp.experts.%d" % e, cfg.moe_inter)
    if cfg.shared_experts > 0:
        s += swiglu(p + ".mlp.shared_experts", cfg.shared_experts * cfg.moe_inter)
    return s


def param_specs(cfg):
    """Every tensor the model owns: [(hf name, shape, kind)], kind matrix|vector|buffer.
    Matrices get weight decay, vectors (norms) do not, buffers (routing bias) get no gradient."""
    C = cfg.hidden
    s = [("model.embed_tokens.weight", (cfg.vocab, C), "matrix")]
    for l in range(cfg.layers):
        s += _block_specs(cfg, l, cfg.is_moe_layer(l))
    for k in range(1, cfg.mtp_depth + 1):
        hf = cfg.layers + k - 1
        p = "model.layers.%d" % hf
        s += [(p + ".enorm.weight", (C,), "vector"), (p + ".hnorm.weight", (C,), "vector"),
              (p + ".eh_proj.weight", (C, 2 * C), "matrix")]
        s += _block_specs(cfg, hf, cfg.experts > 0)
        s += [(p + ".shared_head.norm.weight", (C,), "vector")]
    s += [("model.norm.weight", (C,), "vector"), ("lm_head.weight", (cfg.vocab, C), "matrix")]
    return s


def mtp_copy_names(cfg):
    """Optional per-MTP-module copies of the embedding and head allowed by the HF layout."""
    out = {}
    for k in range(1, cfg.mtp_depth + 1):
        p = "model.layers.%d" % (cfg.layers + k - 1)
        out[p + ".embed_tokens.weight"] = "model.embed_tokens.weight"
        out[p + ".shared_head.head.weight"] = "lm_head.weight"
    return out


def trainable_names(cfg):
    return [n for n, _, k in param_specs(cfg) if k != "buffer"]


def to_params(cfg, arrays, dtype=torch.float64):
    """numpy dict -> torch params (trainable ones require grad). Checks names and shapes;
    allows only the optional MTP embedding/head copies as extra tensors (ignored)."""
    specs = param_specs(cfg)
    want = {n for n, _, _ in specs}
    extra = set(arrays) - want - set(mtp_copy_names(cfg))
    missing = want - set(arrays)
    if missing or extra:
        raise ValueError("tensor set mismatch: missing %s extra %s" % (sorted(missing)[:5], sorted(extra)[:5]))
    params = {}
    for n, shape, kind in specs:
        a = np.asarray(arrays[n])
        if tuple(a.shape) != tuple(shape):
            raise ValueError("%s: shape %s, expected %s" % (n, a.shape, shape))
        t = torch.tensor(a, dtype=dtype)
        if kind != "buffer":
            t.requires_grad_(True)
        params[n] = t
    return params


def load_hf_dir(path, dtype=torch.float64):
    with open(os.path.join(path, "config.json")) as f:
        cfg = ModelCfg.from_hf(json.load(f))
    arrays = {}
    for fn in sorted(os.listdir(path)):
        if fn.endswith(".safetensors"):
            arrays.update(read_safetensors(os.path.join(path, fn))[0])
    return cfg, to_params(cfg, arrays, dtype)


def random_arrays(cfg, seed, std=0.08, emb_std=1.0, norm_jitter=0.1, bias_std=0.01):
    """Random test weights (numpy float32): normal matrices, 1 + jitter norms, small router bias."""
    rng = np.random.default_rng(seed)
    out = {}
    for n, shape, kind in param_specs(cfg):
        if kind == "matrix":
            s = emb_std if n == "model.embed_tokens.weight" else std
            out[n] = (s * rng.standard_normal(shape)).astype(np.float32)
        elif kind == "vector":
            out[n] = (1.0 + norm_jitter * rng.standard_normal(shape)).astype(np.float32)
        else:
            out[n] = (bias_std * rng.standard_normal(shape)).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# Mixed precision: rounding to the compute dtype at the engine's storage points
# ----------------------------------------------------------------------------------------------

_ROUND = {"dtype": None}  # torch.bfloat16 / torch.float16 while a 16-bit forward runs


class _RoundST(torch.autograd.Function):
    """Round to the 16-bit dtype (nearest even) in the forward, identity in the backward."""

    @staticmethod
    def forward(ctx, x):
        return x.to(_ROUND["dtype"]).to(x.dtype)

    @staticmethod
    def backward(ctx, g):
        return g


def rnd(x):
    """x as the engine stores it (a no-op in fp32 mode)."""
    return x if _ROUND["dtype"] is None else _RoundST.apply(x)


class precision_scope:
    """with precision_scope(tc): ... runs the forward in tc.precision."""

    def __init__(self, tc):
        self.dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[tc.precision]

    def __enter__(self):
        self.saved = _ROUND["dtype"]
        _ROUND["dtype"] = self.dtype

    def __exit__(self, *a):
        _ROUND["dtype"] = self.saved


class _Weights(dict):
    """The parameters as the forward reads them: rounded to the compute dtype once per forward
    (straight-through), routing biases kept as they are."""

    def __init__(self, params):
        super().__init__()
        self.p = params

    def __getitem__(self, n):
        if n not in self:
            w = self.p[n]
            dict.__setitem__(self, n, w if n.endswith("e_score_correction_bias") else rnd(w))
        return dict.__getitem__(self, n)


# ----------------------------------------------------------------------------------------------
# Forward
# ----------------------------------------------------------------------------------------------

def rmsnorm(x, w, eps):
    return rnd(x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w)


def lin(x, w):
    """A linear layer whose output is stored in the compute dtype."""
    return rnd(x @ w.t())


def lin_f32(x, w):
    """A linear layer with an fp32 output (router and head logits)."""
    return x @ w.t()


def swiglu(p, pre, x):
    g = lin(x, p[pre + ".gate_proj.weight"])
    u = lin(x, p[pre + ".up_proj.weight"])
    return lin(rnd(F.silu(g) * u), p[pre + ".down_proj.weight"])


def rope_freqs(cfg):
    """docs/model.md "RoPE, interleaved, with YaRN", in float64 numpy."""
    dim = cfg.qk_rope
    i = np.arange(dim // 2, dtype=np.float64)
    freq = cfg.rope_theta ** (-2.0 * i / dim)
    f = cfg.yarn_factor
    if f > 1.0:
        def corr(r):
            return dim * math.log(cfg.yarn_original_ctx / (r * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))
        low = max(math.floor(corr(cfg.yarn_beta_fast)), 0)
        high = min(math.ceil(corr(cfg.yarn_beta_slow)), dim - 1)
        low, high = float(low), float(high)
        if low == high:
            high += 0.001
        ramp = np.clip((i - low) / (high - low), 0.0, 1.0)
        freq = freq / f * ramp + freq * (1.0 - ramp)
    return freq


def attn_scale(cfg):
    s = cfg.qk_head ** -0.5
    if cfg.yarn_factor > 1.0:
        m = 0.1 * cfg.yarn_mscale * math.log(cfg.yarn_factor) + 1.0
        s *= m * m
    return s


def rope_tables(cfg, T, dtype):
    ang = np.arange(T, dtype=np.float64)[:, None] * rope_freqs(cfg)[None, :]  # (T, dim/2)
    return torch.tensor(np.cos(ang), dtype=dtype), torch.tensor(np.sin(ang), dtype=dtype)


def apply_rope(x, cos, sin):
    """x (..., T, [H,] dim) with the T axis matching cos (T, dim/2) after broadcasting."""
    x0 = x[..., 0::2]
    x1 = x[..., 1::2]
    r0 = x0 * cos - x1 * sin
    r1 = x0 * sin + x1 * cos
    return torch.stack([r0, r1], dim=-1).flatten(-2)


def mla(cfg, p, pre, x, cos, sin):
    """x (B, T, C) normalised input -> (B, T, C)."""
    B, T, C = x.shape
    H, dn, dr, dv = cfg.heads, cfg.qk_nope, cfg.qk_rope, cfg.v_head
    a = pre + ".self_attn"
    if cfg.q_lora > 0:
        q = lin(rmsnorm(lin(x, p[a + ".q_a_proj.weight"]), p[a + ".q_a_layernorm.weight"], cfg.rms_eps),
                p[a + ".q_b_proj.weight"])
    else:
        q = lin(x, p[a + ".q_proj.weight"])
    q = q.view(B, T, H, dn + dr)
    q_nope, q_pe = q[..., :dn], q[..., dn:]
    kv = lin(x, p[a + ".kv_a_proj_with_mqa.weight"])
    c_kv, k_pe = kv[..., :cfg.kv_lora], kv[..., cfg.kv_lora:]
    kvb = lin(rmsnorm(c_kv, p[a + ".kv_a_layernorm.weight"], cfg.rms_eps), p[a + ".kv_b_proj.weight"])
    kvb = kvb.view(B, T, H, dn + dv)
    k_nope, v = kvb[..., :dn], kvb[..., dn:]
    q_pe = rnd(apply_rope(q_pe, cos[:, None, :], sin[:, None, :]))  # (B,T,H,dr)
    k_pe = rnd(apply_rope(k_pe, cos, sin))                          # (B,T,dr): one key for all heads
    qh = torch.cat([q_nope, q_pe], -1).transpose(1, 2)                                  # (B,H,T,dqk)
    kh = torch.cat([k_nope, k_pe[:, :, None, :].expand(B, T, H, dr)], -1).transpose(1, 2)
    vh = v.transpose(1, 2)                                                                # (B,H,T,dv)
    S = (qh @ kh.transpose(-1, -2)) * attn_scale(cfg)
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    S = S.masked_fill(~causal, float("-inf"))
    P = rnd(torch.softmax(S, -1))
    o = rnd(P @ vh).transpose(1, 2).reshape(B, T, H * dv)
    return lin(o, p[a + ".o_proj.weight"])


def _stable_desc_order(v):
    """Indices sorting each row descending; ties keep the lower index first."""
    return torch.sort(v, dim=-1, descending=True, stable=True).indices


_FORCE = {"queue": None, "decisions": 0, "disagree": 0, "worst_margin": 0.0}


class forced_routing:
    """with forced_routing(choices): route() takes its expert choices from `choices` (an iterable
    of (N*K,) int arrays, one per MoE layer call, in call order) instead of its own top-k, and
    records where its own choice differs: how many token decisions, and the largest of its own
    selection margins among them (a difference at a clear margin is a real disagreement)."""

    def __init__(self, choices):
        self.it = iter(choices)

    def __enter__(self):
        _FORCE.update(queue=self.it, decisions=0, disagree=0, worst_margin=0.0)
        return _FORCE

    def __exit__(self, *a):
        _FORCE["queue"] = None


def route(cfg, p, pre, x):
    """Router of one MoE layer on x (N, C). Returns s (N,E) differentiable scores, chosen (N,K)
    expert ids, w (N,K) gate weights, and the smallest selection margin (how close the discrete
    choices were to flipping; large margins make fp32-vs-fp64 comparisons meaningful)."""
    N = x.shape[0]
    E, K, G = cfg.experts, cfg.topk, cfg.groups
    logits = lin_f32(x, p[pre + ".mlp.gate.weight"])
    if cfg.router == "sigmoid":
        s = torch.sigmoid(logits)
        sel = s.detach() + p[pre + ".mlp.gate.e_score_correction_bias"].detach()
    elif cfg.router == "softmax":
        s = torch.softmax(logits, -1)
        sel = s.detach().clone()
    else:
        raise ValueError("unknown router " + cfg.router)
    margin = float("inf")
    tok_margin = torch.full((N,), float("inf"), dtype=torch.float64)  # per token, own choices
    if G > 1:
        g = sel.view(N, G, E // G)
        gscore = torch.sort(g, dim=-1, descending=True).values[..., :2].sum(-1)  # (N, G)
        order = _stable_desc_order(gscore)
        keep = order[:, :cfg.topk_groups]
        gsorted = gscore.gather(1, order)
        if cfg.topk_groups < G:
            gm = (gsorted[:, cfg.topk_groups - 1] - gsorted[:, cfg.topk_groups]).double()
            margin = min(margin, float(gm.min()))
            tok_margin = torch.minimum(tok_margin, gm)
        gmask = torch.zeros(N, G, dtype=torch.bool)
        gmask.scatter_(1, keep, True)
        emask = gmask[:, :, None].expand(N, G, E // G).reshape(N, E)
        sel = sel.masked_fill(~emask, float("-inf"))
    order = _stable_desc_order(sel)
    chosen = order[:, :K]
    if K < E:
        ssorted = sel.gather(1, order)
        a, b = ssorted[:, K - 1], ssorted[:, K]
        fin = torch.isfinite(b)
        if bool(fin.any()):
            margin = min(margin, float((a[fin] - b[fin]).min()))
            em = torch.where(fin, a - b, torch.full_like(a, float("inf"))).double()
            tok_margin = torch.minimum(tok_margin, em)
    if _FORCE["queue"] is not None:  # follow the engine's choices (16-bit comparisons)
        forced = torch.as_tensor(next(_FORCE["queue"]), dtype=torch.long).view(N, K)
        differ = (torch.sort(forced, -1).values != torch.sort(chosen, -1).values).any(-1)
        _FORCE["decisions"] += N
        if bool(differ.any()):
            _FORCE["disagree"] += int(differ.sum())
            _FORCE["worst_margin"] = max(_FORCE["worst_margin"], float(tok_margin[differ].max()))
        chosen = forced
    w = s.gather(1, chosen)
    if cfg.norm_topk:
        w = w / w.sum(-1, keepdim=True)
    w = w * cfg.route_scale
    return s, chosen, w, margin


def moe(cfg, tc, p, pre, x, B, T):
    """x (N, C) -> (y (N, C), balance loss (scalar), loads (E,) int64, margin)."""
    N, C = x.shape
    E, K = cfg.experts, cfg.topk
    s, chosen, w, margin = route(cfg, p, pre, x)
    y = torch.zeros_like(x)
    flat = chosen.reshape(-1)
    for e in range(E):
        hit = (flat == e).nonzero(as_tuple=True)[0]
        if hit.numel() == 0:
            continue
        rows = torch.div(hit, K, rounding_mode="floor")
        slots = hit % K
        out = swiglu(p, pre + ".mlp.experts.%d" % e, x[rows])
        y = y.index_add(0, rows, out * w[rows, slots][:, None])
    if cfg.shared_experts > 0:
        y = y + swiglu(p, pre + ".mlp.shared_experts", x)
    y = rnd(y)  # the combine's one rounding of the fp32 sum
    loads = torch.bincount(flat, minlength=E)
    # Balance loss (docs/model.md): f constant, P differentiable.
    probs = s / s.sum(-1, keepdim=True) if cfg.router == "sigmoid" else s
    onehot = torch.zeros(N, E, dtype=x.dtype)
    onehot.scatter_(1, chosen, 1.0)
    if tc.balance_scope == "sequence":
        nseg, Ts = B, T
    else:
        nseg, Ts = 1, N
    counts = onehot.view(nseg, Ts, E).sum(1)
    f = counts * (E / (K * Ts))
    P = probs.view(nseg, Ts, E).mean(1)
    bal = tc.balance_alpha * (f * P).sum(-1).mean()
    return y, bal, loads, margin


def block(cfg, tc, p, hf, h, moe_ffn, cos, sin, stats):
    pre = "model.layers.%d" % hf
    B, T, C = h.shape
    h = rnd(h + mla(cfg, p, pre, rmsnorm(h, p[pre + ".input_layernorm.weight"], cfg.rms_eps), cos, sin))
    xn = rmsnorm(h, p[pre + ".post_attention_layernorm.weight"], cfg.rms_eps)
    if moe_ffn:
        y, bal, loads, margin = moe(cfg, tc, p, pre, xn.reshape(B * T, C), B, T)
        stats["balance"].append(bal)
        stats["loads"][hf] = loads
        stats["margin"] = min(stats["margin"], margin)
        h = rnd(h + y.view(B, T, C))
    else:
        h = rnd(h + swiglu(p, pre + ".mlp", xn))
    return h


def forward(cfg, tc, params, tokens):
    """tokens: (B, T+1) int64 (a batch row holds T+1 tokens). Returns a dict:
    logits (B*T, V), mtp_logits [D x (B*T, V)], loss_main, mtp_loss, balance_loss, total (tensors),
    loads {hf layer: (E,) int64}, margin (float)."""
    with precision_scope(tc):
        return _forward(cfg, tc, _Weights(params), tokens)


def _forward(cfg, tc, params, tokens):
    p = params
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    B, T1 = tokens.shape
    T = T1 - 1
    dtype = p.p["lm_head.weight"].dtype
    x, y = tokens[:, :T], tokens[:, 1:]
    cos, sin = rope_tables(cfg, T, dtype)
    stats = {"balance": [], "loads": {}, "margin": float("inf")}
    emb = p["model.embed_tokens.weight"]
    h = emb[x]
    for l in range(cfg.layers):
        h = block(cfg, tc, p, l, h, cfg.is_moe_layer(l), cos, sin, stats)
    logits = lin_f32(rmsnorm(h, p["model.norm.weight"], cfg.rms_eps), p["lm_head.weight"])
    V = logits.shape[-1]
    loss_main = F.cross_entropy(logits.reshape(B * T, V), y.reshape(B * T))
    mtp_logits = []
    ce = []
    hk = h
    t_idx = torch.arange(T)
    for k in range(1, cfg.mtp_depth + 1):
        hf = cfg.layers + k - 1
        pre = "model.layers.%d" % hf
        src = t_idx + k                                            # tok_k(t) = x[t+k] if t+k <= T
        tok = torch.where(src <= T, tokens[:, src.clamp(max=T)], torch.zeros_like(tokens[:, :T]))
        e = emb[tok]
        hp = lin(torch.cat([rmsnorm(e, p[pre + ".enorm.weight"], cfg.rms_eps),
                            rmsnorm(hk, p[pre + ".hnorm.weight"], cfg.rms_eps)], -1),
                 p[pre + ".eh_proj.weight"])
        hk = block(cfg, tc, p, hf, hp, cfg.experts > 0, cos, sin, stats)
        lk = lin_f32(rmsnorm(hk, p[pre + ".shared_head.norm.weight"], cfg.rms_eps), p["lm_head.weight"])
        mtp_logits.append(lk.reshape(B * T, V))
        tgt_idx = t_idx + k + 1                                    # target_k(t) = x[t+k+1] if <= T
        valid = tgt_idx <= T
        tgt = tokens[:, tgt_idx.clamp(max=T)]
        ce.append(F.cross_entropy(lk[:, valid].reshape(-1, V), tgt[:, valid].reshape(-1)))
    zero = torch.zeros((), dtype=dtype)
    mtp_loss = torch.stack(ce).mean() if ce else zero
    balance = torch.stack(stats["balance"]).sum() if stats["balance"] else zero
    total = loss_main + tc.mtp_weight * mtp_loss + balance
    return {"logits": logits.reshape(B * T, V), "mtp_logits": mtp_logits, "loss_main": loss_main,
            "mtp_loss": mtp_loss, "balance_loss": balance, "total": total,
            "loads": stats["loads"], "margin": stats["margin"]}


def loss_and_grads(cfg, tc, params, tokens):
    """Forward + backward of one micro-batch's total loss. Returns (forward dict, grads dict)."""
    for n in trainable_names(cfg):
        params[n].grad = None
    out = forward(cfg, tc, params, tokens)
    out["total"].backward()
    grads = {}
    for n in trainable_names(cfg):
        g = params[n].grad
        grads[n] = torch.zeros_like(params[n]) if g is None else g.detach().clone()
        params[n].grad = None
    return out, grads


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

class Trainer:
    """docs/model.md "One optimizer step": mean gradient over micro-batches, global-norm clip,
    hand-written AdamW (torch.optim.AdamW semantics; decay only on 2-D weights), then the sigmoid
    router's bias update from the step's loads."""

    def __init__(self, cfg, tc, params):
        self.cfg, self.tc, self.p = cfg, tc, params
        self.names = trainable_names(cfg)
        self.decay = {n: k == "matrix" for n, _, k in param_specs(cfg)}
        self.m = {n: torch.zeros_like(params[n]) for n in self.names}
        self.v = {n: torch.zeros_like(params[n]) for n in self.names}
        self.step_count = 0
        self.min_margin = float("inf")

    def step(self, micro_batches):
        cfg, tc, p = self.cfg, self.tc, self.p
        A = len(micro_batches)
        gsum = {n: torch.zeros_like(p[n]) for n in self.names}
        loads = {}
        acc = {"loss": 0.0, "mtp_loss": 0.0, "balance_loss": 0.0, "total": 0.0}
        for tokens in micro_batches:
            out, g = loss_and_grads(cfg, tc, p, tokens)
            for n in self.names:
                gsum[n] += g[n]
            for hf, ld in out["loads"].items():
                loads[hf] = loads.get(hf, 0) + ld
            acc["loss"] += float(out["loss_main"]) / A
            acc["mtp_loss"] += float(out["mtp_loss"]) / A
            acc["balance_loss"] += float(out["balance_loss"]) / A
            acc["total"] += float(out["total"]) / A
            self.min_margin = min(self.min_margin, out["margin"])
        grads = {n: gsum[n] / A for n in self.names}
        gnorm = math.sqrt(sum(float((grads[n].double() ** 2).sum()) for n in self.names))
        if tc.clip > 0 and gnorm > tc.clip:
            c = tc.clip / (gnorm + 1e-6)
            for n in self.names:
                grads[n] = grads[n] * c
        s = self.step_count
        lr = lr_at(tc, s)
        t = s + 1
        bc1 = 1.0 - tc.beta1 ** t
        bc2_sqrt = math.sqrt(1.0 - tc.beta2 ** t)
        with torch.no_grad():
            for n in self.names:
                g = grads[n]
                m, v = self.m[n], self.v[n]
                m.mul_(tc.beta1).add_(g, alpha=1.0 - tc.beta1)
                v.mul_(tc.beta2).addcmul_(g, g, value=1.0 - tc.beta2)
                w = p[n]
                if self.decay[n]:
                    w.mul_(1.0 - lr * tc.weight_decay)
                denom = v.sqrt() / bc2_sqrt + tc.eps
                w.addcdiv_(m, denom, value=-(lr / bc1))
            if cfg.router == "sigmoid":
                for hf, ld in loads.items():
                    ld = ld.double()
                    sign = torch.sign(ld.mean() - ld)
                    b = p["model.layers.%d.mlp.gate.e_score_correction_bias" % hf]
                    b.add_((tc.bias_update_rate * sign).to(b.dtype))
        self.step_count += 1
        rec = {"step": s, "loss": acc["loss"], "mtp_loss": acc["mtp_loss"],
               "balance_loss": acc["balance_loss"], "total": acc["total"], "grad_norm": gnorm,
               "lr": lr, "loads": {hf: ld.tolist() for hf, ld in loads.items()}}
        return rec


def torch_adamw_groups(cfg, tc, params):
    """The same optimizer as torch.optim.AdamW with two parameter groups (used to cross-check the
    hand-written step)."""
    dec = [params[n] for n, _, k in param_specs(cfg) if k == "matrix"]
    nodec = [params[n] for n, _, k in param_specs(cfg) if k == "vector"]
    return torch.optim.AdamW([{"params": dec, "weight_decay": tc.weight_decay},
                              {"params": nodec, "weight_decay": 0.0}],
                             lr=tc.lr, betas=(tc.beta1, tc.beta2), eps=tc.eps)


def chunk_batches(tokens, B, T):
    """Micro-batch j = the j-th consecutive chunk of B*(T+1) tokens, rows of T+1."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = B * (T + 1)

    def get(j):
        c = tokens[j * n:(j + 1) * n]
        if c.size != n:
            raise ValueError("token file too short for micro-batch %d" % j)
        return torch.tensor(c.reshape(B, T + 1))
    return get


def llmc_batches(tokens, B, T, start=0):
    """llm.c loader order: rows b = tokens[p + b*T : p + b*T + T + 1], p += B*T, wrapping to 0 when
    p + B*T + 1 > n. Yields (B, T+1) tensors forever."""
    tokens = np.asarray(tokens, dtype=np.int64)
    n = tokens.size
    if B * T + 1 > n:
        raise ValueError("token file holds %d tokens, one batch needs %d" % (n, B * T + 1))
    p = start
    while True:
        if p + B * T + 1 > n:
            p = 0
        buf = tokens[p:p + B * T + 1]
        rows = np.stack([buf[b * T:b * T + T + 1] for b in range(B)])
        yield torch.tensor(rows)
        p += B * T
