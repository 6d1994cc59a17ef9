"""S4D: the diagonal structured state space model.

Gu, Gupta, Goel and Re 2022, "On the Parameterization and Initialization of Diagonal State
Space Models", arXiv:2206.11893 (the S4D kernel with ZOH discretisation, S4D-Lin and
S4D-Inv initialisations, and the standalone S4D layer: GELU, then a GLU output projection).

Per channel h (H = d_model channels, N/2 complex modes n, B folded into C):

    A_n = -exp(log_A_real_n) + i A_imag_n;  dt = exp(log_dt);  dA = exp(dt A)
    state:   s_t = dA s_{t-1} + (dA - 1) / A * u_t           (zero-order hold)
    output:  y_t = 2 Re(C . s_t) + D u_t
    kernel:  K_l = 2 Re(sum_n C_n (dA_n - 1) / A_n dA_n^l),   y = K * u + D u  (causal conv)

Training runs the convolution with FFTs (O(L log L)); decoding runs the recurrence, one
token at a time (O(N) per token). A cached chunk of several tokens is the convolution plus
the carried state's decayed contribution, and its closing state, both in closed form.
The powers dA^l are built in blocks (dA^(jT + r) = dA^(jT) dA^r), so the kernel is a small
complex matmul instead of an [H, N/2, L] tensor.

Shapes: x `[B, L, H]`; kernel `[H, L]`; state `[B, H, N/2]` complex64 (fp32 parts whatever
the activation dtype).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from zoo.mixer import TORCH_BACKEND, Cache, Capabilities, Mixer, MixerConfig
from zoo.registry import register_mixer

S4D = ("Gu, Gupta, Goel and Re 2022, On the Parameterization and Initialization of Diagonal State Space Models, "
       "arXiv:2206.11893")


def block_powers(dtA: torch.Tensor, length: int, offset: int = 0):
    """dA^(offset + j T + r) = outer[..., j] * inner[..., r] for l = j T + r < length.
    dtA `[H, M]` complex. Returns outer `[H, M, J]`, inner `[H, M, T]` with J T >= length."""
    T = max(1, math.isqrt(max(length - 1, 0)) + 1)
    J = -(-length // T)
    r = torch.arange(T, device=dtA.device, dtype=torch.float32)
    j = torch.arange(J, device=dtA.device, dtype=torch.float32) * T + offset
    return torch.exp(dtA[..., None] * j), torch.exp(dtA[..., None] * r)


def fft_causal_conv(u: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """y_t = sum_{s<=t} k_{t-s} u_s along dim 1. u `[B, L, H]` fp32, k `[H, L]` fp32 -> `[B, L, H]`.
    The transforms run along the last dim of a `[B, H, L]` view (the layout cuFFT batches best)."""
    L = u.shape[1]
    n = 1 << (2 * L - 1).bit_length()  # zero padding to >= 2L - 1 makes the circular conv linear
    uf = torch.fft.rfft(u.transpose(1, 2), n=n)  # [B, H, n/2 + 1]
    kf = torch.fft.rfft(k, n=n)
    return torch.fft.irfft(uf * kf, n=n)[..., :L].transpose(1, 2)


class S4DConfig(MixerConfig):
    d_state: int = Field(64, ge=2, le=1024, description="state size N per channel (N/2 complex conjugate pairs)")
    init: Literal["lin", "inv"] = Field("lin", description="S4D-Lin (A_n = -1/2 + i pi n) or S4D-Inv")
    dt_min: float = Field(0.001, gt=0, le=1, description="smallest initial step dt")
    dt_max: float = Field(0.1, gt=0, le=1, description="largest initial step dt")

    @model_validator(mode="after")
    def _check(self) -> S4DConfig:
        if self.d_state % 2:
            raise ValueError(f"d_state={self.d_state} must be even (modes come in conjugate pairs)")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min={self.dt_min} > dt_max={self.dt_max}")
        return self


@register_mixer(
    name="s4d",
    family="state space",
    description="S4D diagonal SSM: FFT convolution to train, recurrence to decode; GELU + GLU output",
    citation=S4D,
    capabilities=Capabilities(cost="O(L log L)", state="fixed"),
    backends=[TORCH_BACKEND],
    tiny={"d_state": 8},
    version=2,  # 2: log_A_real and A_imag no longer decay
)
class S4DMixer(Mixer):
    Config = S4DConfig

    def __init__(self, d_model: int, config: S4DConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        H, M = d_model, c.d_state // 2
        self.modes = M
        self.log_dt = nn.Parameter(torch.rand(H) * (math.log(c.dt_max) - math.log(c.dt_min)) + math.log(c.dt_min))
        # C ~ complex normal (unit variance), stored as real pairs [H, M, 2]
        self.C = nn.Parameter(torch.randn(H, M, 2) * 0.5**0.5)
        self.log_A_real = nn.Parameter(torch.log(0.5 * torch.ones(H, M)))
        n = torch.arange(M, dtype=torch.float32)
        imag = math.pi * n if c.init == "lin" else (c.d_state / math.pi) * (c.d_state / (2 * n + 1) - 1)
        self.A_imag = nn.Parameter(imag.repeat(H, 1))
        self.D = nn.Parameter(torch.randn(H))
        self.out_proj = nn.Linear(H, 2 * H)  # position-wise output layer, then GLU
        for p in (self.log_dt, self.log_A_real, self.A_imag):
            p._no_weight_decay = True

    # -- the SSM in fp32 / complex64 ---------------------------------------------------------------
    def ssm(self):
        """dtA `[H, M]`, the ZOH input factor dB = (dA - 1) / A and C, all complex64."""
        A = torch.complex(-torch.exp(self.log_A_real.float()), self.A_imag.float())
        dtA = A * torch.exp(self.log_dt.float())[:, None]
        C = torch.view_as_complex(self.C.float().contiguous())
        return dtA, torch.expm1(dtA) / A, C

    def kernel(self, length: int) -> torch.Tensor:
        """K `[H, length]` for lags 0..length-1."""
        dtA, dB, C = self.ssm()
        outer, inner = block_powers(dtA, length)
        K = (C * dB)[..., None].mul(outer).transpose(-1, -2) @ inner  # [H, J, T]
        return 2 * K.real.reshape(K.shape[0], -1)[:, :length]

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """x `[B, L, H]` -> `[B, L, H]`; the cache, when given, is read and advanced."""
        self.select_backend(x)
        L = x.shape[1]
        with torch.autocast(x.device.type, enabled=False):
            u = x.float()
            if cache is not None and L == 1:
                y, cache.state = self._step(u[:, 0], cache.state)
                y = y[:, None]
            else:
                y = fft_causal_conv(u, self.kernel(L))
                if cache is not None:
                    y = y + self._from_state(cache.state, L)
                    cache.state = self._state_after(cache.state, u)
            y = F.gelu(y + self.D.float() * u)
        if cache is not None:
            cache.pos += L
        return F.glu(self.out_proj(y.to(x.dtype)), dim=-1)

    def _step(self, u: torch.Tensor, s: torch.Tensor):
        """The recurrence for one token: u `[B, H]`, s `[B, H, M]`."""
        dtA, dB, C = self.ssm()
        s = torch.exp(dtA) * s + dB * u[..., None]
        return 2 * (s * C).sum(-1).real, s

    def _from_state(self, s: torch.Tensor, length: int) -> torch.Tensor:
        """2 Re(C . dA^(t+1) s) for t < length: the carried state's part of the outputs `[B, L, H]`."""
        dtA, _, C = self.ssm()
        outer, inner = block_powers(dtA, length, offset=1)
        y = ((s * C)[..., None] * outer).transpose(-1, -2) @ inner  # [B, H, J, T]
        return 2 * y.real.reshape(*y.shape[:2], -1)[..., :length].transpose(1, 2)

    def _state_after(self, s: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """s_{L-1} = dA^L s + sum_t dA^(L-1-t) dB u_t for a chunk u `[B, L, H]`."""
        dtA, dB, _ = self.ssm()
        L = u.shape[1]
        outer, inner = block_powers(dtA, L)
        T, J = inner.shape[-1], outer.shape[-1]
        rev = F.pad(u.flip(1), (0, 0, 0, J * T - L)).transpose(1, 2).reshape(u.shape[0], -1, J, T)  # lag jT + r
        acc = ((rev.to(inner.dtype) @ inner.transpose(-1, -2)[None]) * outer.transpose(-1, -2)).sum(2)  # [B, H, M]
        return torch.exp(dtA * L) * s + dB * acc

    # -- contract -------------------------------------------------------------------------------
    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(state=torch.zeros(batch, self.d_model, self.modes, device=device, dtype=torch.complex64))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        return batch * self.d_model * self.modes * 8  # complex64 whatever the activation dtype

    def flops_per_token(self, seq_len: int) -> float:
        H, M = self.d_model, self.modes
        n = 1 << (2 * max(seq_len, 1) - 1).bit_length()
        kernel = 8 * H * M  # one complex multiply-add per mode and lag, amortised over the sequence
        fft = H * 3 * 2.5 * n * math.log2(n) / max(seq_len, 1) + 6 * H * n / 2 / max(seq_len, 1)
        return kernel + fft + 2 * H * 2 * H + 10 * H  # output projection; D skip, GELU and GLU
