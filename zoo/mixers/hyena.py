"""Hyena: long implicit convolutions interleaved with data-controlled gating.

Poli, Massaroli, Nguyen, Fu, Dao, Baccus, Bengio, Ermon and Re 2023, "Hyena Hierarchy:
Towards Larger Convolutional Language Models", arXiv:2302.10866 (Section 3; the operator,
filter and modulation follow the authors' standalone HyenaOperator / HyenaFilter).

Order N (default 2):

    x [B, L, D] --in_proj--> (N + 1) D --short causal depthwise conv (width 3)--> x_0 .. x_{N-1}, v
    for i = N-1 .. 1:   v = h_i * (v . x_i) + bias_i . (v . x_i)      (long causal conv, by FFT)
    y = out_proj(v . x_0)

Implicit filters: h(l) = FFN(PE(l)) . (exp(-t |delta|) + shift), with PE(l) = [t, cos(2 pi f l / l_ref),
-sin(2 pi f l / l_ref)] over `(emb_dim - 1) / 2` bands f, t = l / l_ref, an FFN of sine activations
(one trainable frequency shared by its layers), and decay rates |delta| spread over channels
so that the decay reaches `target` between 0.3 and 1.5 of l_ref.

Length. The authors normalise positions by the run's own length; here positions are
scaled by a fixed `l_ref` (the training length of the paper's recipe) instead, so that the
filter at lag l is the same whatever length runs: then a cached continuation equals the
full forward, and the filter is generated for any length (no maximum length; lags past
l_ref extrapolate the features, and the decay window has made them small).

Cache. An implicit filter has no exact finite-state form, so chunked inference keeps what
the long convolutions need: their past inputs, `[B, T, D]` per order, a cache that grows
with the tokens seen (declared `growing`, counted by `state_bytes`); plus the short conv's
last two inputs. A chunk costs one FFT over the history; one token costs a dot product
over it.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from zoo.mixer import TORCH_BACKEND, Cache, Capabilities, Mixer, MixerConfig, param_bytes
from zoo.mixers.mamba import causal_conv
from zoo.mixers.s4d import fft_causal_conv
from zoo.registry import register_mixer

HYENA = ("Poli et al. 2023, Hyena Hierarchy: Towards Larger Convolutional Language Models, arXiv:2302.10866")


class HyenaConfig(MixerConfig):
    order: int = Field(2, ge=2, le=4, description="operator order N: N-1 long convolutions, N gates")
    short_filter: int = Field(3, ge=1, le=16, description="width of the short causal conv on the projections")
    filter_order: int = Field(64, ge=1, le=1024, description="width of the implicit filter FFN")
    emb_dim: int = Field(33, ge=3, le=257, description="positional features: t plus (emb_dim-1)/2 cos/sin bands")
    num_inner_mlps: int = Field(2, ge=0, le=8, description="hidden layers of the filter FFN")
    w: float = Field(1.0, gt=0, le=100, description="initial frequency of the sine activations")
    l_ref: int = Field(2048, ge=1, le=2**24, description="positions are scaled by l_ref (t = lag / l_ref)")
    fast_decay_pct: float = Field(0.3, gt=0, le=10, description="fastest channel decays to target at this t")
    slow_decay_pct: float = Field(1.5, gt=0, le=10, description="slowest channel decays to target at this t")
    target: float = Field(1e-2, gt=0, lt=1, description="filter magnitude reached at the decay time")
    shift: float = Field(0.0, ge=0, le=1, description="added to the decay window (0: pure exponential decay)")
    modulate: bool = Field(True, description="apply the exponential decay window to the filters")

    @model_validator(mode="after")
    def _check(self) -> HyenaConfig:
        if self.emb_dim % 2 == 0:
            raise ValueError(f"emb_dim={self.emb_dim} must be odd (t plus cos/sin pairs)")
        return self


class Sin(nn.Module):
    def __init__(self, dim: int, w: float):
        super().__init__()
        self.freq = nn.Parameter(w * torch.ones(1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sin(self.freq.float() * x)


class HyenaFilter(nn.Module):
    """h(l) for lags 0..length-1, `[channels, length]` in fp32, from fixed positional features."""

    def __init__(self, channels: int, c: HyenaConfig):
        super().__init__()
        self.c = c
        act = Sin(c.filter_order, c.w)  # one module, so every layer shares its frequency (as the authors do)
        layers: list[nn.Module] = [nn.Linear(c.emb_dim, c.filter_order), act]
        for _ in range(c.num_inner_mlps):
            layers += [nn.Linear(c.filter_order, c.filter_order), act]
        layers.append(nn.Linear(c.filter_order, channels, bias=False))
        self.implicit_filter = nn.Sequential(*layers)
        self.channels = channels

    def decay_rates(self, device) -> torch.Tensor:
        """|delta| per channel `[channels]`: fixed (not trained), from slow to fast."""
        c = self.c
        max_decay, min_decay = math.log(c.target) / c.fast_decay_pct, math.log(c.target) / c.slow_decay_pct
        return torch.linspace(min_decay, max_decay, self.channels, device=device).abs()

    def features(self, length: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """PE `[length, emb_dim]` and t `[length, 1]`."""
        lag = torch.arange(length, device=device, dtype=torch.float32)[:, None]
        t = lag / self.c.l_ref
        bands = (self.c.emb_dim - 1) // 2
        f = torch.linspace(1e-4, bands - 1, bands, device=device)
        angle = 2 * math.pi * f * t
        return torch.cat([t, torch.cos(angle), -torch.sin(angle)], dim=-1), t

    def forward(self, length: int, device) -> torch.Tensor:
        z, t = self.features(length, device)
        h = z
        for layer in self.implicit_filter:  # fp32 whatever the parameter dtype: the filter is small
            h = F.linear(h, layer.weight.float(), None if layer.bias is None else layer.bias.float()) \
                if isinstance(layer, nn.Linear) else layer(h)
        if self.c.modulate:
            h = h * (torch.exp(-t * self.decay_rates(device)) + self.c.shift)
        return h.t()


@register_mixer(
    name="hyena",
    family="long convolution",
    description="Hyena order-2 operator: short conv, implicit long filters (sine FFN, decay window), FFT conv",
    citation=HYENA,
    capabilities=Capabilities(cost="O(L log L)", state="growing"),
    backends=[TORCH_BACKEND],
    tiny={"filter_order": 8, "emb_dim": 5, "l_ref": 32},
    version=2,  # 2: the filter's sine frequencies no longer decay
)
class Hyena(Mixer):
    Config = HyenaConfig

    def __init__(self, d_model: int, config: HyenaConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        D, N = d_model, c.order
        self.in_proj = nn.Linear(D, (N + 1) * D)
        self.short_filter = nn.Conv1d((N + 1) * D, (N + 1) * D, c.short_filter, groups=(N + 1) * D,
                                      padding=c.short_filter - 1)
        self.filter_fn = HyenaFilter((N - 1) * D, c)
        self.bias = nn.Parameter(torch.randn((N - 1) * D))  # the long conv's skip term, per channel
        self.out_proj = nn.Linear(D, D)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """x `[B, L, D]` -> `[B, L, D]`; the cache, when given, is read and advanced."""
        self.select_backend(x)
        Bsz, L, D = x.shape
        N, start = self.config.order, cache.pos if cache is not None else 0
        u, short = causal_conv(self.in_proj(x).transpose(1, 2), self.short_filter.weight, self.short_filter.bias,
                               cache.short if cache is not None else None)
        *gates, v = u.transpose(1, 2).split(D, dim=-1)
        with torch.autocast(x.device.type, enabled=False):  # filters and FFTs in fp32
            k = self.filter_fn(start + L, x.device).view(N - 1, D, start + L)
            bias = self.bias.float().view(N - 1, D)
            v = v.float()
            for o, g in enumerate(reversed(gates[1:])):
                v = v * g.float()
                if cache is None:
                    y = fft_causal_conv(v, k[o])
                else:
                    past = cache.hist[o]
                    seen = torch.cat([past.float(), v], dim=1)  # [B, start + L, D]
                    if L == 1:  # one token: a dot product with the reversed filter
                        y = torch.einsum("bsd,ds->bd", seen, k[o].flip(-1))[:, None]
                    else:
                        y = fft_causal_conv(seen, k[o])[:, start:]
                    cache.hist[o] = torch.cat([past, v.to(past.dtype)], dim=1)
                v = y + bias[o] * v
            y = v * gates[0].float()
        if cache is not None:
            cache.short, cache.pos = short.to(cache.short.dtype), start + L
        return self.out_proj(y.to(x.dtype))

    # -- contract -------------------------------------------------------------------------------
    def new_cache(self, batch, device, dtype) -> Cache:
        c, D = self.config, self.d_model
        return Cache(short=torch.zeros(batch, (c.order + 1) * D, c.short_filter - 1, device=device, dtype=dtype),
                     hist=[torch.zeros(batch, 0, D, device=device, dtype=dtype) for _ in range(c.order - 1)])

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        c, D = self.config, self.d_model
        short = batch * (c.order + 1) * D * (c.short_filter - 1)
        return (short + (c.order - 1) * batch * seq_len * D) * param_bytes(dtype)

    def flops_per_token(self, seq_len: int) -> float:
        c, D, L = self.config, self.d_model, max(seq_len, 1)
        N, fo = c.order, c.filter_order
        proj = 2 * D * (N + 1) * D + 2 * D * D
        short = 2 * (N + 1) * D * c.short_filter
        # the filter is generated once per sequence, one lag per token
        filt = 2 * (c.emb_dim * fo + c.num_inner_mlps * fo * fo + fo * (N - 1) * D) + 3 * (N - 1) * D
        n = 1 << (2 * L - 1).bit_length()
        fft = (N - 1) * D * (3 * 2.5 * n * math.log2(n) + 6 * (n // 2 + 1)) / L
        return proj + short + filt + fft + 4 * N * D  # gates and the bias term
