"""Positional encodings shared by the attention mixers.

Shapes: positions `[L]` (int64, absolute token index); features `[L, D]`.
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


def rope_inv_freq(head_dim: int, base: float = 10000.0, device=None) -> torch.Tensor:
    """RoPE inverse frequencies of Su et al. 2021 (arXiv:2104.09864): `[head_dim / 2]`."""
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=device) / head_dim)


def rope_cos_sin(positions: torch.Tensor, inv_freq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Angles for `[L]` positions: cos, sin of shape `[L, head_dim]` (halves repeated)."""
    ang = positions.float()[:, None] * inv_freq[None, :]
    ang = torch.cat([ang, ang], dim=-1)
    return ang.cos(), ang.sin()


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate `[..., L, Dh]` by `[L, Dh]` angles (rotate-half layout, as in GPT-NeoX and HF)."""
    x1, x2 = x.float().chunk(2, dim=-1)
    rot = torch.cat([-x2, x1], dim=-1)
    return (x.float() * cos + rot * sin).to(x.dtype)
