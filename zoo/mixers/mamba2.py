"""Mamba-2: state space duality (SSD).

Dao and Gu 2024, "Transformers are SSMs: Generalized Models and Efficient Algorithms Through
Structured State Space Duality", arXiv:2405.21060 (Section 6, the chunked SSD algorithm;
block and initialisation as the official `mamba_ssm.modules.mamba2`).

    x [B, L, D] --in_proj--> z [E], xBC [E + 2 G N], dt [H]          E = expand * D = H * P
    xBC --causal depthwise conv (width 4)--> SiLU --> x [B, L, H, P], B, C [B, L, G, N]
    dt = softplus(dt + dt_bias);  A = -exp(A_log)  (one scalar decay per head)
    h_t = exp(dt_t A) h_{t-1} + dt_t x_t B_t^T          h [B, H, P, N]; heads share B, C in groups
    y_t = h_t C_t + D x_t;  y = RMSNorm_groups(y * SiLU(z));  out = out_proj(y)

Forms:
- `ssd_naive`: the recurrence, one token at a time (tests only).
- `ssd_chunked` (the `torch` backend): the SSD algorithm with matmuls. Inside each chunk of
  Q tokens the output is a masked, decayed attention-like product (C B^T . L) x; each
  chunk's final state comes from another product; a scan over chunks passes the states;
  the states then add their decayed contribution C h to the next chunk's outputs.
- `mamba_ssm` backend: the Triton `mamba_chunk_scan_combined` (initial state in, final
  state out, so cached continuation stays on the kernel), with `mamba_split_conv1d_scan_combined`
  for whole sequences when causal-conv1d is installed. Those kernels index in int32: a call
  past `kernel_tokens()` tokens splits the batch, or runs the sequence in segments.

Cache: the last `d_conv - 1` conv inputs [B, E + 2GN, d_conv - 1] (activation dtype) and the
SSM state [B, H, P, N] (always fp32). Single-token steps run the recurrence itself (`ssd_step`;
on the `mamba_ssm` backend its fused `selective_state_update`), not the chunked form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from zoo.errors import ZooError
from zoo.mixer import TORCH_BACKEND, Backend, Cache, Capabilities, Mixer, MixerConfig, param_bytes
from zoo.mixers.mamba import causal_conv, causal_conv1d_fn, check_mamba_ssm, conv_state_after, dt_bias_init
from zoo.registry import register_mixer

MAMBA2 = ("Dao and Gu 2024, Transformers are SSMs: Generalized Models and Efficient Algorithms Through "
          "Structured State Space Duality, arXiv:2405.21060")

MAMBA_SSM_SSD_BACKEND = Backend(
    "mamba_ssm", "mamba_ssm Triton SSD kernels (mamba_chunk_scan_combined)", check_mamba_ssm
)


# -- reference forms ---------------------------------------------------------------------------

def ssd_naive(x, dt, A, B, C, h0=None):
    """The recurrence, one token at a time. x `[B, L, H, P]`, dt `[B, L, H]` (after softplus),
    A `[H]` (negative), B, C `[B, L, G, N]`, h0 `[B, H, P, N]`. Returns y `[B, L, H, P]`
    (without the D skip) and the last state."""
    b, length, h, p = x.shape
    r = h // B.shape[2]
    Bh, Ch = B.repeat_interleave(r, dim=2), C.repeat_interleave(r, dim=2)  # [B, L, H, N]
    state = h0 if h0 is not None else x.new_zeros(b, h, p, B.shape[-1])
    ys = []
    for t in range(length):
        state = torch.exp(dt[:, t] * A)[..., None, None] * state \
            + (dt[:, t, :, None] * x[:, t])[..., None] * Bh[:, t, :, None, :]
        ys.append(torch.einsum("bhpn,bhn->bhp", state, Ch[:, t]))
    return torch.stack(ys, dim=1), state


def ssd_step(x, dt, A, B, C, h):
    """One token of the recurrence (decoding): x `[B, H, P]`, dt `[B, H]`, A `[H]`, B, C
    `[B, G, N]`, h `[B, H, P, N]`. Returns y `[B, H, P]` (without the D skip) and the new state."""
    r = x.shape[1] // B.shape[1]
    Bh, Ch = B.repeat_interleave(r, dim=1), C.repeat_interleave(r, dim=1)  # [B, H, N]
    h = torch.exp(dt * A)[..., None, None] * h + (dt[..., None] * x)[..., None] * Bh[:, :, None, :]
    return torch.einsum("bhpn,bhn->bhp", h, Ch), h


BLOCK = 32  # chunks per block of the state-passing scan


def ssd_chunked(x, dt, A, B, C, chunk: int, h0=None):
    """The chunked SSD algorithm; shapes as `ssd_naive`, fp32. Heads are grouped as
    [G, R] (R = H / G heads share one B and C); the sequence is zero-padded to whole chunks
    (dt = 0 there, so padding neither decays nor feeds the state)."""
    b, length, h, p = x.shape
    g, n = B.shape[2], B.shape[3]
    r, q = h // g, chunk
    pad = (-length) % q
    if pad:
        x, B, C = (F.pad(t, (0, 0, 0, 0, 0, pad)) for t in (x, B, C))
        dt = F.pad(dt, (0, 0, 0, pad))
    c = (length + pad) // q
    x = x.reshape(b, c, q, g, r, p)
    B, C = B.reshape(b, c, q, g, n), C.reshape(b, c, q, g, n)
    dt = dt.reshape(b, c, q, g, r)
    acs = (dt * A.reshape(g, r)).cumsum(dim=2)  # [b, c, q, g, r]: log decay from the chunk start

    # 1. inside each chunk: y_t = sum_{s<=t} (C_t . B_s) exp(acs_t - acs_s) dt_s x_s
    causal = torch.ones(q, q, dtype=torch.bool, device=x.device).tril()
    seg = acs[:, :, :, None] - acs[:, :, None, :]  # [b, c, t, s, g, r]
    decay = torch.exp(seg.masked_fill(~causal[:, :, None, None], float("-inf")))
    scores = torch.einsum("bctgn,bcsgn->bctsg", C, B)
    y = torch.einsum("bctsgr,bcsgrp->bctgrp", scores[..., None] * decay * dt[:, :, None], x)

    # 2. each chunk's own final state: sum_s exp(acs_end - acs_s) dt_s x_s B_s^T
    w = torch.exp(acs[:, :, -1:] - acs) * dt  # [b, c, s, g, r]
    states = torch.einsum("bcsgn,bcsgrp->bcgrpn", B, x * w[..., None])

    # 3. pass states across chunks: S_{k+1} = exp(sum of chunk k's log decay) S_k + states_k.
    # Two levels, so the sequential loop runs over blocks of BLOCK chunks (a loop over every
    # chunk is launch-bound at long L): closed form inside a block, the recurrence across blocks.
    S = h0.reshape(b, g, r, p, n) if h0 is not None else x.new_zeros(b, g, r, p, n)
    m = min(BLOCK, c)
    cpad = (-c) % m
    log_d = F.pad(acs[:, :, -1], (0, 0, 0, 0, 0, cpad))  # [b, c', g, r]; padded chunks: no decay
    st = F.pad(states, (0, 0, 0, 0, 0, 0, 0, 0, 0, cpad))  # [b, c', g, r, p, n]; ... and no input
    nb = (c + cpad) // m
    log_d, st = log_d.reshape(b, nb, m, g, r), st.reshape(b, nb, m, g, r, p, n)
    cum = log_d.cumsum(2)  # log decay from the block start through chunk k
    before = cum - log_d  # ... through chunk k - 1
    strict = torch.ones(m, m, dtype=torch.bool, device=x.device).tril(-1)
    seg = (before[:, :, :, None] - cum[:, :, None, :]).masked_fill(~strict[:, :, None, None], float("-inf"))
    within = torch.einsum("bnkjgr,bnjgrpq->bnkgrpq", seg.exp(), st)  # from earlier chunks of the block
    block_end = torch.einsum("bnjgr,bnjgrpq->bngrpq", (cum[:, :, -1:] - cum).exp(), st)
    block_decay = cum[:, :, -1].exp()  # [b, nb, g, r]
    starts = []
    for dec_b, end_b in zip(block_decay.unbind(1), block_end.unbind(1), strict=True):  # linear backward
        starts.append(S)
        S = dec_b[..., None, None] * S + end_b
    starts = torch.stack(starts, dim=1)  # [b, nb, g, r, p, n]: the state entering each block
    entering = within + before.exp()[..., None, None] * starts[:, :, None]
    entering = entering.reshape(b, nb * m, g, r, p, n)[:, :c]  # [b, c, g, r, p, n]: the state before each chunk

    # 4. the carried state's part of each output: C_t . (exp(acs_t) S_chunk)
    y = y + torch.einsum("bctgn,bcgrpn->bctgrp", C, entering) * torch.exp(acs)[..., None]
    return y.reshape(b, c * q, h, p)[:, :length], S.reshape(b, h, p, n)


def gated_rms_norm(y, z, weight, group_size: int, eps: float):
    """RMSNorm over groups of `group_size` channels of y * SiLU(z) (Mamba-2's norm after gate)."""
    y = y.float() * F.silu(z.float())
    shape = y.shape
    y = y.reshape(*shape[:-1], -1, group_size)
    y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps)
    return y.reshape(shape) * weight.float()


class GatedRMSNorm(nn.Module):
    def __init__(self, dim: int, group_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.group_size, self.eps = group_size, eps

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return gated_rms_norm(y, z, self.weight, self.group_size, self.eps)


# -- the mixer ---------------------------------------------------------------------------------

class Mamba2Config(MixerConfig):
    d_state: int = Field(128, ge=1, le=256, description="SSM state size N")
    d_conv: int = Field(4, ge=1, le=16, description="width of the causal depthwise conv")
    expand: int = Field(2, ge=1, le=8, description="inner width E = expand * d_model")
    headdim: int = Field(64, ge=1, le=512, description="channels P per head (heads H = E / P)")
    ngroups: int = Field(1, ge=1, le=64, description="groups of heads sharing B and C")
    A_init_min: float = Field(1.0, gt=0, description="A = -a with a uniform in [A_init_min, A_init_max]")
    A_init_max: float = Field(16.0, gt=0, description="upper end of the A initialisation range")
    dt_min: float = Field(0.001, gt=0, le=1, description="smallest initial dt")
    dt_max: float = Field(0.1, gt=0, le=1, description="largest initial dt")
    dt_init_floor: float = Field(1e-4, gt=0, le=1, description="initial dts are clamped at this floor")
    conv_bias: bool = Field(True, description="bias in the depthwise conv")
    bias: bool = Field(False, description="bias in the in/out projections")
    norm_eps: float = Field(1e-5, gt=0, le=1e-1, description="epsilon of the gated RMSNorm")
    chunk_size: int = Field(256, ge=1, le=4096, description="SSD chunk length of the mamba_ssm kernels")
    torch_chunk_size: int = Field(64, ge=1, le=4096, description="SSD chunk length of the torch reference")

    @model_validator(mode="after")
    def _ranges(self) -> Mamba2Config:
        if self.A_init_min > self.A_init_max:
            raise ValueError(f"A_init_min={self.A_init_min} > A_init_max={self.A_init_max}")
        if self.dt_min > self.dt_max:
            raise ValueError(f"dt_min={self.dt_min} > dt_max={self.dt_max}")
        return self


# mamba_ssm's Triton kernels compute pointer offsets in int32 (state-spaces/mamba#1015): a tensor of
# more elements than this is read at wrapped offsets, silently or with an illegal memory access
# (d_model 1024 crosses it at 490K tokens per call). Longer inputs go through in segments.
INT32_ELEMENTS = 2**31 - 1


@register_mixer(
    name="mamba2",
    family="state space",
    description="Mamba-2 (SSD): scalar decay per head, grouped B/C, chunked matmul algorithm, gated RMSNorm",
    citation=MAMBA2,
    capabilities=Capabilities(cost="O(L)", state="fixed"),
    backends=[MAMBA_SSM_SSD_BACKEND, TORCH_BACKEND],
    tiny={"d_state": 16, "headdim": 16, "ngroups": 2, "torch_chunk_size": 8},
)
class Mamba2(Mixer):
    """Mamba-2 block mixer. Parameter names follow `mamba_ssm.Mamba2`, so weights load across."""

    Config = Mamba2Config

    def __init__(self, d_model: int, config: Mamba2Config | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        E, N, G, P = c.expand * d_model, c.d_state, c.ngroups, c.headdim
        if E % P:
            raise ZooError(f"mamba2: inner width {E} (expand {c.expand} x d_model {d_model}) is not a multiple "
                           f"of headdim {P}", "pick a headdim that divides expand * d_model")
        H = E // P
        if H % G:
            raise ZooError(f"mamba2: {H} heads do not split into {G} groups", "pick ngroups dividing the heads")
        self.d_inner, self.d_state, self.ngroups, self.headdim, self.nheads = E, N, G, P, H
        self.conv_dim = E + 2 * G * N
        self.in_proj = nn.Linear(d_model, 2 * E + 2 * G * N + H, bias=c.bias)  # [z, x, B, C, dt]
        self.conv1d = nn.Conv1d(self.conv_dim, self.conv_dim, c.d_conv, groups=self.conv_dim,
                                padding=c.d_conv - 1, bias=c.conv_bias)
        self.dt_bias = nn.Parameter(dt_bias_init(H, c.dt_min, c.dt_max, c.dt_init_floor))
        A = torch.empty(H).uniform_(c.A_init_min, c.A_init_max)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(H))
        self.norm = GatedRMSNorm(E, E // G, c.norm_eps)
        self.out_proj = nn.Linear(E, d_model, bias=c.bias)
        for p in (self.A_log, self.D, self.dt_bias):
            p._no_weight_decay = True

    # -- forward ---------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        """x `[B, L, D]` -> `[B, L, D]`; the cache, when given, is read and advanced."""
        backend = self.select_backend(x)
        if cache is not None and x.shape[1] == 1:
            return self._step(x, cache, kernel=backend == "mamba_ssm")
        if backend == "mamba_ssm":
            return self._forward_kernel_segments(x, cache)
        return self._forward_torch(x, cache)

    def kernel_tokens(self) -> int:
        """Most tokens (batch x length) one call of the mamba_ssm kernels takes: their widest
        per-token tensor times this stays under int32 offsets."""
        c = self.config
        per_token = max(self.in_proj.out_features, self.ngroups * c.chunk_size,
                        -(-self.d_inner * self.d_state // c.chunk_size))  # zxbcdt, C B^T, chunk states
        return INT32_ELEMENTS // per_token

    def _forward_kernel_segments(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        Bsz, L, _ = x.shape
        most = self.kernel_tokens()
        if Bsz * L <= most:
            return self._forward_mamba_ssm(x, cache)
        if cache is None and L <= most:  # whole sequences fit: split the batch, keep the fused path
            return torch.cat([self._forward_mamba_ssm(xb, None) for xb in x.split(most // L)], dim=0)
        seg = most // Bsz // self.config.chunk_size * self.config.chunk_size
        if seg == 0:
            raise ZooError(f"mamba2: batch {Bsz} is too large for one call of the mamba_ssm kernels "
                           f"(at most {most // self.config.chunk_size} rows with a cache)",
                           "use a smaller batch or the torch backend")
        # along the sequence, the state carried from segment to segment as in cached decoding
        run = cache if cache is not None else self.new_cache(Bsz, x.device, x.dtype)
        return torch.cat([self._forward_mamba_ssm(x[:, i:i + seg], run) for i in range(0, L, seg)], dim=1)

    def _split(self, zxbcdt: torch.Tensor):
        E, GN = self.d_inner, self.ngroups * self.d_state
        return zxbcdt.split([E, E + 2 * GN, self.nheads], dim=-1)  # z, xBC, dt

    def _heads(self, xBC: torch.Tensor):
        Bsz, L, _ = xBC.shape
        E, G, N = self.d_inner, self.ngroups, self.d_state
        xs, Bm, Cm = xBC.split([E, G * N, G * N], dim=-1)
        return (xs.reshape(Bsz, L, self.nheads, self.headdim), Bm.reshape(Bsz, L, G, N), Cm.reshape(Bsz, L, G, N))

    def _forward_torch(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        Bsz, L, _ = x.shape
        z, xBC, dt = self._split(self.in_proj(x))
        xBC, conv_state = causal_conv(xBC.transpose(1, 2), self.conv1d.weight, self.conv1d.bias,
                                      cache.conv if cache is not None else None)
        xs, Bm, Cm = self._heads(F.silu(xBC).transpose(1, 2))
        with torch.autocast(x.device.type, enabled=False):  # the scan runs in fp32
            dt = F.softplus(dt.float() + self.dt_bias.float())
            A = -torch.exp(self.A_log.float())
            xs = xs.float()
            y, h = ssd_chunked(xs, dt, A, Bm.float(), Cm.float(), min(self.config.torch_chunk_size, L),
                               cache.ssm if cache is not None else None)
            y = (y + self.D.float()[:, None] * xs).reshape(Bsz, L, self.d_inner)
            y = self.norm(y, z)
        if cache is not None:
            cache.conv, cache.ssm, cache.pos = conv_state.to(cache.conv.dtype), h, cache.pos + L
        return self.out_proj(y.to(x.dtype))

    def _forward_mamba_ssm(self, x: torch.Tensor, cache: Cache | None) -> torch.Tensor:
        from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
        from mamba_ssm.ops.triton.ssd_combined import mamba_chunk_scan_combined, mamba_split_conv1d_scan_combined

        Bsz, L, _ = x.shape
        c = self.config
        zxbcdt = self.in_proj(x)
        A = -torch.exp(self.A_log.float())
        conv_fn = causal_conv1d_fn()
        if cache is None and conv_fn is not None:  # the fully fused path, as mamba_ssm.Mamba2 takes it
            return mamba_split_conv1d_scan_combined(
                zxbcdt, self.conv1d.weight.squeeze(1), self.conv1d.bias, self.dt_bias.float(), A, D=self.D.float(),
                chunk_size=c.chunk_size, activation="silu", rmsnorm_weight=self.norm.weight, rmsnorm_eps=c.norm_eps,
                outproj_weight=self.out_proj.weight, outproj_bias=self.out_proj.bias, headdim=self.headdim,
                ngroups=self.ngroups, norm_before_gate=False)
        z, xBC, dt = self._split(zxbcdt)
        fresh = cache is None or cache.pos == 0
        if cache is not None:
            conv_state = conv_state_after(cache.conv, xBC.transpose(1, 2))
        if conv_fn is not None and fresh:
            xBC = conv_fn(xBC.transpose(1, 2), self.conv1d.weight.squeeze(1), self.conv1d.bias,
                          activation="silu").transpose(1, 2)
        elif cache is None:
            xBC = F.silu(self.conv1d(xBC.transpose(1, 2))[..., :L].transpose(1, 2))
        else:
            xBC = F.silu(causal_conv(xBC.transpose(1, 2), self.conv1d.weight, self.conv1d.bias, cache.conv)[0]
                         ).transpose(1, 2)
        xs, Bm, Cm = self._heads(xBC)
        out = mamba_chunk_scan_combined(
            xs, dt, A, Bm, Cm, chunk_size=c.chunk_size, D=self.D.float(), z=None, dt_bias=self.dt_bias.float(),
            initial_states=None if fresh else cache.ssm, dt_softplus=True, return_final_states=cache is not None)
        y = out[0] if cache is not None else out
        y = rmsnorm_fn(y.reshape(Bsz, L, self.d_inner), self.norm.weight, None, z=z, eps=c.norm_eps,
                       group_size=self.d_inner // self.ngroups, norm_before_gate=False)
        if cache is not None:
            cache.conv, cache.ssm, cache.pos = conv_state.to(cache.conv.dtype), out[1].float(), cache.pos + L
        return self.out_proj(y)

    def _step(self, x: torch.Tensor, cache: Cache, kernel: bool) -> torch.Tensor:
        """One token `[B, 1, D]` through the cache: the recurrence itself (on the mamba_ssm
        backend, its fused `selective_state_update` kernel and gated RMSNorm, as its `step`)."""
        Bsz, H, P = x.shape[0], self.nheads, self.headdim
        z, xBC, dt = self._split(self.in_proj(x[:, 0]))  # [B, E], [B, E + 2GN], [B, H]
        window = torch.cat([cache.conv, xBC[..., None].to(cache.conv.dtype)], dim=-1)  # [B, E + 2GN, d_conv]
        xBC = (window * self.conv1d.weight[:, 0]).sum(-1)
        if self.conv1d.bias is not None:
            xBC = xBC + self.conv1d.bias
        xs, Bm, Cm = (t[:, 0] for t in self._heads(F.silu(xBC)[:, None]))  # [B, H, P], [B, G, N] x 2
        A = -torch.exp(self.A_log.float())
        if kernel:
            from mamba_ssm.ops.triton.layernorm_gated import rmsnorm_fn
            from mamba_ssm.ops.triton.selective_state_update import selective_state_update

            N = self.d_state  # per-head parameters broadcast over [P, N] as views (stride 0)
            y = selective_state_update(cache.ssm, xs, dt[..., None].expand(Bsz, H, P), A[:, None, None].expand(H, P, N),
                                       Bm, Cm, D=self.D[:, None].expand(H, P), z=None,
                                       dt_bias=self.dt_bias[:, None].expand(H, P), dt_softplus=True)  # state in place
            y = rmsnorm_fn(y.reshape(Bsz, self.d_inner), self.norm.weight, None, z=z, eps=self.config.norm_eps,
                           group_size=self.d_inner // self.ngroups, norm_before_gate=False)
        else:
            with torch.autocast(x.device.type, enabled=False):
                xs = xs.float()
                y, cache.ssm = ssd_step(xs, F.softplus(dt.float() + self.dt_bias.float()), A, Bm.float(), Cm.float(),
                                        cache.ssm)
                y = self.norm((y + self.D.float()[:, None] * xs).reshape(Bsz, self.d_inner), z)
        cache.conv, cache.pos = window[..., 1:], cache.pos + 1
        return self.out_proj(y.to(x.dtype))[:, None]

    # -- contract -------------------------------------------------------------------------------
    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(
            conv=torch.zeros(batch, self.conv_dim, self.config.d_conv - 1, device=device, dtype=dtype),
            ssm=torch.zeros(batch, self.nheads, self.headdim, self.d_state, device=device, dtype=torch.float32),
        )

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        conv = batch * self.conv_dim * (self.config.d_conv - 1) * param_bytes(dtype)
        return conv + batch * self.nheads * self.headdim * self.d_state * 4  # the SSM state stays fp32

    def flops_per_token(self, seq_len: int) -> float:
        d, E, N, G, H, P = self.d_model, self.d_inner, self.d_state, self.ngroups, self.nheads, self.headdim
        Q = min(self.config.chunk_size, max(seq_len, 1))
        proj = 2 * d * (2 * E + 2 * G * N + H) + 2 * E * d
        conv = 2 * self.conv_dim * self.config.d_conv
        # per token, as the chunked algorithm computes it: C B^T over a chunk (per group),
        # the chunk-local product with x (per head), the chunk state and the state output
        ssd = 2 * G * Q * N + 2 * H * Q * P + 2 * H * P * N + 2 * H * P * N
        return proj + conv + ssd + 10 * E  # D skip, gate and the grouped RMSNorm

