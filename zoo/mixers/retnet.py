"""RetNet: multi-scale retention.

Sun et al. 2023, Retentive Network: A Successor to Transformer for Large Language Models,
arXiv:2307.08621. Details where the paper leaves them open follow its official code
(microsoft/torchscale: `MultiScaleRetention`, `RetNetRelPos`).

Per head h, with decay gamma_h = 1 - 2^(-5-h) and xPos-style rotation Theta_n = e^{i n theta}:

    q_n = (W_Q x_n) Theta_n,   k_n = (W_K x_n) Theta_n / sqrt(d_k),   v_n = W_V x_n
    S_n = gamma S_{n-1} + k_n^T v_n,   o_n = q_n S_n                       recurrent
    O   = (Q K^T * D) V,  D[n, m] = gamma^(n-m) for n >= m, else 0          parallel
    y   = W_O (swish(W_G x) * GroupNorm_h(O))                              gated output

GroupNorm_h normalises each head's output on its own, without an affine, as torchscale does.
The chunkwise form (paper eq. 7) runs the parallel form inside chunks and carries S between
them. All three are here (`retention_parallel`, `retention_recurrent`, `retention_chunkwise`)
and give the same outputs; the mixer trains with the chunkwise form, decodes short chunks
with the recurrent one, and on GPU runs flash-linear-attention's `chunk_retention` kernel.

torchscale also divides scores and states by running sums; GroupNorm makes the output
invariant to that scale (up to its eps), so it is left out and the three forms stay exact.
The rotation uses the rotate-half layout of `zoo.positional` with torchscale's angles
theta_j = 10000^(-j / (d_k/2 - 1)): a fixed permutation of the paper's interleaved pairs.

Shapes: x `[B, L, D]`; q, k `[B, L, H, Dk]`; v `[B, L, H, Dv]`; state `[B, H, Dk, Dv]` (float32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from zoo.errors import ZooError
from zoo.kernels.fla import accumulate, fla_unavailable
from zoo.mixer import TORCH_BACKEND, Backend, Cache, Capabilities, Mixer, MixerConfig
from zoo.positional import apply_rotary, rope_cos_sin
from zoo.registry import register_mixer

RETNET_PAPER = ("Sun et al. 2023, Retentive Network: A Successor to Transformer for Large Language Models, "
                "arXiv:2307.08621")


FLA_BACKEND = Backend("fla", "flash-linear-attention chunk_retention Triton kernel (TF32 dots on fp32 inputs)",
                      fla_unavailable)


def retention_log_gamma(n_heads: int, device=None) -> torch.Tensor:
    """log gamma_h, gamma_h = 1 - 2^(-5-h): `[H]` float32."""
    h = torch.arange(n_heads, dtype=torch.float32, device=device)
    return torch.log1p(-torch.exp2(-5.0 - h))


def retnet_inv_freq(head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """torchscale's rotation angles 1 / base^linspace(0, 1, d_k / 2): `[d_k / 2]`."""
    return 1.0 / base ** torch.linspace(0, 1, head_dim // 2, device=device)


# -- the three forms ------------------------------------------------------------------------------
# q, k: [B, L, H, Dk] (k already scaled), v: [B, L, H, Dv], log_gamma: [H], state: [B, H, Dk, Dv].
# Each returns o [B, L, H, Dv] (float32) and the state after the last token.

def retention_recurrent(q, k, v, log_gamma, state):
    """S_n = gamma S_{n-1} + k_n^T v_n;  o_n = q_n S_n. One step per token."""
    q, k, v = accumulate(q), accumulate(k), accumulate(v)
    gamma = log_gamma.to(q.dtype).exp()[None, :, None, None]
    S = state.to(q.dtype)
    out = []
    for t in range(q.shape[1]):
        S = gamma * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        out.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S))
    o = torch.stack(out, dim=1) if out else v.new_zeros(v.shape)
    return o, S


def retention_parallel(q, k, v, log_gamma, state):
    """O = (Q K^T * D) V + (Q S0) gamma^(n+1): quadratic in L, the training form of the paper."""
    q, k, v = (accumulate(t).transpose(1, 2) for t in (q, k, v))      # [B, H, L, D]
    L, log_gamma, state = q.shape[2], log_gamma.to(q.dtype), state.to(q.dtype)
    n = torch.arange(L, device=q.device, dtype=q.dtype)
    diff = n[:, None] - n[None, :]
    D = (diff[None] * log_gamma[:, None, None]).masked_fill(diff[None] < 0, float("-inf")).exp()  # [H, L, L]
    o = ((q @ k.transpose(-1, -2)) * D) @ v
    o = o + (q @ state) * ((n + 1)[None, :, None] * log_gamma[:, None, None]).exp()
    to_end = ((L - 1 - n)[None, :] * log_gamma[:, None]).exp()      # gamma^(L-1-m): [H, L]
    S = state * (L * log_gamma).exp()[None, :, None, None] + (k * to_end[..., None]).transpose(-1, -2) @ v
    return o.transpose(1, 2), S


def retention_chunkwise(q, k, v, log_gamma, state, chunk_size: int = 64):
    """Paper eq. 7: the parallel form inside each chunk, the recurrence between chunks.
    The last chunk is zero padded with no decay on the padding, so any L works."""
    B, L, H, Dk = q.shape
    Dv = v.shape[-1]
    C = min(chunk_size, max(L, 1))
    n = -(-L // C)
    pad = n * C - L

    def chunks(t):  # [B, L, H, D] -> [B, H, n, C, D], float32 at least
        t = F.pad(accumulate(t), (0, 0, 0, 0, 0, pad))
        return t.view(B, n, C, H, -1).permute(0, 3, 1, 2, 4)

    q, k, v = chunks(q), chunks(k), chunks(v)
    log_gamma = log_gamma.to(q.dtype)
    real = F.pad(torch.ones(L, device=q.device, dtype=q.dtype), (0, pad)).view(n, C)
    G = (real[None] * log_gamma[:, None, None]).cumsum(-1)          # [H, n, C] inclusive log decay
    diff = G[..., :, None] - G[..., None, :]                        # [H, n, C, C]
    causal = torch.ones(C, C, dtype=torch.bool, device=q.device).tril()
    D = diff.masked_fill(~causal, float("-inf")).exp()
    inner = ((q @ k.transpose(-1, -2)) * D) @ v                     # [B, H, n, C, Dv]
    to_end = (G[..., -1:] - G).exp()                                # [H, n, C]
    kv = (k * to_end[..., None]).transpose(-1, -2) @ v              # [B, H, n, Dk, Dv]
    cross = G[..., -1].exp()                                        # decay over a whole chunk: [H, n]
    S = state.to(q.dtype)
    starts = []
    for c_i, kv_i in zip(cross.unbind(1), kv.unbind(2), strict=True):  # unbind, not kv[:, :, i]: linear backward
        starts.append(S)
        S = c_i[None, :, None, None] * S + kv_i
    S0 = torch.stack(starts, dim=2)                                 # [B, H, n, Dk, Dv]
    o = inner + (q * G.exp()[..., None]) @ S0
    o = o.permute(0, 2, 3, 1, 4).reshape(B, n * C, H, Dv)[:, :L]
    return o, S


def norm_gate(o, g, eps: float):
    """swish(g) * GroupNorm_h(o) in float32, returned in g's dtype. o `[B, L, H, Dv]`, g
    `[B, L, H * Dv]` = W_G x. One group per head, no affine: torchscale's LayerNorm(d_v,
    elementwise_affine=False) per head, which is `nn.GroupNorm(H, H * Dv, affine=False)`."""
    B, L, H, Dv = o.shape
    on = F.layer_norm(o.float(), (Dv,), eps=eps).reshape(B, L, H * Dv)
    return (F.silu(g.float()) * on).to(g.dtype)


def norm_gate_fla(o, g, eps: float):
    """`norm_gate` as flash-linear-attention's fused Triton kernel (one pass each way, the
    norm and gate that fla's own retention layer runs)."""
    from fla.modules.norm.fused_norm_gate import layer_norm_gated

    B, L, H, Dv = o.shape
    return layer_norm_gated(o, g.view(B, L, H, Dv), None, None, "swish", eps=eps).reshape(B, L, H * Dv)


def retention_fla(q, k, v, state):
    """flash-linear-attention's chunk kernel (same [B, H, Dk, Dv] state layout; k pre-scaled)."""
    from fla.ops.retention import chunk_retention

    return chunk_retention(q, k, v, scale=1.0, initial_state=state, output_final_state=True)


# -- the mixer ----------------------------------------------------------------------------------------

class RetNetConfig(MixerConfig):
    n_heads: int = Field(4, ge=1, le=128, description="retention heads, one decay scale each (paper: d_k = 256)")
    expand_v: float = Field(2.0, gt=0, le=8, description="value width / d_model (paper: 2)")
    chunk_size: int = Field(64, ge=1, le=4096, description="chunk length of the chunkwise form")
    rope_base: float = Field(10000.0, gt=1.0, description="base of the xPos-style rotation angles")
    norm_eps: float = Field(1e-5, gt=0, description="GroupNorm epsilon")


@register_mixer(
    name="retnet",
    family="linear recurrence",
    description="multi-scale retention: fixed per-head decay, xPos-style rotation, GroupNorm, swish gate",
    citation=RETNET_PAPER,
    capabilities=Capabilities(cost="O(L)", state="fixed"),
    backends=[FLA_BACKEND, TORCH_BACKEND],
    tiny={"n_heads": 2, "chunk_size": 8},
)
class RetNet(Mixer):
    Config = RetNetConfig

    def __init__(self, d_model: int, config: RetNetConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        H = self.n_heads = c.n_heads
        value_dim = round(d_model * c.expand_v)
        if d_model % H or (d_model // H) % 2 or value_dim % H:
            raise ZooError(f"retnet: d_model {d_model} and value width {value_dim} must split into "
                           f"{H} heads with an even key width", "change n_heads or expand_v")
        self.key_dim, self.value_dim = d_model // H, value_dim // H
        self.wq = nn.Linear(d_model, d_model, bias=False)
        self.wk = nn.Linear(d_model, d_model, bias=False)
        self.wv = nn.Linear(d_model, value_dim, bias=False)
        self.wg = nn.Linear(d_model, value_dim, bias=False)
        self.wo = nn.Linear(value_dim, d_model, bias=False)
        for lin in (self.wq, self.wk, self.wv, self.wg):  # torchscale reset_parameters
            nn.init.xavier_uniform_(lin.weight, gain=2 ** -2.5)
        nn.init.xavier_uniform_(self.wo.weight)
        self.register_buffer("log_gamma", retention_log_gamma(H), persistent=False)
        self.register_buffer("inv_freq", retnet_inv_freq(self.key_dim, c.rope_base), persistent=False)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        H, Dk, Dv = self.n_heads, self.key_dim, self.value_dim
        start = cache.pos if cache is not None else 0
        pos = torch.arange(start, start + L, device=x.device)
        cos, sin = rope_cos_sin(pos, self.inv_freq)                  # [L, Dk], halves repeated
        q, k, v = self.wq(x).view(B, L, H, Dk), self.wk(x).view(B, L, H, Dk), self.wv(x).view(B, L, H, Dv)
        state = cache.state if cache is not None else x.new_zeros(B, H, Dk, Dv, dtype=torch.float32)
        fast = self.select_backend(x) == "fla"
        if fast:
            from fla.modules.rotary import rotary_embedding  # fused rotation; k's tables carry its 1/sqrt(Dk)

            cos, sin = cos[:, :Dk // 2].to(q.dtype), sin[:, :Dk // 2].to(q.dtype)  # q is bf16 under autocast
            q = rotary_embedding(q, cos, sin)
            k = rotary_embedding(k, cos * Dk ** -0.5, sin * Dk ** -0.5)
            o, state = retention_fla(q, k, v, state)
        else:
            q = apply_rotary(q, cos[:, None], sin[:, None])          # broadcast over heads
            k = apply_rotary(k, cos[:, None], sin[:, None]) * Dk ** -0.5
            if cache is not None and L < self.config.chunk_size:
                o, state = retention_recurrent(q, k, v, self.log_gamma, state)
            else:
                o, state = retention_chunkwise(q, k, v, self.log_gamma, state, self.config.chunk_size)
        if cache is not None:
            cache.state, cache.pos = state.detach(), start + L
        gate = norm_gate_fla if fast else norm_gate
        return self.wo(gate(o, self.wg(x), self.config.norm_eps))

    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(state=torch.zeros(batch, self.n_heads, self.key_dim, self.value_dim, device=device,
                                       dtype=torch.float32))

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        return batch * self.n_heads * self.key_dim * self.value_dim * 4  # the state is kept in fp32

    def flops_per_token(self, seq_len: int) -> float:
        d, dv = self.d_model, self.n_heads * self.value_dim
        proj = 2 * (2 * d * d + 3 * d * dv)                              # q, k; v, g, out
        c = min(self.config.chunk_size, seq_len)
        inner = 2 * 2 * self.n_heads * (self.key_dim + self.value_dim) * (c + 1) / 2   # within a chunk
        state = 2 * 2 * self.n_heads * self.key_dim * self.value_dim                # read + write S
        return proj + inner + state

