"""`short-conv-glr`: causal short convolution, then a gated linear recurrence.

    u = conv4(W_in x)                         causal depthwise conv, width 4
    a = sigmoid(W_a x) ** (1 / tau)           per-channel decay in (0, 1)
    h_t = a_t * h_{t-1} + (1 - a_t) * u_t     the recurrence (a leaky average)
    y = W_out(h * silu(W_g x))

Training uses a chunked parallel form (exact, stable: decays enter only as differences
of cumulative log-decays inside a chunk); the cache keeps the last 3 conv inputs and h.
Shapes: x `[B, L, D]`, u, a, h `[B, L, E]` with E = expand * D.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zoo.mixer import TORCH_BACKEND, Cache, Capabilities, Mixer, MixerConfig
from zoo.registry import register_mixer


class ShortConvGLRConfig(MixerConfig):
    expand: int = Field(1, ge=1, le=4, description="inner width = expand * d_model")
    conv_width: int = Field(4, ge=1, le=16, description="causal short convolution width")
    tau: float = Field(1.0, gt=0, le=16, description="decay temperature: larger keeps memory longer")
    chunk: int = Field(64, ge=1, le=1024, description="chunk length of the parallel form")


def glr_chunked(u: torch.Tensor, log_a: torch.Tensor, h0: torch.Tensor, chunk: int) -> torch.Tensor:
    """h_t = a_t h_{t-1} + (1 - a_t) u_t for u, log_a `[B, L, E]`, h0 `[B, E]` -> h `[B, L, E]`."""
    B, L, E = u.shape
    out, h = [], h0
    for s in range(0, L, chunk):
        la = log_a[:, s:s + chunk].float()
        x = ((1 - la.exp()) * u[:, s:s + chunk].float())
        cum = la.cumsum(1)                                     # [B, C, E]
        diff = cum[:, :, None, :] - cum[:, None, :, :]         # [B, C(t), C(s), E] = sum log a over (s, t]
        C = la.shape[1]
        mask = torch.ones(C, C, dtype=torch.bool, device=u.device).tril()
        w = diff.masked_fill(~mask[None, :, :, None], float("-inf")).exp()
        hc = torch.einsum("btse,bse->bte", w, x) + cum.exp() * h[:, None, :].float()
        out.append(hc)
        h = hc[:, -1]
    return torch.cat(out, 1).to(u.dtype)


@register_mixer(
    name="short-conv-glr",
    family="example",
    description="causal short convolution followed by a gated linear recurrence (example plugin)",
    citation="example plugin of mixer-zoo; in the spirit of Martin and Cundy 2018 and Hyena's short convolutions",
    capabilities=Capabilities(cost="O(L)", state="fixed"),
    backends=[TORCH_BACKEND],
    tiny={"chunk": 5},
)
class ShortConvGLR(Mixer):
    Config = ShortConvGLRConfig

    def __init__(self, d_model: int, config: ShortConvGLRConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        self.inner = c.expand * d_model
        self.w_in = nn.Linear(d_model, self.inner, bias=False)
        self.w_a = nn.Linear(d_model, self.inner)
        self.w_g = nn.Linear(d_model, self.inner, bias=False)
        self.w_out = nn.Linear(self.inner, d_model, bias=False)
        self.conv = nn.Parameter(torch.randn(self.inner, c.conv_width) / c.conv_width**0.5)
        nn.init.constant_(self.w_a.bias, 2.0)  # start with slow decays: memory over ~8 tokens

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        k = self.config.conv_width
        v = self.w_in(x)
        past = cache.conv if cache is not None else v.new_zeros(B, k - 1, self.inner)
        vv = torch.cat([past.to(v.dtype), v], 1)                       # [B, k-1+L, E]
        u = sum(vv[:, i:i + L] * self.conv[:, i] for i in range(k))    # causal depthwise conv
        log_a = F.logsigmoid(self.w_a(x).float()) / self.config.tau
        h0 = cache.h if cache is not None else x.new_zeros(B, self.inner, dtype=torch.float32)
        h = glr_chunked(u, log_a, h0, self.config.chunk)
        if cache is not None:
            cache.conv, cache.h, cache.pos = vv[:, vv.shape[1] - (k - 1):], h[:, -1].float(), cache.pos + L
        return self.w_out(h * F.silu(self.w_g(x)))

    def new_cache(self, batch, device, dtype) -> Cache:
        k = self.config.conv_width
        return Cache(conv=torch.zeros(batch, k - 1, self.inner, device=device, dtype=dtype),
                     h=torch.zeros(batch, self.inner, device=device, dtype=torch.float32))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        el = torch.empty((), dtype=dtype).element_size()
        return batch * self.inner * ((self.config.conv_width - 1) * el + 4)

    def flops_per_token(self, seq_len: int) -> float:
        d, e, c = self.d_model, self.inner, self.config.chunk
        return 2 * 4 * d * e + 2 * self.config.conv_width * e + 2 * min(c, seq_len) * e
