"""Multi-hop attention after the "HashHop Attention" design, made causal and cacheable.

The published design (theharshithh/hash-hop-attn, MIT; written for Magic's HashHop task) has
each token compute a sigmoid hash gate and attends T times, the query of hop t+1 being a
learned projection of hop t's output. It masks padding only (so it sees the future) and keeps
all T attention maps. Here:

    k, v = Wk x, Wv x                      shared by every hop (the KV cache holds only these)
    h_1 = Attn(Wq x, k, v)                 causal
    h_t = h_{t-1} + Attn(P h_{t-1}, k, v)  t = 2..T: the next query is a learned projection of
                                           the previous hop's output; residual between hops
    y = Wo(sigmoid(Wg x) * h_T)            the token's hash gate scales the last hop

Every hop goes through the attention path chosen at run time (SDPA: no L x L map is kept),
and the query of any hop at position i depends only on keys at positions <= i, so chunked
inference with the KV cache equals the full forward. Cost O(T * L^2).

Shapes: x `[B, L, D]`; q, k, v, h `[B, H, L, Dh]`; cache k, v `[B, H, T, Dh]`.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from zoo.mixer import TORCH_BACKEND, Backend, Cache, Capabilities, Mixer, MixerConfig
from zoo.mixers.attention import attention_reference
from zoo.positional import apply_rotary, rope_cos_sin, rope_inv_freq
from zoo.registry import register_mixer

SDPA_BACKEND = Backend("sdpa", "torch scaled_dot_product_attention for every hop (flash, cuDNN or efficient)")


class HashHopAttnConfig(MixerConfig):
    n_heads: int = Field(8, ge=1, le=256, description="attention heads")
    head_dim: int | None = Field(None, ge=2, le=512, description="per-head width (default d_model / n_heads)")
    hops: int = Field(2, ge=1, le=16, description="attention hops T per layer")
    positional: Literal["nope", "rope"] = Field("nope", description="no positional encoding, or RoPE on every hop")
    rope_base: float = Field(10000.0, gt=1.0, description="RoPE base (positional = 'rope')")


def causal_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The attention oracle with the queries at the last Lq key positions.
    q `[B, H, Lq, Dh]`, k/v `[B, H, Lk, Dh]` -> `[B, H, Lq, Dh]`."""
    lq, lk = q.shape[2], k.shape[2]
    pos_k = torch.arange(lk, device=q.device)
    return attention_reference(q, k, v, pos_k[lk - lq:], pos_k, scale=q.shape[-1] ** -0.5)


def causal_attention_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    if q.shape[2] == k.shape[2]:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))


@register_mixer(
    name="hashhop-attn",
    family="attention",
    description="multi-hop causal attention: each hop's output projects the next hop's query; sigmoid hash gate",
    citation="HashHop Attention, github.com/theharshithh/hash-hop-attn (MIT), made causal with a KV cache; "
             "HashHop task: Magic 2024, github.com/magicproduct/hash-hop",
    capabilities=Capabilities(cost="O(T*L^2)", state="growing"),
    backends=[SDPA_BACKEND, TORCH_BACKEND],
    tiny={"n_heads": 2, "hops": 2},
    version=2,  # 2: the gate's one-row weight no longer decays
)
class HashHopAttn(Mixer):
    Config = HashHopAttnConfig

    def __init__(self, d_model: int, config: HashHopAttnConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        self.n_heads, self.hops = c.n_heads, c.hops
        self.head_dim = c.head_dim or d_model // c.n_heads
        inner = self.n_heads * self.head_dim
        self.wq = nn.Linear(d_model, inner, bias=False)
        self.wk = nn.Linear(d_model, inner, bias=False)
        self.wv = nn.Linear(d_model, inner, bias=False)
        self.hop_proj = nn.ModuleList(nn.Linear(inner, inner, bias=False) for _ in range(c.hops - 1))
        self.gate = nn.Linear(d_model, 1)  # one hash gate per token
        self.wo = nn.Linear(inner, d_model, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def _merge(self, t: torch.Tensor) -> torch.Tensor:
        B, H, L, Dh = t.shape
        return t.transpose(1, 2).reshape(B, L, H * Dh)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        start = cache.pos if cache is not None else 0
        self.check_length(start + L)
        attend = causal_attention_sdpa if self.select_backend(x) == "sdpa" else causal_attention_reference
        rope = None
        if self.config.positional == "rope":
            pos = torch.arange(start, start + L, device=x.device)
            rope = rope_cos_sin(pos, rope_inv_freq(self.head_dim, self.config.rope_base, x.device))
        q, k, v = self._heads(self.wq(x)), self._heads(self.wk(x)), self._heads(self.wv(x))
        if rope is not None:
            q, k = apply_rotary(q, *rope), apply_rotary(k, *rope)
        if cache is not None:
            k = torch.cat([cache.k, k], 2)
            v = torch.cat([cache.v, v], 2)
            cache.k, cache.v, cache.pos = k, v, start + L
        h = attend(q, k, v)
        for proj in self.hop_proj:
            q = self._heads(proj(self._merge(h)))
            if rope is not None:
                q = apply_rotary(q, *rope)
            h = h + attend(q, k, v)
        return self.wo(torch.sigmoid(self.gate(x)) * self._merge(h))

    def new_cache(self, batch, device, dtype) -> Cache:
        z = torch.zeros(batch, self.n_heads, 0, self.head_dim, device=device, dtype=dtype)
        return Cache(k=z, v=z.clone())

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        return 2 * batch * self.n_heads * seq_len * self.head_dim * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, seq_len: int) -> float:
        inner = self.n_heads * self.head_dim
        proj = 2 * 4 * self.d_model * inner + 2 * self.d_model + 2 * (self.hops - 1) * inner * inner
        return proj + self.hops * 4 * inner * (seq_len + 1) / 2
