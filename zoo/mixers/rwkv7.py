"""RWKV-7 "Goose": the generalized delta rule with a data-dependent, vector-valued decay.

Peng et al. 2025, RWKV-7 "Goose" with Expressive Dynamic State Evolution, arXiv:2503.14456.
The definition followed is the author's code: `RWKV_x070_TMix_*` / `RWKV_x070_CMix_*` of the
`rwkv` pip package (inference) and `RWKV-v7/train_temp` of BlinkDL/RWKV-LM (training, init).

Time-mix, per token t and head (state S `[N_v, N_k]`, one per head):

    xx      = x_{t-1} - x_t                                  token shift
    x_*     = x_t + xx * mu_*                                 * in r, w, k, v, a, g
    r, k, v = W_r x_r, W_k x_k, W_v x_v
    log w   = -e^{-1/2} sigmoid(w0 + tanh(x_w W1) W2)         decay in (e^{-0.6065}, 1)
    a       = sigmoid(a0 + x_a A1 A2)                          in-context learning rate
    g       = sigmoid(x_g G1) G2                               output gate
    kk      = normalize(k * k_k) per head;  k <- k * (1 + (a - 1) * k_a)
    v       <- v + (v_first - v) * sigmoid(v0 + x_v V1 V2)     value residual (layers after the first)
    S_t     = S_{t-1} (diag(w_t) - kk_t (a_t kk_t)^T) + v_t k_t^T
    o_t     = GroupNorm(S_t r_t) + (r_t . (k_t * r_k)) v_t     per head
    y_t     = W_o (o_t * g_t)

Channel-mix (the block's MLP, see `make_mlp`): `W_v relu(W_k (x_t + (x_{t-1} - x_t) * mu_k))^2`.

Two forms of the state recurrence, equal up to summation order:
- `wkv7_recurrent`: the step form, token by token (decoding, short chunks, the oracle);
- `wkv7_chunked`: the chunked form used to train. Inside a chunk the rank-one corrections
  solve a unit-lower-triangular system (the WY form), between chunks the state is carried by
  one `[N, N]` matrix product per chunk.
The `fla` backend runs flash-linear-attention's `chunk_rwkv7` Triton kernel instead.

Shapes: x `[B, L, D]`; r, w, k, v, a, b `[B, L, H, N]`; state `[B, H, N_v, N_k]` (float32,
the layout of the official code: `o = S r`).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zoo.errors import ZooError
from zoo.kernels.fla import accumulate, fla_unavailable
from zoo.mixer import TORCH_BACKEND, Backend, Cache, Capabilities, Mixer, MixerConfig, param_bytes
from zoo.registry import register_mixer

RWKV7_PAPER = 'Peng et al. 2025, RWKV-7 "Goose" with Expressive Dynamic State Evolution, arXiv:2503.14456'
LOG_DECAY_FLOOR = -math.exp(-0.5)  # log w >= -e^{-1/2}: the soft clamp of the official code
GROUP_NORM_EPS = 64e-5  # fixed in the official code, whatever the head size
V_FIRST = "rwkv7.v_first"  # key of the first layer's values in the model's shared dict


FLA_BACKEND = Backend("fla", "flash-linear-attention chunk_rwkv7 Triton kernel (TF32 dots on fp32 inputs)",
                      fla_unavailable)


# -- the state recurrence: step form and chunked form ------------------------------------------

def wkv7_recurrent(r, log_w, k, v, a, b, state):
    """Token-by-token RWKV-7 state update, in float32.

    r, log_w, k, a, b: `[B, L, H, N]`; v: `[B, L, H, N]`; state: `[B, H, N, N]` (value x key).
    S_t = S_{t-1} (diag(exp(log_w_t)) + a_t b_t^T) + v_t k_t^T;  o_t = S_t r_t.
    Returns o `[B, L, H, N]` (float32) and the final state.
    """
    r, w, k, v, a, b = (accumulate(t) for t in (r, accumulate(log_w).exp(), k, v, a, b))
    S = state.to(r.dtype)
    out = []
    for t in range(r.shape[1]):
        Sa = torch.einsum("bhij,bhj->bhi", S, a[:, t])                    # S_{t-1} a_t
        S = S * w[:, t, :, None] + Sa[..., None] * b[:, t, :, None] + v[:, t, ..., None] * k[:, t, :, None]
        out.append(torch.einsum("bhij,bhj->bhi", S, r[:, t]))
    o = torch.stack(out, dim=1) if out else r.new_zeros(v.shape)
    return o, S


def wkv7_chunked(r, log_w, k, v, a, b, state, chunk_size: int = 16):
    """The same recurrence as `wkv7_recurrent`, computed chunk by chunk, in float32.

    Inside a chunk, with Lc_t = sum_{s<=t} log w_s (per key channel) and S0 the state before it:
      u_t = S_{t-1} a_t solves the triangular system u = S0 a~ + A_ab u + A_ak v, where
      a~_t = a_t e^{Lc_{t-1}}, A_ab[t, s] = a~_t . b_s e^{-Lc_s} and A_ak[t, s] = a~_t . k_s e^{-Lc_s}
      for s < t; then o_t = S0 r~_t + sum_{s<=t} (u_s b_s^T + v_s k_s^T) r~_t e^{-Lc_s}, r~_t = r_t e^{Lc_t}.
    Everything that does not depend on S0 is computed for all chunks at once; the chunk-to-chunk
    pass is S_next = S0 M + Y with `[N, N]` matrices M, Y per chunk. Decays are at least
    e^{-0.6065} per step, so e^{-Lc} stays below e^{0.61 * chunk_size} (1.6e4 for 16): safe in fp32.
    """
    B, L, H, N = r.shape
    C = chunk_size
    n = -(-L // C)
    pad = n * C - L

    def chunks(t):  # [B, L, H, N] -> [B, H, n, C, N] float32 at least, zero padded (log w = 0: no decay)
        t = F.pad(accumulate(t), (0, 0, 0, 0, 0, pad))
        return t.view(B, n, C, H, -1).permute(0, 3, 1, 2, 4)

    r, lw, k, v, a, b = (chunks(t) for t in (r, log_w, k, v, a, b))
    Lc = lw.cumsum(dim=3)                        # inclusive cumulative log decay
    Lx = Lc - lw                                 # exclusive (up to t-1)
    a_t = a * Lx.exp()
    r_t = r * Lc.exp()
    b_h, k_h = b * (-Lc).exp(), k * (-Lc).exp()
    strict = torch.ones(C, C, dtype=torch.bool, device=r.device).tril(-1)
    incl = torch.ones(C, C, dtype=torch.bool, device=r.device).tril()
    A_ab = (a_t @ b_h.transpose(-1, -2)).masked_fill(~strict, 0.0)
    A_ak = (a_t @ k_h.transpose(-1, -2)).masked_fill(~strict, 0.0)
    A_rb = (r_t @ b_h.transpose(-1, -2)).masked_fill(~incl, 0.0)
    A_rk = (r_t @ k_h.transpose(-1, -2)).masked_fill(~incl, 0.0)
    # (I - A_ab)^{-1} applied by a unit-lower-triangular solve: u = W S0^T + U0
    rhs = torch.cat([a_t, A_ak @ v], dim=-1)
    sol = torch.linalg.solve_triangular(-A_ab, rhs, upper=False, unitriangular=True)
    W, U0 = sol[..., :N], sol[..., N:]
    Q = r_t + A_rb @ W                           # o = Q S0^T + O0
    O0 = A_rb @ U0 + A_rk @ v
    decay_to_end = (Lc[..., -1:, :] - Lc).exp()  # e^{Lc_C - Lc_s} <= 1
    b_e, k_e = b * decay_to_end, k * decay_to_end
    M = torch.diag_embed(Lc[..., -1, :].exp()) + W.transpose(-1, -2) @ b_e   # [B, H, n, N_k, N_k]
    Y = U0.transpose(-1, -2) @ b_e + v.transpose(-1, -2) @ k_e                # [B, H, n, N_v, N_k]
    S = state.to(r.dtype)
    starts = []
    for M_i, Y_i in zip(M.unbind(2), Y.unbind(2), strict=True):  # unbind: its backward is one stack, where
        starts.append(S)                                           # indexing M[:, :, i] would write a full-size
        S = S @ M_i + Y_i                                          # gradient per chunk (quadratic in L)
    S0 = torch.stack(starts, dim=2)              # [B, H, n, N_v, N_k]
    o = Q @ S0.transpose(-1, -2) + O0            # [B, H, n, C, N_v]
    o = o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, N)[:, :L]
    return o, S


def wkv7_fla(r, log_w, k, v, a, b, state):
    """flash-linear-attention's chunk kernel, called as fla's RWKV7Attention calls it (chunks of
    64, tensor cores licensed by the decay floor); fla keeps the state as `[B, H, N_k, N_v]`."""
    from fla.ops.rwkv7 import chunk_rwkv7

    o, S = chunk_rwkv7(r, log_w, k, v, a, b, scale=1.0, initial_state=state.transpose(-1, -2).contiguous(),
                       output_final_state=True, safe_gate=True, lower_bound=LOG_DECAY_FLOOR, chunk_size=64)
    return o, S.transpose(-1, -2)


# -- init helpers (the official code's) -------------------------------------------------------------

def _ortho(shape: tuple[int, int], scale: float) -> torch.Tensor:
    """Orthogonal init with the official code's gain: sqrt(rows/cols) for tall matrices."""
    gain = math.sqrt(shape[0] / shape[1]) if shape[0] > shape[1] else 1.0
    return nn.init.orthogonal_(torch.empty(shape), gain=gain * scale)


def _lora_dim(d_model: int, factor: float) -> int:
    """The official suggestion max(32, round(factor * sqrt(C) / 32) * 32)."""
    return max(32, int(round(factor * d_model ** 0.5 / 32) * 32))


def _depth_ratios(layer_idx: int, n_layers: int) -> tuple[float, float]:
    n = max(n_layers, layer_idx + 1)
    ratio_0_to_1 = layer_idx / (n - 1) if n > 1 else 0.0
    ratio_1_to_almost0 = 1.0 - layer_idx / n
    return ratio_0_to_1, ratio_1_to_almost0


def _lora(h: torch.Tensor, up: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """bias + h @ up, with the bias added inside the matmul."""
    return F.linear(h, up.t(), bias)


def token_shift(x: torch.Tensor, prev: torch.Tensor | None) -> torch.Tensor:
    """x_{t-1} for every t of `[B, L, D]`; `prev` `[B, D]` is the token before the chunk (zeros if None)."""
    first = torch.zeros_like(x[:, :1]) if prev is None else prev[:, None].to(x.dtype)
    return torch.cat([first, x[:, :-1]], dim=1)


# -- the mixer -------------------------------------------------------------------------------------

class RWKV7Config(MixerConfig):
    head_dim: int = Field(64, ge=2, le=256, description="head size N (state per head is N x N); 64 in the paper")
    decay_lora: int | None = Field(None, ge=1, le=4096, description="rank of the decay LoRA (default: official rule)")
    a_lora: int | None = Field(None, ge=1, le=4096, description="rank of the in-context learning rate LoRA")
    v_lora: int | None = Field(None, ge=1, le=4096, description="rank of the value-residual LoRA")
    gate_lora: int | None = Field(None, ge=1, le=4096, description="rank of the output gate LoRA")
    chunk_size: int = Field(16, ge=1, le=64, description="chunk length of the torch chunked form")
    n_layers: int = Field(12, ge=1, le=512, description="model depth for the depth-dependent init (ZooLM sets it)")
    channel_mix: bool = Field(True, description="use RWKV-7's squared-ReLU channel-mix as the block MLP")
    ffn_hidden: int | None = Field(None, ge=1, description="channel-mix width (default: 1.5x the SwiGLU width, "
                                   "same parameters; 4 d_model at the default width)")


@register_mixer(
    name="rwkv7",
    family="linear recurrence",
    description="RWKV-7 time-mix: generalized delta rule with vector decay, in-context learning rate, value residual",
    citation=RWKV7_PAPER,
    capabilities=Capabilities(cost="O(L)", state="fixed"),
    backends=[FLA_BACKEND, TORCH_BACKEND],
    tiny={"head_dim": 16, "decay_lora": 8, "a_lora": 8, "v_lora": 8, "gate_lora": 8, "chunk_size": 8},
    version=2,  # 2: low-rank factors and r_k no longer decay
)
class RWKV7(Mixer):
    """RWKV-7 time-mix. Layer 0 (or the first RWKV-7 layer of a model) publishes its values
    in the model's shared dict; later layers mix them in (the value residual)."""

    Config = RWKV7Config
    uses_shared = True

    def __init__(self, d_model: int, config: RWKV7Config | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        if d_model % c.head_dim:
            raise ZooError(f"rwkv7: d_model {d_model} is not a multiple of head_dim {c.head_dim}",
                           "pick head_dim dividing d_model")
        C, N = d_model, c.head_dim
        H = self.n_heads = C // N
        self.head_dim = N
        r01, r10 = _depth_ratios(layer_idx, c.n_layers)
        ddd = torch.arange(C, dtype=torch.float32) / C
        linear = torch.arange(C, dtype=torch.float32) / (C - 1) - 0.5
        zigzag = ((torch.arange(C) % N) - (N - 1) / 2) / ((N - 1) / 2)
        zigzag = zigzag * zigzag.abs()
        www = -6 + 6 * (torch.arange(C, dtype=torch.float32) / (C - 1)) ** (1 + r01 ** 0.3)

        # token-shift interpolation, per channel
        for name, power in (("x_r", 0.2), ("x_w", 0.9), ("x_k", 0.7), ("x_v", 0.7), ("x_a", 0.9), ("x_g", 0.2)):
            setattr(self, name, nn.Parameter(1.0 - ddd ** (power * r10)))
        dw = c.decay_lora or _lora_dim(C, 2.5)
        da = c.a_lora or _lora_dim(C, 2.5)
        dv = c.v_lora or _lora_dim(C, 1.7)
        dg = c.gate_lora or _lora_dim(C, 5.0)
        self.w0 = nn.Parameter(www + 0.5 + zigzag * 2.5)
        self.w1 = nn.Parameter(torch.zeros(C, dw))
        self.w2 = nn.Parameter(_ortho((dw, C), 0.1))
        self.a0 = nn.Parameter(-0.19 + zigzag * 0.3 + linear * 0.4)
        self.a1 = nn.Parameter(torch.zeros(C, da))
        self.a2 = nn.Parameter(_ortho((da, C), 0.1))
        if layer_idx > 0:  # layer 0 is the source of the value residual and has no gate for it
            self.v0 = nn.Parameter(0.73 - linear * 0.4)
            self.v1 = nn.Parameter(torch.zeros(C, dv))
            self.v2 = nn.Parameter(_ortho((dv, C), 0.1))
        self.g1 = nn.Parameter(torch.zeros(C, dg))
        self.g2 = nn.Parameter(_ortho((dg, C), 0.1))
        self.k_k = nn.Parameter(0.71 - linear * 0.1)
        self.k_a = nn.Parameter(torch.full((C,), 1.02))
        self.r_k = nn.Parameter(torch.full((H, N), -0.04))
        # the official RWKV-7 trainer decays only the Linear weights: not these low-rank factors
        for name in ("w1", "w2", "a1", "a2", "v1", "v2", "g1", "g2", "r_k"):
            if hasattr(self, name):
                getattr(self, name)._no_weight_decay = True

        self.receptance = nn.Linear(C, C, bias=False)
        self.key = nn.Linear(C, C, bias=False)
        self.value = nn.Linear(C, C, bias=False)
        self.output = nn.Linear(C, C, bias=False)
        self.ln_x = nn.GroupNorm(H, C, eps=GROUP_NORM_EPS)
        with torch.no_grad():  # RWKV-LM generate_init_weight: orthogonal r/v, k at gain 0.1, output zero
            self.receptance.weight.copy_(_ortho((C, C), 1.0))
            self.key.weight.copy_(_ortho((C, C), 0.1))
            self.value.weight.copy_(_ortho((C, C), 1.0))
            self.output.weight.zero_()
            self.ln_x.weight.fill_(((layer_idx + 1) / max(c.n_layers, layer_idx + 1)) ** 0.7)

    # -- block hooks -------------------------------------------------------------------------------
    def make_mlp(self, d_model: int, hidden: int) -> nn.Module | None:
        if not self.config.channel_mix:
            return None
        width = self.config.ffn_hidden or 3 * hidden // 2  # squared ReLU has 2 matrices, SwiGLU 3
        return RWKV7ChannelMix(d_model, width, self.layer_idx, self.config.n_layers)

    # -- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, cache: Cache | None = None, shared: dict | None = None) -> torch.Tensor:
        B, L, C = x.shape
        H, N = self.n_heads, self.head_dim
        fla = self.select_backend(x) == "fla"
        if fla:  # fla's fused kernels for the elementwise steps, as fla's own RWKV7Attention uses them
            from fla.ops.rwkv7.fused_addcmul import fused_addcmul_rwkv7
            from fla.ops.rwkv7.fused_k_update import fused_k_rwkv7
            from fla.ops.rwkv7.gate_output_correction import gate_output_correction
        mus = (self.x_r, self.x_w, self.x_k, self.x_v, self.x_a, self.x_g)
        xx = token_shift(x, cache.x_prev if cache is not None else None) - x
        if fla:  # fla's backward writes the input gradient into its first argument: hand it a copy
            xr, xw, xk, xv, xa, xg = fused_addcmul_rwkv7(x.clone() if torch.is_grad_enabled() else x, xx, *mus)
        else:
            xr, xw, xk, xv, xa, xg = (x + xx * mu for mu in mus)
        del xx  # without autograd, intermediates freed as soon as used: at 1M tokens each is 2 GB

        r = self.receptance(xr)
        k = self.key(xk)
        v = self.value(xv)
        z = _lora(torch.tanh(xw @ self.w1), self.w2, self.w0)               # w0 + tanh(x_w W1) W2
        log_w = LOG_DECAY_FLOOR * torch.sigmoid(z if fla else z.float())  # = -softplus(-z) - 0.5, then -exp()
        a = torch.sigmoid(_lora(xa @ self.a1, self.a2, self.a0))
        g = torch.sigmoid(xg @ self.g1) @ self.g2
        del xr, xw, xk, xa, xg, z
        kk = F.normalize((k * self.k_k).view(B, L, H, N), dim=-1)
        k = fused_k_rwkv7(k, a, self.k_a) if fla else k * (1 + (a - 1) * self.k_a)
        if shared is not None and V_FIRST in shared and self.layer_idx > 0:  # value residual
            v = torch.lerp(v, shared[V_FIRST], torch.sigmoid(_lora(xv @ self.v1, self.v2, self.v0)))
        elif shared is not None and V_FIRST not in shared:
            shared[V_FIRST] = v
        del xv

        heads = lambda t: t.view(B, L, H, N)  # noqa: E731
        r_, w_, k_, v_, a_ = heads(r), heads(log_w), heads(k), heads(v), heads(a)
        neg_kk, kka = -kk, kk * a_
        state = cache.state if cache is not None else x.new_zeros(B, H, N, N, dtype=torch.float32)
        if fla:
            o, state = wkv7_fla(r_, w_, k_, v_, neg_kk, kka, state)
        elif cache is not None and L < self.config.chunk_size:
            o, state = wkv7_recurrent(r_, w_, k_, v_, neg_kk, kka, state)
        else:
            o, state = wkv7_chunked(r_, w_, k_, v_, neg_kk, kka, state, self.config.chunk_size)
        if cache is not None:
            cache.x_prev, cache.state, cache.pos = x[:, -1].detach().clone(), state.detach(), cache.pos + L

        if fla:  # group norm in the input dtype (fp32 statistics inside), fused bonus + gate
            o = F.group_norm(o.reshape(B * L, C), H, self.ln_x.weight, self.ln_x.bias, GROUP_NORM_EPS)
            return self.output(gate_output_correction(o.view(B, L, C), r_, k_, self.r_k, v_, g))
        o = F.group_norm(o.float().reshape(B * L, C), H, self.ln_x.weight.float(), self.ln_x.bias.float(),
                         GROUP_NORM_EPS).view(B, L, H, N)
        bonus = (r_.float() * k_.float() * self.r_k.float()).sum(-1, keepdim=True) * v_.float()
        o = (o + bonus).reshape(B, L, C).to(x.dtype)
        return self.output(o * g)

    # -- contract ------------------------------------------------------------------------------------
    def new_cache(self, batch, device, dtype) -> Cache:
        H, N = self.n_heads, self.head_dim
        return Cache(x_prev=torch.zeros(batch, self.d_model, device=device, dtype=dtype),
                     state=torch.zeros(batch, H, N, N, device=device, dtype=torch.float32))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        shift = batch * self.d_model * param_bytes(dtype)
        return shift + batch * self.n_heads * self.head_dim ** 2 * 4  # the state is kept in fp32

    def flops_per_token(self, seq_len: int) -> float:
        C, N = self.d_model, self.head_dim
        proj = 2 * 4 * C * C                                                    # r, k, v, output
        lora = 2 * 2 * C * (self.w1.shape[1] + self.a1.shape[1] + self.g1.shape[1])
        lora += 2 * 2 * C * self.v1.shape[1] if hasattr(self, "v1") else 0
        return proj + lora + 9 * C * N  # state: decay, S a, (S a) b^T, v k^T, S r


class RWKV7ChannelMix(nn.Module):
    """RWKV-7 channel-mix: token shift, squared ReLU, down projection. Stateful (the shifted
    token), so ZooLM gives it a cache of its own: `new_cache` and `forward(x, cache)`."""

    def __init__(self, d_model: int, hidden: int, layer_idx: int = 0, n_layers: int = 12):
        super().__init__()
        _, r10 = _depth_ratios(layer_idx, n_layers)
        ddd = torch.arange(d_model, dtype=torch.float32) / d_model
        self.x_k = nn.Parameter(1.0 - ddd ** (r10 ** 4))
        self.key = nn.Linear(d_model, hidden, bias=False)
        self.value = nn.Linear(hidden, d_model, bias=False)
        with torch.no_grad():  # RWKV-LM generate_init_weight: orthogonal key, zero value
            self.key.weight.copy_(_ortho((hidden, d_model), 1.0))
            self.value.weight.zero_()

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        xx = token_shift(x, cache.x_prev if cache is not None else None) - x
        if cache is not None:
            cache.x_prev, cache.pos = x[:, -1].detach().clone(), cache.pos + x.shape[1]
        return self.value(torch.relu(self.key(x + xx * self.x_k)) ** 2)

    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(x_prev=torch.zeros(batch, self.key.in_features, device=device, dtype=dtype))

    def flops_per_token(self) -> float:
        return 2 * 2 * self.key.in_features * self.key.out_features
