"""Mamba (Mamba-1): the selective state space model.

Gu and Dao 2023, "Mamba: Linear-Time Sequence Modeling with Selective State Spaces",
arXiv:2312.00752 (Algorithm 2 and Section 3.4; initialisation from Appendix and the
official `mamba_ssm.modules.mamba_simple`).

    x [B, L, D] --in_proj--> u, z [B, L, E]                      E = expand * D
    u --causal depthwise conv (width 4)--> SiLU --> u
    u --x_proj--> dt_low [R], B [N], C [N];   delta = softplus(dt_proj(dt_low))   [B, L, E]
    h_t = exp(delta_t A) * h_{t-1} + delta_t B_t u_t             h [B, E, N], A = -exp(A_log)
    y_t = C_t . h_t + D u_t;   y = y * SiLU(z);   out = out_proj(y)

Forms (all equal up to summation order):
- `selective_scan_naive`: one token at a time, the textbook recurrence (tests only).
- `selective_scan_chunked` (the `torch` backend): a parallel prefix scan (Hillis-Steele
  doubling) inside chunks of `scan_chunk` tokens and state passing between chunks, with the
  chunk recomputed in backward when its [B, T, E, N] intermediates are large.
- `mamba_ssm` backend: the fused CUDA selective scan (`selective_scan_fn`), with
  `causal_conv1d` when installed (then `mamba_inner_fn` for whole sequences). The kernel
  starts from a zero state; continuing a cached sequence adds the carried state's
  contribution, which is linear in it and computed in torch.

Cache: the last `d_conv - 1` conv inputs [B, E, d_conv - 1] (activation dtype) and the
SSM state [B, E, N] (always fp32). Single-token steps run the torch recurrence.
"""

from __future__ import annotations

import functools
import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.utils.checkpoint import checkpoint

from zoo.env import has_module
from zoo.mixer import TORCH_BACKEND, Backend, Cache, Capabilities, Mixer, MixerConfig, param_bytes
from zoo.registry import register_mixer

MAMBA = "Gu and Dao 2023, Mamba: Linear-Time Sequence Modeling with Selective State Spaces, arXiv:2312.00752"


# -- optional kernels -----------------------------------------------------------------------

@functools.cache
def mamba_ssm_import_error() -> str | None:
    """None when mamba_ssm's kernels import, else why not (checked once per process)."""
    if not has_module("mamba_ssm"):
        return "mamba_ssm not installed"
    try:
        import mamba_ssm.ops.selective_scan_interface  # noqa: F401
        import mamba_ssm.ops.triton.ssd_combined  # noqa: F401
    except Exception as e:  # a broken CUDA build must not break the zoo
        return f"mamba_ssm does not import ({type(e).__name__}: {e})"
    return None


def check_mamba_ssm(device: torch.device) -> str | None:
    why = [r for r in (mamba_ssm_import_error(), None if device.type == "cuda" else "needs CUDA") if r]
    return "; ".join(why) or None


@functools.cache
def causal_conv1d_fn():
    """The `causal_conv1d` CUDA function, or None when that package is absent or broken."""
    if not has_module("causal_conv1d"):
        return None
    try:
        from causal_conv1d import causal_conv1d_fn as fn
    except Exception:
        return None
    return fn


MAMBA_SSM_BACKEND = Backend(
    "mamba_ssm", "mamba_ssm CUDA selective scan (with causal-conv1d when installed)", check_mamba_ssm
)


# -- shared pieces (also used by mamba2 and hyena) -----------------------------------------------

def causal_conv(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                state: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal depthwise conv. x `[B, C, L]`, weight `[C, 1, W]`, state `[B, C, W-1]` (the
    previous W-1 inputs, zeros at the start). Returns y `[B, C, L]` and the new state."""
    W, L = weight.shape[-1], x.shape[-1]
    # the whole sequence zero-padded, then the first W-1 outputs again with the state in front:
    # concatenating the state to a long (often transposed) x would copy all of it
    y = F.conv1d(x, weight, bias, padding=W - 1, groups=x.shape[1])[..., :L]
    if state is None:
        state = x.new_zeros(x.shape[0], x.shape[1], W - 1)
    else:
        n = min(W - 1, L)
        head = torch.cat([state.to(x.dtype), x[..., :n]], dim=-1)
        y[..., :n] = F.conv1d(head, weight, bias, groups=x.shape[1])
    return y, conv_state_after(state, x)


def conv_state_after(state: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The conv state `[B, C, W-1]` after feeding x `[B, C, L]`: the last W-1 inputs (a copy, so
    the state does not keep x alive)."""
    k = state.shape[-1]
    if x.shape[-1] >= k:
        return x[..., x.shape[-1] - k:].clone()
    return torch.cat([state.to(x.dtype), x], dim=-1)[..., -k:]


def inverse_softplus(y: torch.Tensor) -> torch.Tensor:
    """softplus^-1(y) = y + log(1 - exp(-y)), so that softplus(bias) starts at y."""
    return y + torch.log(-torch.expm1(-y))


def dt_bias_init(n: int, dt_min: float, dt_max: float, floor: float, device=None) -> torch.Tensor:
    """Mamba's dt initialisation: dt log-uniform in [dt_min, dt_max] (clamped at `floor`),
    stored as the bias before softplus."""
    dt = torch.exp(torch.rand(n, device=device) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
    return inverse_softplus(dt.clamp(min=floor))


# -- reference scans -------------------------------------------------------------------------

def selective_scan_naive(u, delta, A, B, C, h0=None):
    """The recurrence, one token at a time. u, delta `[B, L, E]`; A `[E, N]`; B, C `[B, L, N]`;
    h0 `[B, E, N]`. Returns y `[B, L, E]` (without the D skip and gate) and the last state."""
    h = h0 if h0 is not None else u.new_zeros(u.shape[0], A.shape[0], A.shape[1])
    ys = []
    for t in range(u.shape[1]):
        h = torch.exp(delta[:, t, :, None] * A) * h + (delta[:, t] * u[:, t])[..., None] * B[:, t, None, :]
        ys.append(torch.einsum("ben,bn->be", h, C[:, t]))
    return torch.stack(ys, dim=1), h


def _scan_chunk(u, delta, A, B, C, h0):
    """One chunk: h_t = a_t * h_{t-1} + b_t by log2(T) doubling steps (Hillis-Steele), with
    a_t = exp(delta_t A), b_t = delta_t u_t B_t, all `[B, T, E, N]`."""
    a = torch.exp(delta[..., None] * A)
    b = (delta * u)[..., None] * B[:, :, None, :]
    b = torch.cat([b[:, :1] + a[:, :1] * h0[:, None], b[:, 1:]], dim=1)  # fold the carried state in
    T, k = u.shape[1], 1
    while k < T:  # after the step with stride k, b_t sums the inputs of the last 2k tokens
        b = torch.cat([b[:, :k], b[:, k:] + a[:, k:] * b[:, :-k]], dim=1)
        if 2 * k < T:
            a = torch.cat([a[:, :k], a[:, k:] * a[:, :-k]], dim=1)
        k *= 2
    return torch.einsum("bten,btn->bte", b, C), b[:, -1]


def selective_scan_chunked(u, delta, A, B, C, h0=None, chunk: int = 128, recompute: bool | None = None):
    """Chunked parallel scan (the torch reference). Shapes as `selective_scan_naive`; fp32.

    A Python loop runs over chunks only; inside a chunk the scan is parallel. `recompute`
    (default: when the chunk's `[B, T, E, N]` tensors exceed 4M elements and gradients are
    on) recomputes each chunk in backward instead of keeping its intermediates, which is
    what lets the fallback train at long lengths."""
    Bsz, L, E = u.shape
    h = h0 if h0 is not None else u.new_zeros(Bsz, E, A.shape[1])
    if recompute is None:
        recompute = Bsz * min(chunk, L) * E * A.shape[1] > 2**22
    recompute = recompute and torch.is_grad_enabled()
    ys = []
    # split, not slicing in the loop: a slice's backward writes a full-length gradient per chunk
    for u_c, d_c, B_c, C_c in zip(*(t.split(chunk, dim=1) for t in (u, delta, B, C)), strict=True):
        args = (u_c, d_c, A, B_c, C_c, h)
        y, h = checkpoint(_scan_chunk, *args, use_reentrant=False) if recompute else _scan_chunk(*args)
        ys.append(y)
    return torch.cat(ys, dim=1), h


def initial_state_output(h0, delta, A, C, block: int = 512):
    """What a carried state h0 `[B, E, N]` adds to y over the next tokens, and its decayed
    value at the end: y_t += C_t . (exp(A cum_t) h0), cum_t = sum_{s<=t} delta_s. delta `[B, E, L]`
    (after softplus), C `[B, N, L]`, kernel layout; done in blocks to bound memory."""
    cum = delta.cumsum(-1)
    parts = []
    for cum_b, C_b in zip(cum.split(block, dim=-1), C.split(block, dim=-1), strict=True):
        dec = torch.exp(A[None, :, :, None] * cum_b[:, :, None])
        parts.append(torch.einsum("benl,ben,bnl->bel", dec, h0, C_b.to(dec.dtype)))
    return torch.cat(parts, dim=-1), torch.exp(A[None] * cum[:, :, -1:]) * h0


# -- the mixer ---------------------------------------------------------------------------------

class MambaConfig(MixerConfig):
    d_state: int = Field(16, ge=1, le=256, description="SSM state size N per channel")
    d_conv: int = Field(4, ge=1, le=16, description="width of the causal depthwise conv")
    expand: int = Field(2, ge=1, le=8, description="inner width E = expand * d_model")
    dt_rank: int | None = Field(None, ge=1, le=4096, description="rank of the delta projection (default ceil(d/16))")
    dt_min: float = Field(0.001, gt=0, le=1, description="smallest initial delta")
    dt_max: float = Field(0.1, gt=0, le=1, description="largest initial delta")
    dt_init_floor: float = Field(1e-4, gt=0, le=1, description="initial deltas are clamped at this floor")
    dt_scale: float = Field(1.0, gt=0, le=100, description="scale of the dt_proj weight init")
    dt_init: Literal["random", "constant"] = Field("random", description="dt_proj weight: uniform or constant")
    conv_bias: bool = Field(True, description="bias in the depthwise conv")
    bias: bool = Field(False, description="bias in the in/out projections")
    scan_chunk: int = Field(128, ge=1, le=8192, description="tokens per chunk of the torch parallel scan")

    @model_validator(mode="after")
    def _dt_range(self) -> MambaConfig:
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min={self.dt_min} > dt_max={self.dt_max}")
        return self


@register_mixer(
    name="mamba",
    family="state space",
    description="Mamba-1 selective SSM: input-dependent delta, B, C; diagonal A; SiLU gate",
    citation=MAMBA,
    capabilities=Capabilities(cost="O(L)", state="fixed"),
    backends=[MAMBA_SSM_BACKEND, TORCH_BACKEND],
    tiny={"d_state": 4, "scan_chunk": 8},
    version=2,  # 2: A_log no longer decays
)
class Mamba(Mixer):
    """Mamba-1 block mixer. Parameter names follow `mamba_ssm.Mamba`, so weights load across."""

    Config = MambaConfig

    def __init__(self, d_model: int, config: MambaConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        E, N = c.expand * d_model, c.d_state
        self.d_inner, self.d_state = E, N
        self.dt_rank = c.dt_rank or math.ceil(d_model / 16)
        self.in_proj = nn.Linear(d_model, 2 * E, bias=c.bias)
        self.conv1d = nn.Conv1d(E, E, c.d_conv, groups=E, padding=c.d_conv - 1, bias=c.conv_bias)
        self.x_proj = nn.Linear(E, self.dt_rank + 2 * N, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, E, bias=True)
        self.out_proj = nn.Linear(E, d_model, bias=c.bias)
        # dt_proj: weight keeps the variance of delta at init, bias puts softplus(bias) in [dt_min, dt_max]
        std = self.dt_rank**-0.5 * c.dt_scale
        with torch.no_grad():
            if c.dt_init == "constant":
                nn.init.constant_(self.dt_proj.weight, std)
            else:
                nn.init.uniform_(self.dt_proj.weight, -std, std)
            self.dt_proj.bias.copy_(dt_bias_init(E, c.dt_min, c.dt_max, c.dt_init_floor, self.dt_proj.bias.device))
        # S4D-real initialisation: A_n = -(n + 1), the same for every channel; D = 1
        A = torch.arange(1, N + 1, dtype=torch.float32).repeat(E, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(E))
        for p in (self.A_log, self.D, self.dt_proj.bias):
            p._no_weight_decay = True

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """x `[B, L, D]` -> `[B, L, D]`; the cache, when given, is read and advanced."""
        backend = self.select_backend(x)
        if backend == "mamba_ssm" and not (cache is not None and x.shape[1] == 1):
            return self._forward_mamba_ssm(x, cache)
        return self._forward_torch(x, cache)

    def _forward_torch(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        u, z = self.in_proj(x).chunk(2, dim=-1)  # [B, L, E] each
        u, conv_state = causal_conv(u.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                                    cache.conv if cache is not None else None)
        u = F.silu(u).transpose(1, 2)
        dt_low, Bm, Cm = self.x_proj(u).split([self.dt_rank, self.d_state, self.d_state], dim=-1)
        with torch.autocast(x.device.type, enabled=False):  # the scan runs in fp32
            delta = F.softplus(F.linear(dt_low, self.dt_proj.weight).float() + self.dt_proj.bias.float())
            A = -torch.exp(self.A_log.float())
            u32 = u.float()
            y, h = selective_scan_chunked(u32, delta, A, Bm.float(), Cm.float(),
                                          cache.ssm if cache is not None else None, self.config.scan_chunk)
            y = (y + u32 * self.D.float()) * F.silu(z.float())
        if cache is not None:
            cache.conv, cache.ssm, cache.pos = conv_state.to(cache.conv.dtype), h, cache.pos + x.shape[1]
        return self.out_proj(y.to(x.dtype))

    def _forward_mamba_ssm(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        from mamba_ssm.ops.selective_scan_interface import mamba_inner_fn, selective_scan_fn

        Bsz, L, _ = x.shape
        E, N, R = self.d_inner, self.d_state, self.dt_rank
        # in_proj straight into the kernels' [B, 2E, L] layout (as mamba_ssm does)
        xz = (self.in_proj.weight @ x.reshape(Bsz * L, -1).t()).view(2 * E, Bsz, L).permute(1, 0, 2)
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias.to(xz.dtype)[:, None]
        A = -torch.exp(self.A_log.float())
        conv_fn = causal_conv1d_fn()
        if cache is None and conv_fn is not None:
            return mamba_inner_fn(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight,
                                  self.dt_proj.weight, self.out_proj.weight, self.out_proj.bias, A, None, None,
                                  self.D.float(), delta_bias=self.dt_proj.bias.float(), delta_softplus=True)
        u, z = xz.chunk(2, dim=1)
        fresh, u_raw = cache is None or cache.pos == 0, u
        if conv_fn is not None and fresh:
            u = conv_fn(u, self.conv1d.weight.squeeze(1), self.conv1d.bias, activation="silu")
        elif cache is None:
            u = F.silu(self.conv1d(u)[..., :L])
        else:
            u = F.silu(causal_conv(u, self.conv1d.weight, self.conv1d.bias, cache.conv)[0])
        x_dbl = F.linear(u.transpose(1, 2).reshape(Bsz * L, E), self.x_proj.weight)  # [(B L), R + 2N]
        dt = (self.dt_proj.weight @ x_dbl[:, :R].t()).view(E, Bsz, L).permute(1, 0, 2)
        Bm = x_dbl[:, R:R + N].view(Bsz, L, N).transpose(1, 2).contiguous()
        Cm = x_dbl[:, R + N:].view(Bsz, L, N).transpose(1, 2).contiguous()
        out = selective_scan_fn(u, dt, A, Bm, Cm, self.D.float(), z=z, delta_bias=self.dt_proj.bias.float(),
                                delta_softplus=True, return_last_state=cache is not None)
        if cache is not None:
            y, h = out
            h = h.float()
            if not fresh:  # the kernel started from zero: add what the carried state contributes
                delta = F.softplus(dt.float() + self.dt_proj.bias.float()[:, None])
                extra, decayed = initial_state_output(cache.ssm, delta, A, Cm)
                y = y + (extra * F.silu(z.float())).to(y.dtype)
                h = h + decayed
            state = conv_state_after(cache.conv, u_raw)
            cache.conv, cache.ssm, cache.pos = state.to(cache.conv.dtype), h, cache.pos + L
        else:
            y = out
        return self.out_proj(y.transpose(1, 2))

    # -- contract -------------------------------------------------------------------------------
    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(conv=torch.zeros(batch, self.d_inner, self.config.d_conv - 1, device=device, dtype=dtype),
                     ssm=torch.zeros(batch, self.d_inner, self.d_state, device=device, dtype=torch.float32))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        conv = batch * self.d_inner * (self.config.d_conv - 1) * param_bytes(dtype)
        return conv + batch * self.d_inner * self.d_state * 4  # the SSM state stays fp32

    def flops_per_token(self, seq_len: int) -> float:
        d, E, N, R = self.d_model, self.d_inner, self.d_state, self.dt_rank
        proj = 2 * d * 2 * E + 2 * E * (R + 2 * N) + 2 * R * E + 2 * E * d
        conv = 2 * E * self.config.d_conv
        scan = 7 * E * N  # exp(delta A), delta B u, the update h = a h + b, and C . h
        return proj + conv + scan + 6 * E  # softplus, D skip and the SiLU gate
