"""What one bench run measures: lengths written as `1k..128k`, the device's defaults, `BenchConfig`."""

from __future__ import annotations

import re
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from zoo.env import resolve_device
from zoo.errors import ZooError

Mode = Literal["fwd", "fwdbwd", "decode"]
MODES: tuple[str, ...] = ("fwd", "fwdbwd", "decode")
LONG_MODES = ("fwd", "decode")
LONG_MIN = 2**20  # lengths from here on run for linear mixers only
LINEAR_COSTS = ("O(L)", "O(L log L)")
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
FLOP_FACTOR = {"fwd": 1, "fwdbwd": 3, "decode": 1}
DEFAULT_LENS = "1k,2k,4k,8k,16k,32k,64k,128k"


# -- sizes ----------------------------------------------------------------------------------

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kKmMgG]?)\s*$")


def parse_size(text: str | int) -> int:
    """'1k' -> 1024, '1m' -> 2**20, '4096' -> 4096 (binary suffixes: lengths are powers of two)."""
    if isinstance(text, int):
        return text
    m = _SIZE.match(str(text))
    if m is None:
        raise ZooError(f"bad size '{text}'", "write a number with an optional k/m/g suffix, e.g. 4096, 8k, 1m")
    value = float(m.group(1)) * {"": 1, "k": 2**10, "m": 2**20, "g": 2**30}[m.group(2).lower()]
    if value < 1 or value != int(value):
        raise ZooError(f"bad size '{text}': not a positive whole number", "e.g. 4096, 8k, 1m")
    return int(value)


def parse_sizes(text: str) -> list[int]:
    """'1k,2k,4k' or '1k..128k' (powers of two between the ends) -> sorted unique lengths."""
    out: set[int] = set()
    for part in str(text).split(","):
        if not part.strip():
            continue
        if ".." in part:
            lo, hi = (parse_size(p) for p in part.split("..", 1))
            if hi < lo:
                raise ZooError(f"bad range '{part}': the end is below the start", "e.g. 1k..128k")
            n = lo
            while n <= hi:
                out.add(n)
                n *= 2
        else:
            out.add(parse_size(part))
    if not out:
        raise ZooError(f"no lengths in '{text}'", "e.g. --seq-lens 1k,2k,4k")
    return sorted(out)


def human_size(n: int) -> str:
    for div, unit in ((2**20, "M"), (2**10, "K")):
        if n >= div and n % div == 0:
            return f"{n // div}{unit}"
    return str(n)


# -- settings -------------------------------------------------------------------------------

# what `zoo bench` measures when not told: a layer of the GPU experiments' width over the long
# lengths on a GPU; a narrow layer at short lengths on a CPU, where each call must stay short
DEVICE_DEFAULTS: dict[str, dict[str, Any]] = {
    "cuda": {"d_model": 1024, "tokens_per_batch": 2**17, "seq_lens": DEFAULT_LENS},
    "cpu": {"d_model": 256, "tokens_per_batch": 2**13, "seq_lens": "256,1k,4k"},
}

class BenchConfig(BaseModel):
    """What one bench run measures. Defaults are the GPU run; the CLI narrows them."""

    model_config = ConfigDict(extra="forbid")

    mixers: list[str] = Field(default_factory=list, description="registry names; empty = every registered mixer")
    seq_lens: list[int] | None = Field(None, min_length=1, description="sequence lengths; those >= 1M run for "
                                       "linear mixers only (None: the device's defaults, DEVICE_DEFAULTS)")
    long: bool | None = Field(None, description="add `long_lens` (linear mixers, fwd and decode); "
                                                "None = when seq_lens already reach 1M")
    long_lens: list[int] = Field(default_factory=lambda: [LONG_MIN], description="the long lengths")
    tokens_per_batch: int | None = Field(None, ge=1, le=2**32, description="batch = max(1, tokens_per_batch // L) "
                                         "(None: the device's default)")
    d_model: int | None = Field(None, ge=8, le=16384, description="layer width (None: the device's default)")
    modes: list[Mode] = Field(default_factory=lambda: list(MODES), min_length=1)
    dtype: Literal["bf16", "fp16", "fp32"] = "bf16"
    device: str = Field("auto", description="auto = cuda when available, else cpu")
    peers: list[str] | None = Field(None, description="peer names to run; None = all that apply, [] = none")
    model: bool = Field(False, description="also time a whole ZooLM per mixer")
    n_layers: int = Field(2, ge=1, le=64, description="layers of the whole-model targets")
    warmup: int | None = Field(None, ge=0, le=100, description="warm-up calls (None: 2 on GPU, 1 on CPU)")
    reps: int | None = Field(None, ge=1, le=1000, description="timed calls at most (None: 20 on GPU, 3 on CPU)")
    point_budget_s: float = Field(0.5, gt=0, le=86400, description="stop timing a point after this long (>= 3 "
                                  "calls)")
    max_call_s: float = Field(10.0, gt=0, le=86400, description="skip a longer length predicted slower than this "
                              "per call")
    budget_s: float | None = Field(None, gt=0, le=10**7, description="wall-clock budget of the whole bench")
    fill_chunk: int = Field(8192, ge=1, le=1 << 24, description="tokens per chunk when filling a decode cache")

    @field_validator("seq_lens", "long_lens")
    @classmethod
    def _sorted(cls, v: list[int] | None) -> list[int] | None:
        if v is None:
            return v
        if any(not 1 <= n <= 1 << 26 for n in v):
            raise ValueError(f"lengths must be from 1 to {1 << 26:,}")
        return sorted(set(v))

    @model_validator(mode="after")
    def _device_defaults(self) -> BenchConfig:
        """Width, tokens per call and lengths left unset take the device's defaults: a GPU's would
        keep a CPU busy for hours."""
        defaults = DEVICE_DEFAULTS["cuda" if self.resolved_device().type == "cuda" else "cpu"]
        for k, v in defaults.items():
            if getattr(self, k) is None:
                object.__setattr__(self, k, parse_sizes(v) if k == "seq_lens" else v)
        return self

    def resolved_device(self) -> torch.device:
        return resolve_device(self.device)

    def lengths(self) -> list[int]:
        use_long = self.long if self.long is not None else any(n >= LONG_MIN for n in self.seq_lens)
        return sorted(set(self.seq_lens) | (set(self.long_lens) if use_long else set()))

