"""RMSNorm, the one norm of the language model's blocks and of the mixers that normalise inside
(HSA's query, key and landmark norms).

    y = x / sqrt(mean(x^2, last dim) + eps) * weight          x, y: [..., D], weight: [D]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """The weight is cast to the input's dtype so bf16 activations under autocast take the fused
    kernel (it refuses mixed dtypes); with equal dtypes the cast is a no-op."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.rms_norm(x, (x.shape[-1],), self.weight.to(x.dtype), self.eps)
