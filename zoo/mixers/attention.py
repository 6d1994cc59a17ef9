"""Full causal softmax attention under every positional scheme, and sliding-window attention.

One `Attention` module; the positional scheme is a small module `self.pe` with three hooks:

- `qk_input(x, pos)`: the input of the q and k projections (absolute schemes add here);
- `parts(q, k, pos_q, pos_k)`: q and k as attention compares them (RoPE and its relatives
  rotate them; Dynamic NTK splits the queries into groups with their own base; ReRoPE adds
  a second q/k pair for distances past its window);
- `score_bias(pos_q, pos_k)` / `flex(q, k, v, hi)`: an additive bias on the scores (ALiBi, T5),
  as a dense tensor for the reference and as a FlexAttention call (`score_mod(offset)`, or for
  T5 a call that differentiates its table outside the kernel).

`config.window` turns any scheme into sliding-window attention (`swa` defaults to RoPE).

    scheme        registry names                       paper
    none          nope                                 Kazemnejad et al. 2023
    absolute      sinusoidal, learned                  Vaswani et al. 2017; Gehring et al. 2017
    bias          t5-bias, alibi                       Raffel et al. 2020; Press et al. 2022
    rotary        rope, xpos                           Su et al. 2021; Sun et al. 2022
    RoPE scaling  rope-pi, rope-ntk, rope-dynamic-ntk, Chen et al. 2023; bloc97 2023; emozilla 2023;
                  rope-yarn, rerope, leaky-rerope      Peng et al. 2023; Su 2023
    window        swa                                  Beltagy et al. 2020

The RoPE scalings are also evaluation-time overrides of a RoPE model trained without them:
`override_rope_scaling(model, "yarn", 16, original_length=2048)`.

Backends, first usable in the entry's order wins (`Attention.refuses` says why one cannot
run a configuration, `Attention.passes_over` why `auto` puts it behind the others; a forced
backend only has to be able to run it):

- `flex`: FlexAttention (CUDA) for schemes that change the scores (bias, window, ReRoPE);
  ReRoPE runs as two banded calls (inside / past the window) merged by their log-sum-exp,
  which computes each score once instead of both scores everywhere. T5's table reaches the
  kernel detached and is differentiated outside it (`flex.distance_bias_attend`: the kernel's
  own gradient of a captured table is atomic adds from every score into a few entries).
- `flash`: flash-attn, when installed (ALiBi slopes, sliding window). FlexAttention keeps
  the first place until the two are timed on one machine; `backend = "flash"` forces it.
- `sdpa`: torch scaled_dot_product_attention for schemes that change q and k only, with
  torch's own kernel choice (no slower than forcing even the fastest kernel, cuDNN:
  benchmarks/NOTES.md, attention); rotary is applied outside the kernel, on CUDA by one fused
  Triton pass over q and k each way (`zoo.kernels.rotary`).
- `torch`: the reference: explicit scores, bias, mask and softmax (any scheme, any device).

Per-call host work is done once: positions, inverse frequencies and cos/sin tables are shared
by every layer and step that uses the same ones, ALiBi slopes and T5 buckets reach the device
once, FlexAttention block masks are cached by shape. No call synchronises with the device,
except Dynamic NTK, which groups queries by their length on the host.

Cache: keys are cached as projected, before any positional transform, and every chunk
re-derives the positional transform of the whole key set. This is what keeps Dynamic NTK
(whose base changes with the length), ReRoPE (two keys per position) and xPos (whose scales
are re-centred per chunk to stay in range) exact across chunks, at the cost of one
elementwise pass over the cache per chunk. A window keeps only the last W keys.

Shapes: x `[B, L, D]`; q, k, v `[B, H, L, Dh]`; cache k, v `[B, H, T, Dh]`; bias `[H, Lq, Lk]`.
"""

from __future__ import annotations

import functools
import importlib.util
import math
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn
from torch.nn.attention.bias import causal_lower_right

from zoo.errors import ZooError
from zoo.kernels import flex
from zoo.mixer import TORCH_BACKEND, Backend, BackendChoice, Cache, Capabilities, Mixer, MixerConfig
from zoo.positional import (
    alibi_slopes,
    apply_rotary,
    dynamic_ntk_base,
    ntk_base,
    pi_inv_freq,
    rope_cos_sin,
    rope_inv_freq,
    sinusoidal,
    t5_bucket,
    xpos_scale,
    yarn_attention_factor,
    yarn_inv_freq,
)
from zoo.registry import register_mixer

VASWANI = "Vaswani et al. 2017, Attention Is All You Need, arXiv:1706.03762"
ROPE = "Su et al. 2021, RoFormer: Enhanced Transformer with Rotary Position Embedding, arXiv:2104.09864"

SCALINGS = ("none", "pi", "ntk", "dynamic-ntk", "yarn", "rerope", "leaky-rerope")
Scaling = Literal["none", "pi", "ntk", "dynamic-ntk", "yarn", "rerope", "leaky-rerope"]
Position = Literal["nope", "sinusoidal", "learned", "t5-bias", "alibi", "rope", "xpos"]


# -- backends ------------------------------------------------------------------------------

@functools.cache
def _flash_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def _flash_unavailable(device: torch.device) -> str | None:
    if torch.device(device).type != "cuda":
        return "flash-attn runs on CUDA only"
    if not _flash_installed():
        return "flash-attn is not installed (pip install 'mixer-zoo[flash]')"
    return None


def _refused(backend: Backend, reason: str) -> Backend:
    """`backend` as listed by a scheme it can never run, saying why."""
    return Backend(backend.name, backend.description, lambda device: reason)


SDPA_BACKEND = Backend("sdpa", "torch scaled_dot_product_attention (cuDNN, flash or efficient kernel)")
FLEX_BACKEND = Backend("flex", "FlexAttention: compiled kernel with score modifications and block masks",
                       flex.unavailable)
FLASH_BACKEND = Backend("flash", "flash-attn 2 (ALiBi slopes, sliding window)", _flash_unavailable)

_NO_DENSE_BIAS = "the scheme adds a bias to the scores, which SDPA takes only as a dense [L, L] tensor: use flex"
QK_BACKENDS = [SDPA_BACKEND, FLEX_BACKEND, FLASH_BACKEND, TORCH_BACKEND]
WINDOW_BACKENDS = [FLEX_BACKEND, FLASH_BACKEND, SDPA_BACKEND, TORCH_BACKEND]
ALIBI_BACKENDS = [FLEX_BACKEND, FLASH_BACKEND, _refused(SDPA_BACKEND, _NO_DENSE_BIAS), TORCH_BACKEND]
T5_BACKENDS = [FLEX_BACKEND, _refused(FLASH_BACKEND, "flash-attn has no learned relative bias"),
               _refused(SDPA_BACKEND, _NO_DENSE_BIAS), TORCH_BACKEND]
REROPE_BACKENDS = [FLEX_BACKEND, _refused(FLASH_BACKEND, "flash-attn has no two-score form"),
                   _refused(SDPA_BACKEND, "ReRoPE mixes two score matrices (inside and past its window)"),
                   TORCH_BACKEND]


def _sdpa(q, k, v, **kwargs):
    """torch's own SDPA dispatch, no kernel forced: its choice is at least as fast as any kernel
    forced through `sdpa_kernel` (`benchmarks/attention_bench.py` times both; the numbers are in
    benchmarks/NOTES.md, attention)."""
    return F.scaled_dot_product_attention(q, k, v, **kwargs)


# -- per-call host work, done once ------------------------------------------------------------------

@functools.lru_cache(maxsize=32)
def _arange(start: int, stop: int, device: torch.device, inference: bool) -> torch.Tensor:
    return torch.arange(start, stop, device=device)


def positions(start: int, stop: int, device: torch.device) -> torch.Tensor:
    """Token positions `[stop - start]`, the same tensor for the same range (every layer and step
    of a training run shares one, and the rotary tables keyed by it). Tensors made in inference
    mode are kept apart: they cannot be saved for a later backward. Long ranges are not kept."""
    if torch.compiler.is_compiling() or stop - start > 1 << 16:
        return torch.arange(start, stop, device=device)
    return _arange(start, stop, torch.device(device), torch.is_inference_mode_enabled())


class _DerivedTensors:
    """A few tensors derived from other tensors (RoPE's cos/sin tables from positions and inverse
    frequencies), reused while those inputs are the very same objects, unmodified (same version).

    Keyed by identity, held with strong references to the inputs so an id is never reused while
    its entry lives; bounded in entries and in elements per entry; bypassed under torch.compile
    (Inductor fuses the work) and in inference mode (its tensors have no version counter)."""

    def __init__(self, entries: int = 8, max_numel: int = 1 << 22):
        self.entries, self.max_numel = entries, max_numel
        self._store: OrderedDict = OrderedDict()

    def get(self, key: tuple, inputs: tuple[torch.Tensor, ...], make):
        if (torch.compiler.is_compiling() or torch.is_inference_mode_enabled()
                or any(t.is_inference() for t in inputs)):
            return make()
        versions = tuple(t._version for t in inputs)
        hit = self._store.get(key)
        if hit is not None and hit[1] == versions and all(a is b for a, b in zip(hit[0], inputs, strict=True)):
            self._store.move_to_end(key)
            return hit[2]
        out = make()
        distinct = {id(t): t for t in out}.values()  # q and k at the same positions share their tables
        if sum(t.numel() for t in distinct) <= self.max_numel and not any(t.requires_grad for t in distinct):
            self._store[key] = (inputs, versions, out)
            self._store.move_to_end(key)
            while len(self._store) > self.entries:
                self._store.popitem(last=False)
        return out

    def clear(self) -> None:
        self._store.clear()


_ROPE_TABLES = _DerivedTensors()


# -- configs -----------------------------------------------------------------------------------

class AttentionConfig(MixerConfig):
    n_heads: int = Field(8, ge=1, le=256, description="attention heads")
    head_dim: int | None = Field(None, ge=1, le=512, description="per-head width (default d_model / n_heads)")
    window: int | None = Field(None, ge=1, description="sliding window W: a query sees itself and the W - 1 "
                                                        "tokens before it (None: full causal attention)")


class SinusoidalConfig(AttentionConfig):
    base: float = Field(10000.0, gt=1.0, description="wavelength base of the sin/cos features (or RoPE angles)")


class LearnedConfig(AttentionConfig):
    max_length: int = Field(2048, ge=1, le=1 << 24, description="rows of the learned position table: "
                                                                "the longest input the mixer accepts")


class T5Config(AttentionConfig):
    num_buckets: int = Field(32, ge=4, le=1024, description="relative-position buckets (half exact, half log)")
    max_distance: int = Field(128, ge=2, description="distance from which every key shares the last bucket")

    @model_validator(mode="after")
    def _log_range(self):
        if self.max_distance <= self.num_buckets // 2:
            raise ValueError(f"max_distance ({self.max_distance}) must exceed num_buckets / 2 "
                             f"({self.num_buckets // 2}), where the log-spaced buckets start")
        return self


class RopeConfig(SinusoidalConfig):
    scaling: Scaling = Field("none", description="RoPE scaling: pi, ntk, dynamic-ntk, yarn, rerope, leaky-rerope")
    factor: float = Field(1.0, ge=1.0, le=65536.0,
                          description="context extension s (pi, ntk, dynamic-ntk, yarn); for leaky-rerope the "
                                      "k of the slope 1/k past the window")
    original_length: int = Field(2048, ge=2, description="context the model was trained at: YaRN's ramp, "
                                                         "the length past which dynamic NTK moves its base")
    rerope_window: int | None = Field(None, ge=1, description="ReRoPE window w (default original_length // 4)")
    dynamic_step: int = Field(64, ge=1, description="dynamic NTK recomputes the base every this many positions")


_FACTOR = "context extension s (for leaky-rerope the k of the slope 1/k past the window)"


# training presets: RoPE with its scaling on from the first step
class RopePIConfig(RopeConfig):
    scaling: Scaling = "pi"
    factor: float = Field(4.0, ge=1.0, le=65536.0, description=_FACTOR)


class RopeNTKConfig(RopeConfig):
    scaling: Scaling = "ntk"
    factor: float = Field(4.0, ge=1.0, le=65536.0, description=_FACTOR)


class RopeDynamicNTKConfig(RopeConfig):
    scaling: Scaling = "dynamic-ntk"
    factor: float = Field(4.0, ge=1.0, le=65536.0, description=_FACTOR)


class RopeYaRNConfig(RopeConfig):
    scaling: Scaling = "yarn"
    factor: float = Field(4.0, ge=1.0, le=65536.0, description=_FACTOR)


class ReRoPEConfig(RopeConfig):
    scaling: Scaling = "rerope"


class LeakyReRoPEConfig(RopeConfig):
    scaling: Scaling = "leaky-rerope"
    factor: float = Field(16.0, ge=1.0, le=65536.0, description=_FACTOR)


class XposConfig(RopeConfig):
    scale_base: float = Field(512.0, gt=0.0, description="xPos decay length scale")


class SwaConfig(XposConfig, T5Config, LearnedConfig):
    position: Position = Field("rope", description="positional scheme inside the window")
    window: int = Field(512, ge=1, description="sliding window W: a query sees itself and the W - 1 tokens before it")


# -- reference -----------------------------------------------------------------------------------

def causal_mask(pos_q: torch.Tensor, pos_k: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """Boolean `[Lq, Lk]`, True where query at pos_q may attend key at pos_k."""
    d = pos_q[:, None] - pos_k[None, :]
    keep = d >= 0
    if window is not None:
        keep &= d < window
    return keep


def attention_reference(q, k, v, pos_q, pos_k, bias=None, window=None, scale=None, far=None):
    """Plain softmax attention, the oracle. q `[B, H, Lq, Dh]`, k/v `[B, H, Lk, Dh]`, bias `[H, Lq, Lk]`.

    `far = (q_far, k_far, w)`: ReRoPE's two-score form (Su 2023): distances >= w take their
    score from the second pair."""
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    s = torch.einsum("bhqd,bhkd->bhqk", q.float(), k.float()) * scale
    if far is not None:
        q_far, k_far, w = far
        s_far = torch.einsum("bhqd,bhkd->bhqk", q_far.float(), k_far.float()) * scale
        s = torch.where(pos_q[:, None] - pos_k[None, :] < w, s, s_far)
    if bias is not None:
        s = s + bias.float()
    s = s.masked_fill(~causal_mask(pos_q, pos_k, window), float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v.float()).to(q.dtype)


# -- positional schemes ----------------------------------------------------------------------------

@dataclass
class Part:
    """One attention call: query rows `rows` attend the first `keys` keys (which end at the
    last of those queries). ReRoPE adds a second pair used for distances >= `far_from`."""

    q: torch.Tensor
    k: torch.Tensor
    rows: slice
    keys: int
    q_far: torch.Tensor | None = None
    k_far: torch.Tensor | None = None
    far_from: int | None = None


class NoPositions(nn.Module):
    """NoPE (Kazemnejad et al. 2023): causal masking is the only source of order."""

    name = "nope"
    kind: Literal["qk", "bias", "two-score"] = "qk"
    max_length: int | None = None

    def qk_input(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        return x

    def parts(self, q, k, pos_q, pos_k, first: int | None = None) -> list[Part]:
        return [Part(q, k, slice(0, q.shape[2]), k.shape[2])]

    def score_bias(self, pos_q, pos_k) -> torch.Tensor | None:
        return None

    def score_mod(self, offset: int, device) -> flex.ScoreMod | None:
        return None

    kernel_options: dict | None = None  # FlexAttention kernel options the score function needs

    def flex(self, q, k, v, hi: int | None) -> torch.Tensor:
        """FlexAttention over the band [0, hi) with this scheme's score function."""
        return flex.flex_attend(q, k, v, hi=hi, score_mod=self.score_mod(k.shape[2] - q.shape[2], q.device),
                                kernel_options=self.kernel_options)


class SinusoidalPositions(NoPositions):
    """Fixed sin/cos features (Vaswani et al. 2017) added to the q/k input (values stay content-only)."""

    name = "sinusoidal"

    def __init__(self, d_model: int, base: float):
        super().__init__()
        self.d_model, self.base = d_model, base

    def qk_input(self, x, pos):
        return x + sinusoidal(pos, self.d_model, self.base).to(x.dtype)


class LearnedPositions(NoPositions):
    """A learned table of absolute positions (Gehring et al. 2017) added to the q/k input;
    bounded by its rows."""

    name = "learned"

    def __init__(self, d_model: int, max_length: int):
        super().__init__()
        self.max_length = max_length
        self.table = nn.Embedding(max_length, d_model)
        nn.init.normal_(self.table.weight, std=0.02)

    def qk_input(self, x, pos):
        return x + self.table(pos).to(x.dtype)


class T5Bias(NoPositions):
    """T5 relative bias (Raffel et al. 2020): a learned per-head scalar per distance bucket."""

    name = "t5-bias"
    kind = "bias"

    def __init__(self, n_heads: int, num_buckets: int, max_distance: int):
        super().__init__()
        self.num_buckets, self.max_distance = num_buckets, max_distance
        self._by_distance: dict[tuple, torch.Tensor] = {}
        self.table = nn.Embedding(num_buckets, n_heads)
        nn.init.normal_(self.table.weight, std=0.02)

    def score_bias(self, pos_q, pos_k):
        buckets = t5_bucket(pos_q[:, None] - pos_k[None, :], self.num_buckets, self.max_distance)
        return self.table(buckets).permute(2, 0, 1)  # [H, Lq, Lk]

    # the bias table read per score tile does not fit the default tiles' shared memory
    kernel_options = flex.TABLE_KERNEL_OPTIONS

    def _buckets(self, device) -> torch.Tensor:
        """The bucket of each distance 0 .. max_distance `[max_distance + 1]`, made once per device."""
        if torch.compiler.is_compiling():
            return t5_bucket(torch.arange(self.max_distance + 1, device=device), self.num_buckets, self.max_distance)
        key = (torch.device(device), flex.inference_mode())  # see `positions`
        if key not in self._by_distance:
            d = torch.arange(self.max_distance + 1, device=key[0])
            self._by_distance[key] = t5_bucket(d, self.num_buckets, self.max_distance)
        return self._by_distance[key]

    def by_distance(self, device) -> torch.Tensor:
        """The bias of each distance 0 .. max_distance `[H, max_distance + 1]` float32 (longer
        distances share the last), differentiable into `table`."""
        by_distance = F.embedding(self._buckets(device), self.table.weight)  # [max_distance + 1, H]
        return by_distance.t().to(torch.float32, memory_format=torch.contiguous_format)

    def flex(self, q, k, v, hi):
        # the table's gradient outside the kernel: inside, it is atomic adds from every score
        return flex.distance_bias_attend(q, k, v, self.by_distance(q.device), hi=hi,
                                         kernel_options=self.kernel_options)


class AlibiBias(NoPositions):
    """ALiBi (Press et al. 2022): score - m_h (i - j), fixed slopes m_h = 2^(-8h/n)."""

    name = "alibi"
    kind = "bias"

    def __init__(self, n_heads: int):
        super().__init__()
        self.n_heads = n_heads
        self._slopes: dict[tuple, torch.Tensor] = {}

    def slopes(self, device) -> torch.Tensor:
        """`[H]` float32 whatever the model dtype; copied to a device once (a copy per call
        would stall the host behind the queued GPU work); kept apart for inference mode, whose
        tensors FlexAttention could not save for a later backward."""
        key = (torch.device(device), flex.inference_mode())
        if key not in self._slopes:
            self._slopes[key] = alibi_slopes(self.n_heads).to(key[0])
        return self._slopes[key]

    def score_bias(self, pos_q, pos_k):
        d = (pos_q[:, None] - pos_k[None, :]).float()
        return -self.slopes(pos_q.device)[:, None, None] * d

    def score_mod(self, offset, device):
        return flex.alibi_score_mod(self.slopes(device), offset)


@functools.cache
def _fused_rotary():
    """`zoo.kernels.rotary.rotate_pair` where Triton is installed, else None."""
    if importlib.util.find_spec("triton") is None:
        return None
    try:
        from zoo.kernels.rotary import rotate_pair
    except ImportError:  # a triton that does not match this torch
        return None
    return rotate_pair


def _rotate_pair(q, k, cos_q, sin_q, cos_k, sin_k):
    """q and k rotated by their `[L, Dh]` tables: on CUDA one fused Triton pass each way
    (`zoo.kernels.rotary`), elsewhere and under torch.compile the reference `apply_rotary`."""
    if q.is_cuda and not torch.compiler.is_compiling() and (fused := _fused_rotary()) is not None:
        return fused(q, k, cos_q, sin_q, cos_k, sin_k)
    return apply_rotary(q, cos_q, sin_q), apply_rotary(k, cos_k, sin_k)


@torch.library.custom_op("zoo::materialize", mutates_args=())
def _materialize(t: torch.Tensor) -> torch.Tensor:
    """A copy of `t` that Inductor cannot see through: what computes `t` (RoPE's cos/sin tables,
    `[L, Dh]`) runs once, as its own kernel, and the rotation that follows loads it. Without it
    Inductor inlines the table into the rotation and recomputes pow, cos and sin for every
    element of q and k, forward and backward (`[B, H, L, Dh]` instead of `[L, Dh]`)."""
    return t.clone()


@_materialize.register_fake
def _(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t)


def _kept(t: torch.Tensor) -> torch.Tensor:
    """A table as the rotation should read it: materialised, unless it carries gradient."""
    return t if t.requires_grad else _materialize(t)


@functools.lru_cache(maxsize=256)
def _inv_freq(head_dim: int, method: str, base: float, factor: float, original_length: int, length: int | None,
              device: torch.device, inference: bool) -> torch.Tensor:
    D, b, s = head_dim, base, factor
    if method == "pi":
        return pi_inv_freq(D, b, s, device)
    if method == "ntk":
        return rope_inv_freq(D, ntk_base(b, D, s), device)
    if method == "yarn":
        return yarn_inv_freq(D, b, s, original_length, device=device)
    if method == "dynamic-ntk":
        return rope_inv_freq(D, dynamic_ntk_base(b, D, s, length, original_length), device)
    return rope_inv_freq(D, b, device)


class Rotary(NoPositions):
    """RoPE (Su et al. 2021) with its scalings, and xPos (Sun et al. 2022) when `scale_base` is set.

    Scalings (`method`, factor s, original length L0):
      pi            inverse frequencies / s (Chen et al. 2023, arXiv:2306.15595)
      ntk           base * s^(d / (d - 2)) (bloc97 2023, as written in YaRN sec. 3.1)
      dynamic-ntk   that base recomputed from the current length (emozilla 2023; YaRN sec. 3.3):
                    the query at position p uses length p + 1 (rounded up to `dynamic_step`),
                    its own keys rotated with its base, as token-by-token decoding would
      yarn          NTK-by-parts, alpha 1, beta 32, q and k scaled by 0.1 ln s + 1
                    (Peng et al. 2023, arXiv:2309.00071)
      rerope        relative position min(d, w) (Su 2023, github.com/bojone/rerope)
      leaky-rerope  w + (d - w) / k past the window, k = factor
    """

    name = "rope"

    def __init__(self, head_dim: int, config: RopeConfig, xpos: bool = False):
        super().__init__()
        if head_dim % 2:
            raise ZooError(f"RoPE needs an even head_dim, got {head_dim}", "set head_dim or n_heads accordingly")
        self.head_dim, self.xpos = head_dim, xpos
        self.name = "xpos" if self.xpos else "rope"
        self.configure(config)

    def configure(self, c: RopeConfig) -> None:
        self.base, self.dynamic_step = c.base, c.dynamic_step
        self.scale_base = c.scale_base if self.xpos else None
        self.set_scaling(c.scaling, c.factor, c.original_length, c.rerope_window)

    def set_scaling(self, method: str, factor: float, original_length: int, window: int | None = None) -> None:
        self.method, self.factor, self.original_length = method, float(factor), original_length
        self.window = window or max(1, original_length // 4)
        self.kind = "two-score" if method in ("rerope", "leaky-rerope") else "qk"

    def inv_freq(self, device, length: int | None = None) -> torch.Tensor:
        """`[head_dim / 2]`, made once per setting and device (layers with equal settings share it)."""
        length = length if self.method == "dynamic-ntk" else None
        args = (self.head_dim, self.method, self.base, self.factor, self.original_length, length)
        if torch.compiler.is_compiling():
            return _inv_freq.__wrapped__(*args, torch.device(device), False)
        return _inv_freq(*args, torch.device(device), torch.is_inference_mode_enabled())

    def tables(self, pos_q, pos_k, inv_freq) -> tuple[torch.Tensor, ...]:
        """cos, sin for q `[Lq, Dh]` and for k `[Lk, Dh]`, YaRN's temperature and xPos's scales folded
        in. Reused across layers and steps while positions and frequencies are the same tensors."""
        m = yarn_attention_factor(self.factor) if self.method == "yarn" else None
        if torch.compiler.is_compiling():
            # No cache keyed by id() here: Dynamo would guard on the tensors' identity and recompile
            # for new ones, and id() of an intermediate tensor is a graph break in Dynamo versions
            # that do not trace it. Tables q and k share (same positions, no xPos) are told by `is`
            # and materialised once.
            cq, sq, ck, sk = self._tables(pos_q, pos_k, inv_freq, m)
            shared = ck is cq
            cq, sq = _kept(cq), _kept(sq)
            return (cq, sq, cq, sq) if shared else (cq, sq, _kept(ck), _kept(sk))
        key = (id(pos_q), id(pos_k), id(inv_freq), m, self.scale_base)
        return _ROPE_TABLES.get(key, (pos_q, pos_k, inv_freq), lambda: self._tables(pos_q, pos_k, inv_freq, m))

    def _tables(self, pos_q, pos_k, inv_freq, m: float | None) -> tuple[torch.Tensor, ...]:
        cq, sq = rope_cos_sin(pos_q, inv_freq)
        ck, sk = (cq, sq) if pos_k is pos_q else rope_cos_sin(pos_k, inv_freq)
        if m is not None:  # YaRN's attention temperature on both q and k
            cq, sq = cq * m, sq * m
            ck, sk = (cq, sq) if pos_k is pos_q else (ck * m, sk * m)
        if self.scale_base is not None:  # queries up-scaled, keys down-scaled around a common centre
            c = pos_q[len(pos_q) // 2]
            gq = xpos_scale(pos_q - c, self.head_dim, self.scale_base)
            gk = xpos_scale(c - pos_k, self.head_dim, self.scale_base)
            cq, sq, ck, sk = cq * gq, sq * gq, ck * gk, sk * gk
        return cq, sq, ck, sk

    def rotate(self, q, k, pos_q, pos_k, inv_freq):
        """q at (possibly fractional) positions pos_q, k at pos_k."""
        return _rotate_pair(q, k, *self.tables(pos_q, pos_k, inv_freq))

    def groups(self, first: int, n: int, device) -> list[tuple[slice, torch.Tensor]]:
        """Rows of `n` queries at positions first .. first + n - 1 that share one set of inverse
        frequencies (several only for dynamic NTK). Worked out from the integers, so a compiled
        step neither syncs with the device nor breaks its graph here."""
        if self.method != "dynamic-ntk":
            return [(slice(0, n), self.inv_freq(device))]
        out, row, step, orig = [], 0, self.dynamic_step, self.original_length
        while row < n:
            seen = first + row + 1  # the length this query sees
            length = orig if seen <= orig else -(-seen // step) * step
            stop = min(n, length - first)  # every query up to `length` shares it
            out.append((slice(row, stop), self.inv_freq(device, length)))
            row = stop
        return out

    def parts(self, q, k, pos_q, pos_k, first: int | None = None) -> list[Part]:
        """q and k as the scheme transforms them, per group of query rows. `first`: the first
        query's position, when the caller knows it (else read from pos_q, for dynamic NTK only)."""
        Lq, Lk = q.shape[2], k.shape[2]
        out = []
        if first is None and self.method == "dynamic-ntk":
            first = int(pos_q[0])
        for rows, inv_freq in self.groups(first or 0, Lq, pos_q.device):
            n = Lk - (Lq - rows.stop)  # the keys up to this group's last query
            if rows.start == 0 and n == Lk:  # one group: no slicing (and pos_k may be pos_q itself)
                qg, kg, pq, pk = q, k, pos_q, pos_k
            else:
                qg, kg, pq, pk = q[:, :, rows], k[:, :, :n], pos_q[rows], pos_k[:n]
            part = Part(*self.rotate(qg, kg, pq, pk, inv_freq), rows, n)
            if self.kind == "two-score":
                # past the window, a score at distance d reads as at distance w (or w + (d - w) / k):
                # queries sit at w (or p/k + w - w/k), keys at 0 (or p/k)
                w = self.window
                if self.method == "rerope":
                    fq, fk = torch.full_like(pq, w), torch.zeros_like(pk)
                else:
                    fq, fk = pq / self.factor + w * (1 - 1 / self.factor), pk / self.factor
                part.q_far, part.k_far = self.rotate(qg, kg, fq, fk, inv_freq)
                part.far_from = w
            out.append(part)
        return out


def make_positions(position: str, d_model: int, n_heads: int, head_dim: int, c: AttentionConfig) -> NoPositions:
    if position == "nope":
        return NoPositions()
    if position == "sinusoidal":
        return SinusoidalPositions(d_model, c.base)
    if position == "learned":
        return LearnedPositions(d_model, c.max_length)
    if position == "t5-bias":
        return T5Bias(n_heads, c.num_buckets, c.max_distance)
    if position == "alibi":
        return AlibiBias(n_heads)
    if position == "rope":
        return Rotary(head_dim, c)
    if position == "xpos":
        return Rotary(head_dim, c, xpos=True)
    raise ZooError(f"unknown positional scheme '{position}'", f"allowed: {', '.join(Position.__args__)}")


# -- the mixer ----------------------------------------------------------------------------------------

class Attention(Mixer):
    """Causal multi-head attention; subclasses name their positional scheme in `position`."""

    Config = AttentionConfig
    position = "nope"

    def __init__(self, d_model: int, config: AttentionConfig | None = None, layer_idx: int = 0):
        super().__init__(d_model, config, layer_idx)
        c = self.config
        self.n_heads = c.n_heads
        self.head_dim = c.head_dim or d_model // c.n_heads
        self.window = c.window
        inner = self.n_heads * self.head_dim
        self.wq = nn.Linear(d_model, inner, bias=False)
        self.wk = nn.Linear(d_model, inner, bias=False)
        self.wv = nn.Linear(d_model, inner, bias=False)
        self.wo = nn.Linear(inner, d_model, bias=False)
        self.pe = make_positions(getattr(c, "position", self.position), d_model, self.n_heads, self.head_dim, c)
        self._choices: dict[tuple, BackendChoice] = {}  # (device, dtype) -> choice, until reconfigured

    @property
    def max_length(self) -> int | None:
        return self.pe.max_length

    # -- runtime settings: scheduled knobs and evaluation-time overrides ---------------------------
    RUNTIME = ("window", "base", "scaling", "factor", "original_length", "rerope_window", "dynamic_step", "scale_base")

    def set_knob(self, name: str, value) -> None:
        """A scheduled setting (see zoo.train.schedule), e.g. `mixer.swa.window` for a window
        warm-up or `mixer.rope.base` for progressive RoPE base growth."""
        if name not in self.RUNTIME or name not in type(self.config).model_fields:
            fields = [f for f in self.RUNTIME if f in type(self.config).model_fields]
            raise ZooError(f"mixer '{self.spec.name}' has no runtime setting '{name}'",
                           f"runtime settings: {', '.join(fields) or 'none'}")
        self.reconfigure(**{name: value})

    def reconfigure(self, **changes) -> None:
        """Change settings that leave the parameters as they are (the runtime settings and the
        backend); validated like the config, which stays the record of what the layer does."""
        fixed = sorted(set(changes) - {*self.RUNTIME, "backend"})
        if fixed:
            raise ZooError(f"mixer '{self.spec.name}': {', '.join(fixed)} cannot change after construction",
                           "build a new mixer with that config")
        self.config = self.spec.make_config({**self.config.model_dump(), **changes})
        self.window = self.config.window
        self._choices.clear()
        if isinstance(self.pe, Rotary):
            self.pe.configure(self.config)
        elif isinstance(self.pe, SinusoidalPositions):
            self.pe.base = self.config.base

    # -- backend choice: the device decides what is installed, the configuration what fits -------
    def refuses(self, backend: str, dtype: torch.dtype | None = None) -> str | None:
        """Why `backend` cannot run this configuration (None: it can)."""
        kind, name = self.pe.kind, self.pe.name
        if backend == "sdpa":
            if kind == "bias":
                return f"{name} adds a bias to the scores, which SDPA takes only as a dense [L, L] tensor"
            if kind == "two-score":
                return "ReRoPE mixes two score matrices (inside and past its window)"
        if backend == "flash":
            if kind == "two-score" or name == "t5-bias":
                return f"flash-attn has no form of {name}"
            if dtype is not None and dtype not in (torch.float16, torch.bfloat16):
                return "flash-attn runs fp16 and bf16 only"
        return None

    def passes_over(self, backend: str) -> str | None:
        """Why `auto` puts a backend that could run this configuration behind the others
        (None: it does not)."""
        if backend in ("flex", "flash") and self.pe.kind == "qk" and self.window is None:
            return "plain causal attention with q/k-only positions: SDPA's fused kernels are faster"
        if backend == "sdpa" and self.window is not None:
            return "a window reaches SDPA only as a dense [L, L] mask: FlexAttention skips the blocks outside it"
        return None

    def _choose(self, device: torch.device, dtype: torch.dtype | None) -> BackendChoice:
        device_choice = self.spec.choose_backend(device, self.config.backend)
        reasons = dict(device_choice.reasons)
        if self.config.backend != "auto":
            why = self.refuses(device_choice.chosen, dtype)
            if why is not None:
                raise ZooError(f"backend '{device_choice.chosen}' cannot run mixer '{self.spec.name}' "
                               f"as configured: {why}", "use backend = 'auto'")
            return device_choice
        # usable backends in spec order, those `passes_over` names behind the rest, torch last
        rank = {}
        for i, b in enumerate(self.spec.backends):
            if b.name in reasons:  # not on this device
                continue
            why = self.refuses(b.name, dtype)
            if why is None:
                rank[b.name] = (b.name == "torch", self.passes_over(b.name) is not None, i)
            else:
                reasons[b.name] = why
        chosen = min(rank, key=rank.get, default="torch")
        reasons.update({n: why for n in rank if n != chosen and (why := self.passes_over(n)) is not None})
        return BackendChoice(chosen, reasons)

    def backend_choice(self, device: torch.device) -> BackendChoice:
        return self._choose(torch.device(device), None)

    def select_backend(self, x: torch.Tensor) -> str:
        key = (x.device, x.dtype)
        if key not in self._choices:
            self._choices[key] = self._choose(x.device, x.dtype)
        self.last_backend = self._choices[key].chosen
        return self.last_backend

    # -- forward ------------------------------------------------------------------------------------
    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        B, L, _ = t.shape
        return t.view(B, L, self.n_heads, self.head_dim).transpose(1, 2)

    def _qkv(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v from one GEMM over the three weights side by side: x is read once, and the
        backward is one GEMM for x's gradient instead of three summed. Under torch.compile only,
        where the concatenation fuses with autocast's cast of the weights; eagerly it would copy
        the weights on every call (a decoding step costs about that much)."""
        B, L, _ = x.shape
        w = torch.cat([self.wq.weight, self.wk.weight, self.wv.weight])
        return F.linear(x, w).view(B, L, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)

    def forward(self, x: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        B, L, _ = x.shape
        start = cache.pos if cache is not None else 0
        self.check_length(start + L)
        pos = positions(start, start + L, x.device)
        xqk = self.pe.qk_input(x, pos)
        if xqk is x and torch.compiler.is_compiling():
            q, k, v = self._qkv(x)
        else:
            q, k, v = self._heads(self.wq(xqk)), self._heads(self.wk(xqk)), self._heads(self.wv(x))
        if cache is not None:  # keys as projected: the positional transform is redone per chunk
            if cache.k is not None:
                k, v = torch.cat([cache.k, k], dim=2), torch.cat([cache.v, v], dim=2)
            keep = k.shape[2] if self.window is None else min(k.shape[2], self.window)
            cache.k, cache.v = k[:, :, -keep:].contiguous(), v[:, :, -keep:].contiguous()
            cache.pos = start + L
        pos_k = pos if k.shape[2] == L else positions(start + L - k.shape[2], start + L, x.device)
        o = self.attend(q, k, v, pos, pos_k, first=start)
        return self.wo(o.transpose(1, 2).reshape(B, L, -1))

    def attend(self, q, k, v, pos_q, pos_k, backend: str | None = None, first: int | None = None) -> torch.Tensor:
        """The attention core: q `[B, H, Lq, Dh]` and k, v `[B, H, Lk, Dh]` as projected, keys
        ending at the last query; applies the positional scheme and runs `backend` (default:
        the one `select_backend` picks). `first`: pos_q[0] as an integer, when known."""
        backend = backend or self.select_backend(q)
        Lq, Lk = q.shape[2], k.shape[2]
        outs = []
        for p in self.pe.parts(q, k, pos_q, pos_k, first):  # usually one part covering everything
            all_keys, all_rows = p.keys == Lk, p.rows.start == 0 and p.rows.stop == Lq
            outs.append(self._kernel(backend, p, v if all_keys else v[:, :, :p.keys],
                                     pos_q if all_rows else pos_q[p.rows], pos_k if all_keys else pos_k[:p.keys]))
        return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)

    def _kernel(self, backend: str, p: Part, v, pos_q, pos_k) -> torch.Tensor:
        Lq, Lk = p.q.shape[2], p.k.shape[2]
        window = self.window if self.window is not None and self.window < Lk else None  # else no effect
        if backend == "sdpa":
            if window is not None:
                return _sdpa(p.q, p.k, v, attn_mask=causal_mask(pos_q, pos_k, window))
            if Lq == Lk:
                return _sdpa(p.q, p.k, v, is_causal=True)
            # chunked inference: queries at the end of the keys (bottom-right causal) keeps the
            # flash and efficient kernels usable
            return _sdpa(p.q, p.k, v, attn_mask=causal_lower_right(Lq, Lk))
        if backend == "flex":
            w = p.far_from
            if p.q_far is None or w >= Lk or (window is not None and window <= w):  # one score everywhere
                return self.pe.flex(p.q, p.k, v, window)
            score_mod, opts = self.pe.score_mod(Lk - Lq, p.q.device), self.pe.kernel_options
            near, lse_near = flex.flex_attend(p.q, p.k, v, hi=w if window is None else min(w, window),
                                              score_mod=score_mod, return_lse=True, kernel_options=opts)
            far, lse_far = flex.flex_attend(p.q_far, p.k_far, v, lo=w, hi=window, score_mod=score_mod,
                                            return_lse=True, kernel_options=opts)
            return flex.merge_partials(near, lse_near, far, lse_far)
        if backend == "flash":
            from flash_attn import flash_attn_func

            slopes = self.pe.slopes(p.q.device) if self.pe.name == "alibi" else None
            o = flash_attn_func(p.q.transpose(1, 2), p.k.transpose(1, 2), v.transpose(1, 2), causal=True,
                                window_size=(window - 1, 0) if window is not None else (-1, -1),
                                alibi_slopes=slopes)
            return o.transpose(1, 2)
        far = (p.q_far, p.k_far, p.far_from) if p.q_far is not None else None
        return attention_reference(p.q, p.k, v, pos_q, pos_k, self.pe.score_bias(pos_q, pos_k), window, far=far)

    # -- contract ------------------------------------------------------------------------------------
    def new_cache(self, batch, device, dtype) -> Cache:
        return Cache(k=None, v=None)

    def state_bytes(self, seq_len, batch=1, dtype=torch.bfloat16) -> int:
        kept = seq_len if self.window is None else min(seq_len, self.window)
        return 2 * batch * self.n_heads * kept * self.head_dim * torch.empty((), dtype=dtype).element_size()

    def flops_per_token(self, seq_len: int) -> float:
        inner = self.n_heads * self.head_dim
        proj = 2 * 4 * self.d_model * inner
        ctx = (seq_len + 1) / 2 if self.window is None else min(self.window, (seq_len + 1) / 2)
        return proj + 2 * 2 * inner * ctx  # QK^T and PV over the average causal context


def override_rope_scaling(model: nn.Module, method: str, factor: float, original_length: int | None = None) -> None:
    """Switch every RoPE-family layer (rope, xpos, their presets, swa with RoPE) of a trained
    model to an evaluation-time scaling, in place.

    `method` is one of pi, ntk, dynamic-ntk, yarn, rerope, leaky-rerope (or none to undo);
    `factor` is s (for leaky-rerope, the k of slope 1/k; rerope ignores it); `original_length`
    is the length the model was trained at (YaRN's ramp, dynamic NTK's threshold, ReRoPE's
    window = original_length // 4), by default each layer's configured `original_length`.
    """
    if method not in SCALINGS:
        raise ZooError(f"unknown RoPE scaling '{method}'", f"allowed: {', '.join(SCALINGS)}")
    if not (factor >= 1.0):
        raise ZooError(f"RoPE scaling factor must be >= 1, got {factor}", "e.g. --rope-factor 4")
    if original_length is not None and original_length < 2:
        raise ZooError(f"original_length must be >= 2, got {original_length}", "pass the training length")
    layers = [m for m in model.modules() if isinstance(m, Attention) and isinstance(m.pe, Rotary)]
    if not layers:
        raise ZooError("the model has no RoPE layers to rescale",
                       "--rope-scaling applies to models with rope, xpos, rope-* or swa (RoPE) layers")
    for m in layers:
        m.reconfigure(scaling=method, factor=float(factor), rerope_window=None,
                      original_length=original_length or m.config.original_length)


# -- registry entries ------------------------------------------------------------------------------------

_QUADRATIC = Capabilities(cost="O(L^2)", state="growing")


def _attention(name: str, description: str, citation: str, backends: list[Backend], tiny: dict | None = None,
               capabilities: Capabilities = _QUADRATIC):
    return register_mixer(name=name, family="attention", description=description, citation=citation,
                          capabilities=capabilities, backends=backends, tiny={"n_heads": 2, **(tiny or {})})


@_attention("nope", "causal softmax attention with no positional encoding",
            f"{VASWANI}; Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization, "
            "arXiv:2305.19466", QK_BACKENDS)
class NoPE(Attention):
    pass


@_attention("sinusoidal", "attention with fixed sinusoidal absolute positions added to the q/k input",
            VASWANI, QK_BACKENDS)
class Sinusoidal(Attention):
    Config = SinusoidalConfig
    position = "sinusoidal"


@_attention("learned", "attention with a learned absolute position table added to the q/k input "
            "(bounded by max_length)",
            "Gehring et al. 2017, Convolutional Sequence to Sequence Learning, arXiv:1705.03122",
            QK_BACKENDS, tiny={"max_length": 64},
            capabilities=Capabilities(cost="O(L^2)", state="growing", max_length=2048))
class Learned(Attention):
    Config = LearnedConfig
    position = "learned"


@_attention("t5-bias", "attention with T5's learned relative bias (32 buckets, max distance 128)",
            "Raffel et al. 2020, Exploring the Limits of Transfer Learning with a Unified Text-to-Text "
            "Transformer, arXiv:1910.10683", T5_BACKENDS, tiny={"num_buckets": 8, "max_distance": 12})
class T5RelativeBias(Attention):
    Config = T5Config
    position = "t5-bias"


@_attention("alibi", "attention with linear biases -m_h (i - j), slopes 2^(-8h/n)",
            "Press et al. 2022, Train Short, Test Long: Attention with Linear Biases, arXiv:2108.12409",
            ALIBI_BACKENDS)
class Alibi(Attention):
    position = "alibi"


@_attention("rope", "attention with rotary position embeddings (configurable base and scaling)", ROPE,
            QK_BACKENDS)
class Rope(Attention):
    Config = RopeConfig
    position = "rope"


@_attention("xpos", "RoPE with xPos's exponential decay (scale base 512)",
            "Sun et al. 2022, A Length-Extrapolatable Transformer, arXiv:2212.10554", QK_BACKENDS,
            tiny={"scale_base": 16.0})
class Xpos(Attention):
    Config = XposConfig
    position = "xpos"


@_attention("rope-pi", "RoPE with position interpolation (positions / s)",
            f"Chen et al. 2023, Extending Context Window of Large Language Models via Positional Interpolation, "
            f"arXiv:2306.15595; {ROPE}", QK_BACKENDS, tiny={"factor": 2.0})
class RopePI(Rope):
    Config = RopePIConfig


@_attention("rope-ntk", "RoPE with the NTK-aware base b * s^(d/(d-2))",
            f"bloc97 2023, NTK-Aware Scaled RoPE (as written in Peng et al. 2023, arXiv:2309.00071, sec. 3.1); "
            f"{ROPE}", QK_BACKENDS, tiny={"factor": 2.0})
class RopeNTK(Rope):
    Config = RopeNTKConfig


@_attention("rope-dynamic-ntk", "RoPE whose NTK base grows with the current length past original_length",
            f"emozilla 2023, Dynamically Scaled RoPE (as written in Peng et al. 2023, arXiv:2309.00071, "
            f"sec. 3.3); {ROPE}", QK_BACKENDS, tiny={"factor": 2.0, "original_length": 8, "dynamic_step": 4})
class RopeDynamicNTK(Rope):
    Config = RopeDynamicNTKConfig


@_attention("rope-yarn", "RoPE with YaRN (NTK-by-parts, alpha 1, beta 32, temperature 0.1 ln s + 1)",
            f"Peng et al. 2023, YaRN: Efficient Context Window Extension of Large Language Models, "
            f"arXiv:2309.00071; {ROPE}", QK_BACKENDS, tiny={"factor": 4.0, "original_length": 16})
class RopeYaRN(Rope):
    Config = RopeYaRNConfig


@_attention("rerope", "RoPE with relative positions clipped at the window w (two-score form)",
            f"Su 2023, Rectified Rotary Position Embeddings, github.com/bojone/rerope; {ROPE}", REROPE_BACKENDS,
            tiny={"rerope_window": 6})
class ReRoPE(Rope):
    Config = ReRoPEConfig


@_attention("leaky-rerope", "RoPE with relative positions w + (d - w)/k past the window w (k = 16)",
            f"Su 2023, Rectified Rotary Position Embeddings, github.com/bojone/rerope; {ROPE}", REROPE_BACKENDS,
            tiny={"rerope_window": 6, "factor": 4.0})
class LeakyReRoPE(Rope):
    Config = LeakyReRoPEConfig


@_attention("swa", "sliding-window causal attention (window W, RoPE by default, any positional scheme)",
            "Beltagy et al. 2020, Longformer: The Long-Document Transformer, arXiv:2004.05150",
            WINDOW_BACKENDS, tiny={"window": 8, "max_length": 64, "num_buckets": 8, "max_distance": 12},
            capabilities=Capabilities(cost="O(L)", state="fixed"))  # O(L W); the cache keeps W keys
class SlidingWindow(Attention):
    Config = SwaConfig
