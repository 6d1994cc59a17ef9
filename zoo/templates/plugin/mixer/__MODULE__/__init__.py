"""`__NAME__`: a causal depthwise convolution with a SiLU gate (replace with your mixer).

    y = W_out( conv_k(W_in x) * silu(W_g x) )

Shapes: x `[B, L, D]` -> y `[B, L, D]`. The cache keeps the last k-1 projected inputs,
so chunked inference equals one full forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zoo.mixer import TORCH_BACKEND, Cache, Capabilities, Mixer, MixerConfig
from zoo.registry import register_mixer


class __CLASS__Config(MixerConfig):
    width: int = Field(4, ge=1, le=64, description="convolution width (tokens)")


@register_mixer(
    name="__NAME__",
    family="long convolution",
    description="causal depthwise convolution with a SiLU gate",
    citation="your paper here",
    capabilities=Capabilities(cost="O(L)", state="fixed"),
    backends=[TORCH_BACKEND],
)
class __CLASS__(Mixer):
    Config = __CLASS__Config

    def __init__(self, d_model: int, config: __CLASS__Config | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        self.w_in = nn.Linear(d_model, d_model, bias=False)
        self.w_g = nn.Linear(d_model, d_model, bias=False)
        self.w_out = nn.Linear(d_model, d_model, bias=False)
        self.kernel = nn.Parameter(torch.randn(d_model, self.config.width) / self.config.width**0.5)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, L, D = x.shape
        k = self.config.width
        v = self.w_in(x)
        past = cache.past if cache is not None else v.new_zeros(B, k - 1, D)
        vv = torch.cat([past.to(v.dtype), v], dim=1)                     # [B, k-1+L, D]
        u = sum(vv[:, i:i + L] * self.kernel[:, i] for i in range(k))
        if cache is not None:
            cache.past, cache.pos = vv[:, vv.shape[1] - (k - 1):], cache.pos + L
        return self.w_out(u * F.silu(self.w_g(x)))

    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(past=torch.zeros(batch, self.config.width - 1, self.d_model, device=device, dtype=dtype))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        return batch * (self.config.width - 1) * self.d_model * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, seq_len: int) -> float:
        return 2 * 3 * self.d_model**2 + 2 * self.config.width * self.d_model
