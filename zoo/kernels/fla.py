"""flash-linear-attention as a backend: when its Triton kernels can run here, and why not."""

from __future__ import annotations

import importlib.util

import torch


def fla_unavailable(device: torch.device) -> str | None:
    """None when fla's kernels can run on `device`, else the reason (a `Backend.check`)."""
    if device.type != "cuda":
        return f"needs a CUDA device (got {device.type})"
    if importlib.util.find_spec("fla") is None:
        return "flash-linear-attention is not installed (pip install 'mixer-zoo[gpu]')"
    return None


def accumulate(t: torch.Tensor) -> torch.Tensor:
    """Accumulate in float32 at least (float64 stays float64, for gradient checks)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
