"""Positional math shared by the attention mixers: each function follows one paper.

Shapes: positions `[L]` (int64 token index, or float for ReRoPE's compressed positions);
features and angles `[L, D]`; inverse frequencies `[head_dim / 2]`; biases `[H, Lq, Lk]`.

    absolute    sinusoidal (Vaswani 2017)
    relative    alibi_slopes (Press 2022), t5_bucket (Raffel 2020)
    rotary      rope_inv_freq, rope_cos_sin, apply_rotary (Su 2021), xpos_scale (Sun 2022)
    RoPE scaling, each returning inverse frequencies (and YaRN an attention factor):
                pi_inv_freq (Chen 2023), ntk_base (bloc97 2023), dynamic_ntk_base (emozilla 2023),
                yarn_inv_freq / yarn_attention_factor (Peng 2023), rerope_distance (Su 2023)

The RoPE scalings reproduce Hugging Face transformers' `ROPE_INIT_FUNCTIONS` where both
implement the same method (`linear`, `dynamic`, `yarn`); tests compare the two.
"""

from __future__ import annotations

import math

import torch


def sinusoidal(positions: torch.Tensor, dim: int, base: float = 10000.0) -> torch.Tensor:
    """Fixed sin/cos features of Vaswani et al. 2017: `[L] -> [L, dim]` (sin half, cos half)."""
    half = dim // 2
    freq = torch.exp(-math.log(base) * torch.arange(half, dtype=torch.float32, device=positions.device) / half)
    ang = positions.float()[:, None] * freq[None, :]
    out = torch.cat([ang.sin(), ang.cos()], dim=-1)
    if dim % 2:
        out = torch.nn.functional.pad(out, (0, 1))
    return out


# -- relative biases ----------------------------------------------------------------------

def alibi_slopes(n_heads: int) -> torch.Tensor:
    """ALiBi head slopes (Press et al. 2022, Train Short, Test Long, arXiv:2108.12409): `[H]`.

    For n a power of two the geometric sequence 2^(-8/n), 2^(-16/n), ..., 2^(-8); otherwise the
    paper's rule: the slopes of the closest smaller power of two c, then every other slope of 2c.
    """

    def power_of_two(n: int) -> list[float]:
        return [2.0 ** (-8.0 * (i + 1) / n) for i in range(n)]

    c = 2 ** math.floor(math.log2(n_heads))
    slopes = power_of_two(c)
    if c < n_heads:
        slopes += power_of_two(2 * c)[0::2][: n_heads - c]
    return torch.tensor(slopes, dtype=torch.float32)


def t5_bucket(distance: torch.Tensor, num_buckets: int = 32, max_distance: int = 128) -> torch.Tensor:
    """Causal T5 relative-position buckets (Raffel et al. 2020, arXiv:1910.10683), any shape.

    `distance` = query position - key position (>= 0 where attention is allowed; negative
    distances map to bucket 0 and are masked anyway). Half the buckets hold the exact distances
    0 .. num_buckets/2 - 1; the other half are log-spaced up to `max_distance`, beyond which
    everything shares the last bucket.
    """
    d = distance.clamp(min=0)
    exact = num_buckets // 2
    # clamp before the log so small distances (taken by the exact branch) never hit log(0)
    log_ratio = torch.log(d.clamp(min=exact).float() / exact) / math.log(max_distance / exact)
    far = (exact + (log_ratio * (num_buckets - exact)).long()).clamp(max=num_buckets - 1)
    return torch.where(d < exact, d, far)


# -- rotary ---------------------------------------------------------------------------------

def rope_inv_freq(head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """RoPE inverse frequencies of Su et al. 2021 (arXiv:2104.09864): `[head_dim / 2]`."""
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles for `[L]` positions: cos, sin of shape `[L, head_dim]` (halves repeated)."""
    ang = positions.float()[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `[..., L, Dh]` by `[L, Dh]` angles (rotate-half layout, as in GPT-NeoX and HF):
    x cos + [-x2, x1] sin, with x1, x2 the halves of the head dimension.

    Written per half, [x1 c1 - x2 s1, x2 c2 + x1 s2] with c, s the tables' halves: the same
    numbers as the whole-row form, and what Inductor compiles into the cheapest backward of the
    writings measured (benchmarks/NOTES.md, "the rotation written five ways")."""
    half = x.shape[-1] // 2
    x1, x2 = x.float().unflatten(-1, (2, half)).unbind(-2)
    c1, c2 = cos.unflatten(-1, (2, half)).unbind(-2)
    s1, s2 = sin.unflatten(-1, (2, half)).unbind(-2)
    return torch.cat([x1 * c1 - x2 * s1, x2 * c2 + x1 * s2], dim=-1).to(x.dtype)


def xpos_scale(positions: torch.Tensor, head_dim: int, scale_base: float = 512.0,
               gamma: float = 0.4) -> torch.Tensor:
    """xPos per-dimension scale zeta_i^(n / scale_base) (Sun et al. 2022, A Length-Extrapolatable
    Transformer, arXiv:2212.10554): `[L] -> [L, head_dim]` (halves repeated).

    zeta_i = (i / (head_dim / 2) + gamma) / (1 + gamma). Queries are multiplied by the scale at
    their position and keys divided by it at theirs, so a score decays as zeta^((n - m) / scale_base).
    Positions may be shifted by any common offset (the score only sees n - m), which keeps the
    exponents small at long context.
    """
    zeta = (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim + gamma) / (1 + gamma)
    s = zeta[None, :] ** (positions.float()[:, None] / scale_base)
    return torch.cat([s, s], dim=-1)


# -- RoPE scalings --------------------------------------------------------------------------

def pi_inv_freq(head_dim: int, base: float, factor: float, device=None) -> torch.Tensor:
    """Position Interpolation (Chen et al. 2023, arXiv:2306.15595): positions divided by the
    factor s, which is the same as dividing every inverse frequency by s (HF `linear`)."""
    return rope_inv_freq(head_dim, base, device) / factor


def ntk_base(base: float, head_dim: int, factor: float) -> float:
    """NTK-aware base b * s^(d / (d - 2)) (bloc97 2023; YaRN paper arXiv:2309.00071, sec. 3.1):
    the lowest frequency is interpolated by s while the highest is left as is."""
    return base * factor ** (head_dim / (head_dim - 2))


def dynamic_ntk_base(base: float, head_dim: int, factor: float, seq_len: int, original_length: int) -> float:
    """Dynamic NTK (emozilla 2023; YaRN paper sec. 3.3): the NTK base recomputed from the
    current length L, b * (s L / L0 - (s - 1))^(d / (d - 2)), unchanged up to L0 (HF `dynamic`)."""
    seq_len = max(seq_len, original_length)
    return base * (factor * seq_len / original_length - (factor - 1)) ** (head_dim / (head_dim - 2))


def yarn_inv_freq(head_dim: int, base: float, factor: float, original_length: int,
                  alpha: float = 1.0, beta: float = 32.0, device=None) -> torch.Tensor:
    """YaRN's NTK-by-parts inverse frequencies (Peng et al. 2023, arXiv:2309.00071, sec. 3.2).

    A dimension whose wavelength fits more than beta times into the original context keeps its
    frequency (extrapolation); one that fits fewer than alpha times is interpolated by s; a
    linear ramp joins the two. The ramp bounds are the dimensions where the rotation count
    over `original_length` equals beta and alpha, floored and ceiled as in the paper's code.
    """

    def dim_of(rotations: float) -> float:  # the dimension that turns `rotations` times over L0
        return head_dim * math.log(original_length / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low = max(math.floor(dim_of(beta)), 0)
    high = min(math.ceil(dim_of(alpha)), head_dim - 1)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    ramp = ((torch.arange(head_dim // 2, dtype=torch.float32, device=device) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: extrapolate (high frequency), 0: interpolate (low frequency)
    inv = rope_inv_freq(head_dim, base, device)
    return inv / factor * (1 - keep) + inv * keep


def yarn_attention_factor(factor: float) -> float:
    """YaRN's attention temperature sqrt(1/t) = 0.1 ln s + 1 (Peng et al. 2023, eq. 22). Both q and
    k are multiplied by it, so the logits grow by its square, as in the paper and HF."""
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def rerope_distance(distance: torch.Tensor, window: int, leak: float | None = None) -> torch.Tensor:
    """The relative position ReRoPE shows attention (Su 2023, Rectified Rotary Position
    Embeddings, github.com/bojone/rerope): exact below the window w, then w (ReRoPE) or
    w + (d - w) / k with leak = 1 / k (leaky ReRoPE). Any shape."""
    d = distance.float()
    far = torch.full_like(d, float(window)) if leak is None else window + (d - window) * leak
    return torch.where(d < window, d, far)
