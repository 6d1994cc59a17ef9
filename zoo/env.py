"""What this machine has: versions of the optional kernels and the device, without importing them."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import platform
import socket

import torch

OPTIONAL = {
    "triton": "triton",
    "fla": "flash-linear-attention",
    "mamba_ssm": "mamba-ssm",
    "causal_conv1d": "causal-conv1d",
    "flash_attn": "flash-attn",
    "rwkv": "rwkv",
}


def dist_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def has_module(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def versions() -> dict[str, str | None]:
    """Package versions for provenance; None where not installed."""
    out: dict[str, str | None] = {"python": platform.python_version(), "torch": torch.__version__,
                                  "cuda": torch.version.cuda}
    for module, dist in OPTIONAL.items():
        out[module] = dist_version(dist) if has_module(module) else None
    return out


def device_name(device: torch.device | str | None = None) -> str:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()})"


def host() -> str:
    return socket.gethostname()


def cuda_capability(device: torch.device) -> tuple[int, int] | None:
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def resolve_device(name: str) -> torch.device:
    """'auto', 'cpu', 'cuda' or 'cuda:N' -> a device this machine has, else a ZooError."""
    from zoo.errors import ZooError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ZooError(f"unknown device '{name}'", "use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ZooError(f"device '{name}' asked for, but no GPU is visible", "use auto or cpu")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ZooError(f"device '{name}' asked for, but this machine has {torch.cuda.device_count()} GPUs",
                       f"use cuda:0 .. cuda:{torch.cuda.device_count() - 1}")
    if dev.type not in ("cpu", "cuda"):
        raise ZooError(f"device '{name}' is not supported", "use auto, cpu, cuda or cuda:N")
    return dev


def is_oom(e: BaseException) -> bool:
    """Whether `e` is the device running out of memory: PyTorch's allocator raises
    `torch.OutOfMemoryError`; memory taken outside it (cuBLAS workspaces, cuDNN, Triton launches)
    fails as a plain RuntimeError carrying CUDA's own "CUDA error: out of memory". An error that
    merely mentions the words (a user message, a file name) is not one."""
    if isinstance(e, torch.OutOfMemoryError):
        return True
    return isinstance(e, RuntimeError) and "CUDA error: out of memory" in str(e)
