"""Full causal softmax attention under each positional scheme.

Every scheme is a small subclass of `Attention` that changes one of three hooks:

- `qk_input(x, pos)`: the input of the q and k projections (absolute schemes add here);
- `rotate(q, k, pos_q, pos_k)`: q and k after projection (RoPE and its relatives);
- `score_bias(pos_q, pos_k)`: an additive bias on the scores (ALiBi, T5) and `window`
  (sliding-window attention).

The `torch` backend is the reference: explicit scores, mask and softmax (any bias).
The `sdpa` backend runs `torch.nn.functional.scaled_dot_product_attention` and is only
offered by schemes that change q and k alone.

Shapes: x `[B, L, D]`; q, k, v `[B, H, L, Dh]`; cache k, v `[B, H, T, Dh]`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from zoo.mixer import TORCH_BACKEND, Backend, Cache, Capabilities, Mixer, MixerConfig
from zoo.positional import sinusoidal
from zoo.registry import register_mixer

SDPA_BACKEND = Backend("sdpa", "torch scaled_dot_product_attention (cuDNN, flash or efficient kernel)")

VASWANI = "Vaswani et al. 2017, Attention Is All You Need, arXiv:1706.03762"


class AttentionConfig(MixerConfig):
    n_heads: int = Field(8, ge=1, le=256, description="attention heads")
    head_dim: int | None = Field(None, ge=1, le=512, description="per-head width (default d_model / n_heads)")


def causal_mask(pos_q: torch.Tensor, pos_k: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Boolean `[Lq, Lk]`, True where query at pos_q may attend key at pos_k."""
    d = pos_q[:, None] - pos_k[None, :]
    keep = d >= 0
    if window is not None:
        keep &= d < window
    return keep


def attention_reference(q, k, v, pos_q, pos_k, bias=None, window=None, scale=None):
    """Plain softmax attention. q `[B, H, Lq, Dh]`, k/v `[B, H, Lk, Dh]`, bias `[H, Lq, Lk]`."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if bias is not None:
        s = s + bias.float()
    s = s.masked_fill(~causal_mask(pos_q, pos_k, window), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v.float()).to(q.dtype)


class Attention(Mixer):
    """Causal multi-head attention with no positional information (NoPE)."""

    Config = AttentionConfig
    window: int | None = None

    def __init__(self, d_model: int, config: AttentionConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        self.n_heads = c.n_heads
        self.head_dim = c.head_dim or d_model // c.n_heads
        inner = self.n_heads * self.head_dim
        self.wq = nn.Linear(d_model, inner, bias=False)
        self.wk = nn.Linear(d_model, inner, bias=False)
        self.wv = nn.Linear(d_model, inner, bias=False)
        self.wo = nn.Linear(inner, d_model, bias=False)

    # -- positional hooks (identity for NoPE) -------------------------------------------
    def qk_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def rotate(self, q, k, pos_q, pos_k):
        return q, k

    def score_bias(self, pos_q: torch.Tensor, pos_k: torch.Tensor) -> torch.Tensor | None:
        return None

    # -- forward ---------------------------------------------------------------------------
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        start = cache.pos if cache is not None else 0
        self.check_length(start + L)
        pos = torch.arange(start, start + L, device=x.device)
        xqk = self.qk_input(x, pos)
        q, k, v = self._heads(self.wq(xqk)), self._heads(self.wk(xqk)), self._heads(self.wv(x))
        q, k = self.rotate(q, k, pos, pos)
        if cache is not None:
            k = torch.cat([cache.k, k], dim=2) if cache.k is not None else k
            v = torch.cat([cache.v, v], dim=2) if cache.v is not None else v
            cache.k, cache.v, cache.pos = k, v, start + L
        pos_k = torch.arange(k.shape[2], device=x.device)
        o = self.attend(q, k, v, pos, pos_k)
        return self.wo(o.transpose(1, 2).reshape(B, L, -1))

    def attend(self, q, k, v, pos_q, pos_k):
        if self.select_backend(q) == "sdpa":
            if self.window is not None:
                return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_mask(pos_q, pos_k, self.window))
            if q.shape[2] == k.shape[2]:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            # chunked inference: queries sit at the end of the keys (bottom-right causal),
            # which keeps the flash and efficient kernels usable
            return F.scaled_dot_product_attention(q, k, v, attn_mask=causal_lower_right(q.shape[2], k.shape[2]))
        return attention_reference(q, k, v, pos_q, pos_k, self.score_bias(pos_q, pos_k), self.window)

    # -- contract ----------------------------------------------------------------------------
    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(k=None, v=None)

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        kept = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * batch * self.n_heads * kept * self.head_dim * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, seq_len: int) -> float:
        inner = self.n_heads * self.head_dim
        proj = 2 * 4 * self.d_model * inner
        ctx = (seq_len + 1) / 2 if self.window is None else min(self.window, (seq_len + 1) / 2)
        return proj + 2 * 2 * inner * ctx  # QK^T and PV over the average causal context


_QK_ONLY = [SDPA_BACKEND, TORCH_BACKEND]
_QUADRATIC = Capabilities(cost="O(L^2)", state="growing")


@register_mixer(
    name="nope",
    family="attention",
    description="causal softmax attention with no positional encoding",
    citation=f"{VASWANI}; Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization, arXiv:2305.19466",
    capabilities=_QUADRATIC,
    backends=_QK_ONLY,
    tiny={"n_heads": 2},
)
class NoPE(Attention):
    pass


class SinusoidalConfig(AttentionConfig):
    base: float = Field(10000.0, gt=1.0, description="wavelength base of the sin/cos features")


@register_mixer(
    name="sinusoidal",
    family="attention",
    description="attention with fixed sinusoidal absolute positions added to the q/k input",
    citation=VASWANI,
    capabilities=_QUADRATIC,
    backends=_QK_ONLY,
    tiny={"n_heads": 2},
)
class Sinusoidal(Attention):
    Config = SinusoidalConfig

    def qk_input(self, x, pos):
        return x + sinusoidal(pos, self.d_model, self.config.base).to(x.dtype)
