"""The PyTorch 2.x peer of `dsv3 bench`: a plain, Hugging Face transformers-style DeepseekV3
(the modules of modeling_deepseek_v3.py, as a user who copied them would train it), with the
training-time pieces transformers leaves out added the straightforward way: the MTP module, the
sequence-wise balance loss and the routing-bias update. The math is docs/model.md's, so FLOPs
and parameters equal dsv3's for the same config (the script checks the parameter count).

What it is, module by module (HF names):
  - DeepseekV3Attention: MLA with q_lora / kv_lora low-rank paths, one shared rope key,
    interleaved RoPE (apply_rotary_pos_emb_interleave, YaRN when yarn_factor > 1).
  - DeepseekV3TopkRouter: sigmoid scores in fp32, + e_score_correction_bias for selection only,
    group-limited top-k (group score = sum of its 2 best), norm_topk, routed_scaling_factor.
  - DeepseekV3MoE: experts as an nn.ModuleList LOOPED over (for each expert: select its tokens
    with torch.where, run the SwiGLU, index_add_ the weighted output), plus the shared experts.
  - first_k_dense_replace dense SwiGLU layers, untied lm_head.
  - MTP (depth D): h' = eh_proj([rmsnorm(emb(t+k)); rmsnorm(h)]), one decoder block with MoE,
    shared_head.norm, the SHARED lm_head; loss weight mtp_weight (0.3).
  - Sequence-wise balance loss alpha * mean_seq sum_i f_i P_i (alpha 1e-4) in every MoE layer.
  - Optimizer: torch.optim.AdamW(lr 1e-3, betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on 2-D
    weights only), clip_grad_norm_(1.0), then b += gamma * sign(mean load - load) per MoE layer.

Attention core (--attn): F.scaled_dot_product_attention(is_causal=True) accepts the unequal
q/k (48) and v (32) head dims on CPU, but then only its math backend runs it (materialised
scores, ~10x slower than the fused kernel in our measurements). The fused CPU flash kernel needs
equal dims, so the default `sdpa_pad` zero-pads v to the q/k dim and slices the output, exactly
what transformers does for its flash-attention path; `sdpa` (unpadded) and `eager` (the explicit
softmax(QK^T)V of HF's eager_attention_forward) are the alternatives.

torch.compile (--compile): plain torch.compile(model) graph-breaks at the expert loop's
torch.where (nonzero has a data-dependent shape) and then, since graph breaks inside loops are not
supported, runs the loops over layers and experts in eager mode. --capture-dynamic follows
dynamo's own hint (capture_dynamic_output_shape_ops) and drops transformers' `if numel() > 0`
skip of empty experts (a data-dependent branch; an empty expert then runs on 0 rows, same result):
the whole forward and backward become one graph with no recompiles. bench_train.py uses it for
its compiled rows (it was the faster of the two in every comparison we ran).

Run as a worker of bench/bench_train.py (one variant per process, so peak RSS is separate), or
by hand under the peer venv (bench/setup_peer_venv.sh):
  .venv-peer/bin/python bench/peer_deepseek.py --preset tiny [--compile] [--amp bf16]
It prints one JSON line: step_s, tokens_per_s, peak_rss_bytes, params, torch version, ...
"""
import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _rss_bytes():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


# ----------------------------------------------------------------------------------------------
# Config: dsv3's short names (the "config" object of `dsv3 info --json`)
# ----------------------------------------------------------------------------------------------

class DeepseekV3Config:
    def __init__(self, d):
        self.vocab_size = int(d["vocab"])
        self.hidden_size = int(d["hidden"])
        self.num_hidden_layers = int(d["layers"])
        self.first_k_dense_replace = int(d["dense_layers"])
        self.num_attention_heads = int(d["heads"])
        self.q_lora_rank = int(d["q_lora"])
        self.kv_lora_rank = int(d["kv_lora"])
        self.qk_nope_head_dim = int(d["qk_nope"])
        self.qk_rope_head_dim = int(d["qk_rope"])
        self.v_head_dim = int(d["v_head"])
        self.intermediate_size = int(d["dense_inter"])
        self.moe_intermediate_size = int(d["moe_inter"])
        self.n_routed_experts = int(d["experts"])
        self.n_shared_experts = int(d["shared_experts"])
        self.num_experts_per_tok = int(d["topk"])
        self.n_group = int(d["groups"])
        self.topk_group = int(d["topk_groups"])
        self.scoring_func = d["router"]
        self.routed_scaling_factor = float(d["route_scale"])
        self.norm_topk_prob = bool(d["norm_topk"])
        self.num_nextn_predict_layers = int(d["mtp_depth"])
        self.rms_norm_eps = float(d["rms_eps"])
        self.rope_theta = float(d["rope_theta"])
        self.yarn_factor = float(d.get("yarn_factor", 1.0))
        self.yarn_original_ctx = int(d.get("yarn_original_ctx", 4096))
        self.yarn_beta_fast = float(d.get("yarn_beta_fast", 32.0))
        self.yarn_beta_slow = float(d.get("yarn_beta_slow", 1.0))
        self.yarn_mscale = float(d.get("yarn_mscale", 1.0))
        self.initializer_range = float(d.get("init_std", 0.006))
        self.qk_head_dim = self.qk_nope_head_dim + self.qk_rope_head_dim
        # Training settings (dsv3 defaults).
        self.mtp_weight = float(d.get("mtp_weight", 0.3))
        self.balance_alpha = float(d.get("balance_alpha", 1e-4))
        self.bias_update_rate = float(d.get("bias_update_rate", 1e-3))
        if self.scoring_func != "sigmoid":
            raise ValueError("peer_deepseek implements the DeepSeek-V3 sigmoid router only")


def build_model_modules():
    """Defines the nn.Module classes (after torch is imported)."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class DeepseekV3RMSNorm(nn.Module):
        def __init__(self, hidden_size, eps):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(hidden_size))
            self.variance_epsilon = eps

        def forward(self, hidden_states):
            input_dtype = hidden_states.dtype
            hidden_states = hidden_states.to(torch.float32)
            variance = hidden_states.pow(2).mean(-1, keepdim=True)
            hidden_states = hidden_states * torch.rsqrt(variance + self.variance_epsilon)
            return self.weight * hidden_states.to(input_dtype)

    class DeepseekV3RotaryEmbedding(nn.Module):
        """cos/sin tables (T, rope_dim) in HF's half-split layout (cat(freqs, freqs));
        frequencies per docs/model.md (YaRN blend when yarn_factor > 1)."""

        def __init__(self, config):
            super().__init__()
            dim = config.qk_rope_head_dim
            i = torch.arange(dim // 2, dtype=torch.float64)
            freq = config.rope_theta ** (-2.0 * i / dim)
            f = config.yarn_factor
            if f > 1.0:
                def corr(r):
                    return dim * math.log(config.yarn_original_ctx / (r * 2 * math.pi)) / (
                        2 * math.log(config.rope_theta))
                low = float(max(math.floor(corr(config.yarn_beta_fast)), 0))
                high = float(min(math.ceil(corr(config.yarn_beta_slow)), dim - 1))
                if low == high:
                    high += 0.001
                ramp = ((i - low) / (high - low)).clamp(0.0, 1.0)
                freq = freq / f * ramp + freq * (1.0 - ramp)
            self.register_buffer("inv_freq", freq, persistent=False)

        def forward(self, T):
            t = torch.arange(T, dtype=torch.float64)
            freqs = torch.outer(t, self.inv_freq)
            emb = torch.cat((freqs, freqs), dim=-1)
            return emb.cos().float(), emb.sin().float()

    def rotate_half(x):
        x1 = x[..., : x.shape[-1] // 2]
        x2 = x[..., x.shape[-1] // 2:]
        return torch.cat((-x2, x1), dim=-1)

    def apply_rotary_pos_emb_interleave(q, k, cos, sin):
        """transformers' DeepSeek-V3 version: de-interleave (x0,x1),(x2,x3).. to half-split,
        then rotate_half RoPE. Same scores as rotating the interleaved pairs in place."""
        b, h, s, d = q.shape
        q = q.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
        b, h, s, d = k.shape
        k = k.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
        q_embed = (q * cos) + (rotate_half(q) * sin)
        k_embed = (k * cos) + (rotate_half(k) * sin)
        return q_embed, k_embed

    class DeepseekV3MLP(nn.Module):
        def __init__(self, config, intermediate_size):
            super().__init__()
            C = config.hidden_size
            self.gate_proj = nn.Linear(C, intermediate_size, bias=False)
            self.up_proj = nn.Linear(C, intermediate_size, bias=False)
            self.down_proj = nn.Linear(intermediate_size, C, bias=False)

        def forward(self, x):
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))

    class DeepseekV3TopkRouter(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.top_k = config.num_experts_per_tok
            self.n_routed_experts = config.n_routed_experts
            self.routed_scaling_factor = config.routed_scaling_factor
            self.n_group = config.n_group
            self.topk_group = config.topk_group
            self.norm_topk_prob = config.norm_topk_prob
            self.weight = nn.Parameter(torch.empty((self.n_routed_experts, config.hidden_size)))
            self.register_buffer("e_score_correction_bias", torch.zeros(self.n_routed_experts))

        @torch.no_grad()
        def get_topk_indices(self, scores):
            E = self.n_routed_experts
            scores_for_choice = scores.view(-1, E) + self.e_score_correction_bias.unsqueeze(0)
            if self.n_group > 1:
                group_scores = (scores_for_choice.view(-1, self.n_group, E // self.n_group)
                                .topk(2, dim=-1)[0].sum(dim=-1))
                group_idx = torch.topk(group_scores, k=self.topk_group, dim=-1, sorted=False)[1]
                group_mask = torch.zeros_like(group_scores)
                group_mask.scatter_(1, group_idx, 1)
                score_mask = (group_mask.unsqueeze(-1)
                              .expand(-1, self.n_group, E // self.n_group).reshape(-1, E))
                # docs/model.md masks the dropped groups with -inf (transformers uses 0.0).
                scores_for_choice = scores_for_choice.masked_fill(~score_mask.bool(), float("-inf"))
            return torch.topk(scores_for_choice, k=self.top_k, dim=-1, sorted=False)[1]

        def forward(self, hidden_states):
            hidden_states = hidden_states.view(-1, hidden_states.shape[-1])
            # The router runs in fp32 (also under autocast, as the DeepSeek-V3 recipe keeps it).
            with torch.autocast("cpu", enabled=False):
                router_logits = F.linear(hidden_states.float(), self.weight.float())
            scores = router_logits.sigmoid()
            topk_indices = self.get_topk_indices(scores)
            topk_weights = scores.gather(1, topk_indices)
            if self.norm_topk_prob:
                topk_weights = topk_weights / (topk_weights.sum(dim=-1, keepdim=True) + 1e-20)
            topk_weights = topk_weights * self.routed_scaling_factor
            return scores, topk_indices, topk_weights

    class DeepseekV3MoE(nn.Module):
        def __init__(self, config):
            super().__init__()
            self.config = config
            self.skip_empty = True
            self.experts = nn.ModuleList([DeepseekV3MLP(config, config.moe_intermediate_size)
                                          for _ in range(config.n_routed_experts)])
            self.gate = DeepseekV3TopkRouter(config)
            self.shared_experts = (DeepseekV3MLP(config, config.moe_intermediate_size * config.n_shared_experts)
                                   if config.n_shared_experts > 0 else None)

        def moe(self, hidden_states, topk_indices, topk_weights, expert_mask):
            # transformers' loop over the experts.
            final_hidden_states = torch.zeros_like(hidden_states, dtype=topk_weights.dtype)
            expert_mask = expert_mask.permute(2, 0, 1)
            for expert_idx in range(len(self.experts)):
                expert = self.experts[expert_idx]
                mask = expert_mask[expert_idx]
                token_indices, weight_indices = torch.where(mask)
                # transformers skips experts without tokens; that data-dependent branch stops
                # torch.compile from capturing the loop, so the one-graph mode drops it (an
                # empty expert then runs on 0 rows: same result).
                if not self.skip_empty or token_indices.numel() > 0:
                    expert_weights = topk_weights[token_indices, weight_indices]
                    expert_input = hidden_states[token_indices]
                    expert_output = expert(expert_input)
                    weighted_output = expert_output * expert_weights.unsqueeze(-1)
                    final_hidden_states.index_add_(0, token_indices, weighted_output.to(final_hidden_states.dtype))
            return final_hidden_states.type(hidden_states.dtype)

        def forward(self, hidden_states):
            B, T, C = hidden_states.shape
            E, K = self.config.n_routed_experts, self.config.num_experts_per_tok
            residuals = hidden_states
            scores, topk_indices, topk_weights = self.gate(hidden_states)
            expert_mask = F.one_hot(topk_indices, num_classes=E)                      # (N, K, E)
            hidden_states = self.moe(hidden_states.view(-1, C), topk_indices, topk_weights,
                                     expert_mask).view(B, T, C)
            if self.shared_experts is not None:
                hidden_states = hidden_states + self.shared_experts(residuals)
            # Sequence-wise balance loss (docs/model.md): f constant, P differentiable.
            counts = expert_mask.view(B, T * K, E).sum(1).to(scores.dtype)         # (B, E)
            f = counts * (E / (K * T))
            probs = scores / scores.sum(-1, keepdim=True)
            P = probs.view(B, T, E).mean(1)
            balance = self.config.balance_alpha * (f * P).sum(-1).mean()
            loads = expert_mask.sum((0, 1))                                          # (E,)
            return hidden_states, balance, loads

    class DeepseekV3Attention(nn.Module):
        def __init__(self, config, attn_impl):
            super().__init__()
            self.config = config
            self.attn_impl = attn_impl
            C, H = config.hidden_size, config.num_attention_heads
            self.num_heads = H
            self.qk_nope_head_dim = config.qk_nope_head_dim
            self.qk_rope_head_dim = config.qk_rope_head_dim
            self.qk_head_dim = config.qk_head_dim
            self.v_head_dim = config.v_head_dim
            self.kv_lora_rank = config.kv_lora_rank
            if config.q_lora_rank > 0:
                self.q_a_proj = nn.Linear(C, config.q_lora_rank, bias=False)
                self.q_a_layernorm = DeepseekV3RMSNorm(config.q_lora_rank, config.rms_norm_eps)
                self.q_b_proj = nn.Linear(config.q_lora_rank, H * self.qk_head_dim, bias=False)
            else:
                self.q_proj = nn.Linear(C, H * self.qk_head_dim, bias=False)
            self.kv_a_proj_with_mqa = nn.Linear(C, config.kv_lora_rank + config.qk_rope_head_dim, bias=False)
            self.kv_a_layernorm = DeepseekV3RMSNorm(config.kv_lora_rank, config.rms_norm_eps)
            self.kv_b_proj = nn.Linear(config.kv_lora_rank, H * (self.qk_nope_head_dim + self.v_head_dim), bias=False)
            self.o_proj = nn.Linear(H * self.v_head_dim, C, bias=False)
            self.scaling = self.qk_head_dim ** -0.5
            if config.yarn_factor > 1.0:
                mscale = 0.1 * config.yarn_mscale * math.log(config.yarn_factor) + 1.0
                self.scaling = self.scaling * mscale * mscale

        def forward(self, hidden_states, cos, sin):
            b, s, _ = hidden_states.shape
            if self.config.q_lora_rank > 0:
                q_states = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(hidden_states)))
            else:
                q_states = self.q_proj(hidden_states)
            q_states = q_states.view(b, s, -1, self.qk_head_dim).transpose(1, 2)
            q_pass, q_rot = torch.split(q_states, [self.qk_nope_head_dim, self.qk_rope_head_dim], dim=-1)
            compressed_kv = self.kv_a_proj_with_mqa(hidden_states)
            k_pass, k_rot = torch.split(compressed_kv, [self.kv_lora_rank, self.qk_rope_head_dim], dim=-1)
            k_pass = self.kv_b_proj(self.kv_a_layernorm(k_pass)).view(
                b, s, -1, self.qk_nope_head_dim + self.v_head_dim).transpose(1, 2)
            k_pass, value_states = torch.split(k_pass, [self.qk_nope_head_dim, self.v_head_dim], dim=-1)
            k_rot = k_rot.view(b, 1, s, self.qk_rope_head_dim)
            q_rot, k_rot = apply_rotary_pos_emb_interleave(q_rot, k_rot, cos, sin)
            k_rot = k_rot.expand(*k_pass.shape[:-1], -1)
            query_states = torch.cat((q_pass, q_rot), dim=-1)
            key_states = torch.cat((k_pass, k_rot), dim=-1)
            if self.attn_impl == "eager":
                # transformers' eager_attention_forward: explicit softmax(QK^T * scale + mask) V.
                attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) * self.scaling
                causal = torch.ones(s, s, dtype=torch.bool, device=hidden_states.device).tril()
                attn_weights = attn_weights.masked_fill(~causal, float("-inf"))
                attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
                attn_output = torch.matmul(attn_weights, value_states)
            elif self.attn_impl == "sdpa_pad":
                # Fused CPU flash kernel: needs v's head dim == q/k's, so pad v (as transformers
                # does for flash attention) and drop the padding after.
                pad = self.qk_head_dim - self.v_head_dim
                v = F.pad(value_states, [0, pad]) if pad > 0 else value_states
                attn_output = F.scaled_dot_product_attention(
                    query_states, key_states, v, is_causal=True, scale=self.scaling)
                attn_output = attn_output[..., : self.v_head_dim]
            else:  # "sdpa": unequal head dims -> SDPA's math backend on CPU
                attn_output = F.scaled_dot_product_attention(
                    query_states, key_states, value_states, is_causal=True, scale=self.scaling)
            attn_output = attn_output.transpose(1, 2).reshape(b, s, -1).contiguous()
            return self.o_proj(attn_output)

    class DeepseekV3DecoderLayer(nn.Module):
        def __init__(self, config, layer_idx, moe, attn_impl):
            super().__init__()
            self.self_attn = DeepseekV3Attention(config, attn_impl)
            self.is_moe = moe
            self.mlp = DeepseekV3MoE(config) if moe else DeepseekV3MLP(config, config.intermediate_size)
            self.input_layernorm = DeepseekV3RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.post_attention_layernorm = DeepseekV3RMSNorm(config.hidden_size, config.rms_norm_eps)

        def forward(self, hidden_states, cos, sin):
            hidden_states = hidden_states + self.self_attn(self.input_layernorm(hidden_states), cos, sin)
            x = self.post_attention_layernorm(hidden_states)
            if self.is_moe:
                y, balance, loads = self.mlp(x)
                return hidden_states + y, balance, loads
            return hidden_states + self.mlp(x), None, None

    class DeepseekV3MTPLayer(nn.Module):
        """MTP module k (HF layer num_hidden_layers + k - 1): enorm, hnorm, eh_proj, a decoder
        block, shared_head.norm; embed_tokens and the head are the main model's."""

        def __init__(self, config, layer_idx, attn_impl):
            super().__init__()
            C = config.hidden_size
            self.enorm = DeepseekV3RMSNorm(C, config.rms_norm_eps)
            self.hnorm = DeepseekV3RMSNorm(C, config.rms_norm_eps)
            self.eh_proj = nn.Linear(2 * C, C, bias=False)
            self.block = DeepseekV3DecoderLayer(config, layer_idx, config.n_routed_experts > 0, attn_impl)
            self.shared_head = nn.Module()
            self.shared_head.norm = DeepseekV3RMSNorm(C, config.rms_norm_eps)

    class DeepseekV3ForCausalLMWithMTP(nn.Module):
        def __init__(self, config, attn_impl="sdpa_pad"):
            super().__init__()
            self.config = config
            C = config.hidden_size
            self.model = nn.Module()
            self.model.embed_tokens = nn.Embedding(config.vocab_size, C)
            self.model.layers = nn.ModuleList([
                DeepseekV3DecoderLayer(config, l,
                                       config.n_routed_experts > 0 and l >= config.first_k_dense_replace,
                                       attn_impl)
                for l in range(config.num_hidden_layers)])
            self.model.norm = DeepseekV3RMSNorm(C, config.rms_norm_eps)
            self.model.rotary_emb = DeepseekV3RotaryEmbedding(config)
            self.mtp = nn.ModuleList([DeepseekV3MTPLayer(config, config.num_hidden_layers + k, attn_impl)
                                      for k in range(config.num_nextn_predict_layers)])
            self.lm_head = nn.Linear(C, config.vocab_size, bias=False)
            self.apply(self._init_weights)

        def _init_weights(self, module):
            std = self.config.initializer_range
            if isinstance(module, (nn.Linear, nn.Embedding)):
                module.weight.data.normal_(mean=0.0, std=std)
            elif isinstance(module, DeepseekV3TopkRouter):
                module.weight.data.normal_(mean=0.0, std=std)

        def moe_gates(self):
            """The routers in the order forward() returns their loads."""
            gates = [l.mlp.gate for l in self.model.layers if l.is_moe]
            gates += [m.block.mlp.gate for m in self.mtp if m.block.is_moe]
            return gates

        def forward(self, tokens):
            """tokens (B, T+1): inputs tokens[:, :T], targets tokens[:, 1:]. Returns
            (total loss, main loss, loads (n_moe_layers, E) of this micro-batch)."""
            cfg = self.config
            B, T1 = tokens.shape
            T = T1 - 1
            x, y = tokens[:, :T], tokens[:, 1:]
            cos, sin = self.model.rotary_emb(T)
            emb = self.model.embed_tokens
            h = emb(x)
            balances, loads = [], []
            for layer in self.model.layers:
                h, bal, ld = layer(h, cos, sin)
                if bal is not None:
                    balances.append(bal)
                    loads.append(ld)
            logits = self.lm_head(self.model.norm(h))
            V = logits.shape[-1]
            loss_main = F.cross_entropy(logits.float().view(-1, V), y.reshape(-1))
            total = loss_main
            hk = h
            if len(self.mtp) > 0:
                t_idx = torch.arange(T, device=tokens.device)
                ces = []
                for k, m in enumerate(self.mtp, start=1):
                    src = t_idx + k                                # tok_k(t) = x[t+k] if t+k <= T
                    tok = torch.where(src <= T, tokens[:, src.clamp(max=T)], torch.zeros_like(x))
                    hp = m.eh_proj(torch.cat([m.enorm(emb(tok)), m.hnorm(hk)], dim=-1))
                    hk, bal, ld = m.block(hp, cos, sin)
                    if bal is not None:
                        balances.append(bal)
                        loads.append(ld)
                    lk = self.lm_head(m.shared_head.norm(hk))
                    tgt_idx = t_idx + k + 1                        # target x[t+k+1] if <= T
                    tgt = torch.where(tgt_idx <= T, tokens[:, tgt_idx.clamp(max=T)],
                                      torch.full_like(x, -100))
                    ces.append(F.cross_entropy(lk.float().view(-1, V), tgt.reshape(-1), ignore_index=-100))
                total = total + cfg.mtp_weight * torch.stack(ces).mean()
            if balances:
                total = total + torch.stack(balances).sum()
            loads = torch.stack(loads) if loads else torch.zeros(0, cfg.n_routed_experts)
            return total, loss_main, loads

    return DeepseekV3ForCausalLMWithMTP


def count_params(model):
    """Trainable parameters; the routing biases are buffers (no gradient) and counted apart."""
    params = sum(p.numel() for p in model.parameters())
    buffers = sum(b.numel() for n, b in model.named_buffers() if n.endswith("e_score_correction_bias"))
    return params, buffers


def dsv3_info(dsv3, preset, batch, seq, extra=()):
    out = subprocess.check_output([dsv3, "info", "--json", "--preset", preset, "--batch", str(batch),
                                   "--seq_len", str(seq)] + list(extra))
    return json.loads(out.decode().strip().splitlines()[-1])


def gemm_peak(args):
    """Best GFLOP/s of torch.matmul on large square matrices, fp32 and bf16 (the MFU peaks)."""
    import torch
    torch.set_num_threads(args.threads)
    out = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": args.device}
    cuda = args.device == "cuda"
    sizes = [8192] if cuda and args.gemm_sizes == [1536, 2048, 3072] else args.gemm_sizes
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        if name not in args.gemm_dtypes:
            continue
        best, best_n = 0.0, 0
        for n in sizes:
            a = torch.randn(n, n, device=args.device).to(dt)
            b = torch.randn(n, n, device=args.device).to(dt)
            c = torch.matmul(a, b)  # warm-up (kernel selection, page faults)
            for _ in range(args.gemm_reps):
                if cuda:
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                torch.matmul(a, b, out=c)
                if cuda:
                    torch.cuda.synchronize()
                dt_s = time.perf_counter() - t0
                g = 2.0 * n ** 3 / dt_s / 1e9
                if g > best:
                    best, best_n = g, n
        out[name + "_gflops"] = best
        out[name + "_n"] = best_n
    out["sizes"] = list(sizes)
    out["reps"] = args.gemm_reps
    print(json.dumps(out), flush=True)


def run(args):
    import numpy as np
    import torch
    if args.inductor_cache:
        os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", args.inductor_cache)
    torch.set_num_threads(args.threads)
    torch.manual_seed(1)
    rss_import = _rss_bytes()

    if args.config:
        conf = json.loads(open(args.config).read() if os.path.exists(args.config) else args.config)
    else:
        conf = dsv3_info(args.dsv3, args.preset, args.batch, args.seq)["config"]
    cfg = DeepseekV3Config(conf)
    Model = build_model_modules()
    model = Model(cfg, attn_impl=args.attn).to(args.device)
    model.train()
    n_params, n_bias = count_params(model)
    if args.expect_params and n_params != args.expect_params and n_params + n_bias != args.expect_params:
        raise SystemExit("parameter count %d (+%d routing biases) != expected %d"
                         % (n_params, n_bias, args.expect_params))

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    opt_kw = {}
    if args.optim == "fused":
        opt_kw["fused"] = True
    elif args.optim == "foreach":
        opt_kw["foreach"] = True
    elif args.optim == "for-loop":
        opt_kw["foreach"] = False
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.95), eps=1e-8, **opt_kw)
    params = list(model.parameters())
    gates = model.moe_gates()

    fwd = model
    if args.compile:
        if args.capture_dynamic:
            import torch._dynamo
            torch._dynamo.config.capture_dynamic_output_shape_ops = True
            torch._dynamo.config.capture_scalar_outputs = True
            for m in model.modules():
                if hasattr(m, "skip_empty"):
                    m.skip_empty = False
        mode = None if args.compile_mode == "default" else args.compile_mode
        if args.compile_regional:
            # Regional compilation: each decoder block compiled on its own (all MoE blocks share
            # one compiled graph); embedding, head and losses stay eager.
            for layer in list(model.model.layers) + [m.block for m in model.mtp]:
                layer.compile(mode=mode)
        else:
            fwd = torch.compile(model, mode=mode)
    amp = (torch.autocast(args.device, dtype=torch.bfloat16) if args.amp == "bf16"
           else torch.autocast(args.device, dtype=torch.float16) if args.amp == "fp16"
           else contextlib.nullcontext())
    cuda = args.device == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)  # the clock waits for the GPU

    rng = np.random.default_rng(1)
    tokens = torch.tensor(rng.integers(0, cfg.vocab_size, size=(args.batch, args.seq + 1)),
                          dtype=torch.long, device=args.device)

    def step():
        with amp:
            total, loss_main, loads = fwd(tokens)
        total.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():
            for g, ld in zip(gates, loads):
                ld = ld.float()
                g.e_score_correction_bias.add_(cfg.bias_update_rate * torch.sign(ld.mean() - ld))
        return float(loss_main.detach())

    t_w = time.perf_counter()
    first_loss = None
    for _ in range(args.warmup):
        loss = step()
        first_loss = loss if first_loss is None else first_loss
    warmup_s = time.perf_counter() - t_w
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.steps):
        sync()
        t0 = time.perf_counter()
        loss = step()  # reads the loss: the step's work is done when it returns
        sync()
        times.append(time.perf_counter() - t0)
    dt = sum(times) / len(times)
    res = {"step_s": dt, "step_s_min": min(times), "step_s_all": times,
           "tokens_per_s": args.batch * args.seq / dt, "loss": loss, "first_loss": first_loss,
           "warmup_s": warmup_s, "peak_rss_bytes": _rss_bytes(), "rss_after_import_bytes": rss_import,
           "params": n_params, "routing_bias_params": n_bias, "torch": torch.__version__,
           "compile": bool(args.compile), "amp": args.amp, "attn": args.attn, "optim": args.optim,
           "threads": torch.get_num_threads(), "batch": args.batch, "seq": args.seq,
           "device": torch.cuda.get_device_name() if cuda else "cpu"}
    if cuda:
        res["peak_device_bytes"] = torch.cuda.max_memory_allocated()
    if args.compile:
        try:
            import torch._dynamo.utils as du
            c = du.counters
            res["graph_breaks"] = sum(c["graph_break"].values())
            res["unique_graphs"] = int(c["stats"]["unique_graphs"])
        except Exception:  # counters are an internal API; best effort only
            pass
    print(json.dumps(res), flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--dsv3", default=os.path.join(REPO, "build", "dsv3"),
                    help="dsv3 binary, used for `dsv3 info` when --config is not given")
    ap.add_argument("--config", help="dsv3 config (the 'config' object of `dsv3 info --json`): JSON text or a file")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--compile", action="store_true", help="torch.compile the model (inductor)")
    ap.add_argument("--compile-mode", default="default",
                    choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    ap.add_argument("--capture-dynamic", action="store_true",
                    help="one graph: dynamo captures the expert loop's torch.where (capture_dynamic_output_shape_ops) "
                         "and the loop runs empty experts on 0 rows instead of branching on numel()")
    ap.add_argument("--compile-regional", action="store_true",
                    help="compile each decoder block instead of the whole model (much shorter "
                         "compilation for many layers x experts)")
    ap.add_argument("--amp", default="none", choices=["none", "bf16", "fp16"],
                    help="torch.autocast(device, dtype) around the forward")
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="where the model trains (cuda: timed with torch.cuda.synchronize)")
    ap.add_argument("--attn", default="sdpa_pad", choices=["sdpa_pad", "sdpa", "eager"])
    ap.add_argument("--optim", default="fused", choices=["fused", "foreach", "for-loop"])
    ap.add_argument("--expect-params", type=int, default=0,
                    help="fail unless the model has this many parameters (dsv3 info's params)")
    ap.add_argument("--inductor-cache", default="", help="TORCHINDUCTOR_CACHE_DIR")
    ap.add_argument("--gemm-peak", action="store_true",
                    help="only measure the fp32 and bf16 torch.matmul peaks (GFLOP/s) and exit")
    ap.add_argument("--gemm-sizes", type=lambda s: [int(x) for x in s.split(",")], default=[1536, 2048, 3072])
    ap.add_argument("--gemm-reps", type=int, default=4)
    ap.add_argument("--gemm-dtypes", type=lambda s: s.split(","), default=["fp32", "bf16"],
                    help="which peaks (bf16 on a CPU without AVX512-BF16 takes minutes)")
    args = ap.parse_args()
    if args.gemm_peak:
        return gemm_peak(args)
    run(args)


if __name__ == "__main__":
    main()
